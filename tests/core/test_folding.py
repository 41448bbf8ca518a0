"""folded(program, scope): weight * mask inside the block (bool or packed masks), the exact bytes back after."""
import contextlib

import numpy as np
import paddle
import pytest

from nets import NETS, batch, scope_array, static_mode, static_net
from paddleslim_static.folding import folded, folded_value
from paddleslim_static.mask_pass import apply_mask_pass, mask_var_name


def _setup(legacy, packed, seed=0):
    """A LeNet program after the pass and the startup, random masks in a fresh scope, weights with a -0.0."""
    ctx = paddle.pir_utils.OldIrGuard() if legacy else contextlib.nullcontext()
    with ctx:
        net = static_net(NETS["lenet"], lambda: paddle.optimizer.SGD(0.1), legacy=legacy)
        names = [p.name for p in net.main.global_block().all_parameters() if len(p.shape) >= 2]
        apply_mask_pass(net.main, net.startup, names, packed=packed)
        scope = paddle.static.Scope()
        with paddle.static.scope_guard(scope):
            paddle.static.Executor(paddle.CPUPlace()).run(net.startup)
    rng = np.random.default_rng(seed)
    masks = {}
    for n in names:
        w = scope_array(scope, n)
        w.reshape(-1)[0] = -0.0  # sign bits must survive the round trip
        scope.find_var(n).get_tensor().set(w, paddle.CPUPlace())
        masks[n] = rng.random(w.shape) < 0.4
        value = np.packbits(masks[n].reshape(-1)) if packed else masks[n]
        scope.find_var(mask_var_name(n)).get_tensor().set(value, paddle.CPUPlace())
    return net, names, scope, masks


def _all_params(net, scope):
    return {p.name: scope_array(scope, p.name).tobytes() for p in net.main.global_block().all_parameters()}


@pytest.mark.parametrize("packed", [False, True], ids=["bool", "packed"])
@pytest.mark.parametrize("legacy", [False, True], ids=["pir", "legacy"])
def test_folded_holds_weight_times_mask_and_restores_bytes(legacy, packed):
    with static_mode():
        net, names, scope, masks = _setup(legacy, packed)
        before = _all_params(net, scope)
        mask_bytes = {n: scope_array(scope, mask_var_name(n)).tobytes() for n in names}
        with folded(net.main, scope) as got:
            assert sorted(got) == sorted(names)
            for n in names:
                w = np.frombuffer(before[n], np.float32).reshape(masks[n].shape)
                inside = scope_array(scope, n)
                np.testing.assert_array_equal(inside, w * masks[n])  # reference: brute-force product
                assert inside.dtype == np.float32 and np.all(inside[~masks[n]] == 0)
            for p, raw in before.items():  # biases and other unmasked parameters untouched
                if p not in names:
                    assert scope_array(scope, p).tobytes() == raw
        assert _all_params(net, scope) == before
        assert {n: scope_array(scope, mask_var_name(n)).tobytes() for n in names} == mask_bytes


def test_folded_restores_after_an_exception_in_the_body():
    with static_mode():
        net, names, scope, _ = _setup(False, True)
        before = _all_params(net, scope)
        with pytest.raises(KeyError):
            with folded(net.main, scope):
                raise KeyError("body failed")
        assert _all_params(net, scope) == before


def test_folded_exports_a_sparse_inference_model(tmp_path):
    """The export use: save_inference_model inside folded() writes the pruned zeros; training weights stay."""
    with static_mode():
        net, names, scope, masks = _setup(False, False)
        before = _all_params(net, scope)
        exe = paddle.static.Executor(paddle.CPUPlace())
        prefix = str(tmp_path / "model")
        with paddle.static.scope_guard(scope), folded(net.main, scope):
            paddle.static.save_inference_model(prefix, [net.x_test], [net.out_test], exe, program=net.test)
            x, y = batch(NETS["lenet"], 2, 0)
            expected, = exe.run(net.test, feed={"x": x, "y": y}, fetch_list=[net.out_test])
        assert _all_params(net, scope) == before
        loaded = paddle.static.Scope()
        with paddle.static.scope_guard(loaded):
            prog, feeds, fetches = paddle.static.load_inference_model(prefix, exe)
            out, = exe.run(prog, feed={feeds[0]: x}, fetch_list=fetches)
            for n in names:  # the saved weights are the folded ones
                w = np.frombuffer(before[n], np.float32).reshape(masks[n].shape)
                np.testing.assert_array_equal(scope_array(loaded, n), w * masks[n])
        np.testing.assert_array_equal(out, expected)


def test_folded_rejects_a_bad_mask_before_writing_anything():
    with static_mode():
        net, names, scope, _ = _setup(False, False)
        bad = names[-1]
        scope.find_var(mask_var_name(bad)).get_tensor().set(np.ones(3, np.float32), paddle.CPUPlace())
        before = _all_params(net, scope)
        with pytest.raises(ValueError, match=mask_var_name(bad).replace(".", r"\.")):
            with folded(net.main, scope):
                pass
        assert _all_params(net, scope) == before
        with pytest.raises(TypeError, match="scope"):
            with folded(net.main, object()):
                pass
        with pytest.raises(TypeError, match="program"):
            with folded("main", scope):
                pass


def test_folded_value_forms():
    w = np.arange(1, 11, dtype=np.float32).reshape(2, 5)
    m = (np.arange(10) % 3 == 0).reshape(2, 5)
    np.testing.assert_array_equal(folded_value(w, m), np.where(m, w, 0))
    np.testing.assert_array_equal(folded_value(w, np.packbits(m.reshape(-1))), np.where(m, w, 0))
    with pytest.raises(ValueError):
        folded_value(w, np.ones(3, np.uint8))


def test_docstring_examples_run():
    import doctest

    import paddleslim_static.folding
    import paddleslim_static.programs
    for module in (paddleslim_static.folding, paddleslim_static.programs):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__
