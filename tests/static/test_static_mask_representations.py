"""Static checkpoints across mask representations (issue 16.6): ``paddle.static.save`` by a pruner with
``packed_masks=True`` and ``paddle.static.load`` into a program built with ``packed_masks=False`` (and the reverse), in
PIR and legacy IR. ``paddle.static.load`` puts the other representation into the scope as it is; the pruner's next call
converts it (same bits), so ``set_state_dict`` and the following ``exe.run`` resume exactly. A mask that is neither
representation is one ValueError naming the variable and both representations, with nothing changed."""
from __future__ import annotations

import contextlib

import numpy as np
import paddle
import pytest

from nets import NETS, batch, scope_array, scope_mask, static_mode, static_net
from paddleslim_static import UnstructuredPruner

SPEC = NETS["lenet"]


@pytest.fixture
def static():
    with static_mode():
        yield


def _ir(legacy):
    return paddle.pir_utils.OldIrGuard() if legacy else contextlib.nullcontext()


def _build(packed, legacy):
    net = static_net(SPEC, lambda: paddle.optimizer.Momentum(0.05, momentum=0.9), legacy=legacy)
    scope, exe = paddle.static.Scope(), paddle.static.Executor(paddle.CPUPlace())
    with paddle.static.scope_guard(scope):
        exe.run(net.startup)
        pruner = UnstructuredPruner(net.main, "ratio", ratio=0.6, scope=scope, startup_program=net.startup,
                                    packed_masks=packed)
    return net, scope, exe, pruner


def _feed(seed):
    x, y = batch(SPEC, 4, seed)
    return {"x": x, "y": y}


def _snapshot(scope, names):
    return {n: scope_array(scope, n).copy() for n in names}


@pytest.mark.parametrize("legacy", [False, True], ids=["pir", "legacy"])
@pytest.mark.parametrize("saved_packed", [True, False], ids=["packed-to-bool", "bool-to-packed"])
def test_checkpoint_loads_into_the_other_representation(static, tmp_path, legacy, saved_packed):
    with _ir(legacy):
        net, scope, exe, pruner = _build(saved_packed, legacy)
        with paddle.static.scope_guard(scope):
            for i in range(2):
                exe.run(net.main, feed=_feed(i), fetch_list=[net.loss])
                pruner.step()
            masks = pruner.mask_arrays()
            paddle.static.save(net.main, str(tmp_path / "m"))
            state = pruner.state_dict()
            exe.run(net.main, feed=_feed(9), fetch_list=[net.loss])
            expected = _snapshot(scope, list(masks))  # what the run after resuming must reproduce

        net2, scope2, exe2, pruner2 = _build(not saved_packed, legacy)
        with paddle.static.scope_guard(scope2):
            paddle.static.load(net2.main, str(tmp_path / "m"), exe2)
            var = pruner2.masks[next(iter(masks))]
            held = scope_array(scope2, var)
            assert held.dtype == (np.uint8 if saved_packed else np.bool_)  # Paddle loaded the other representation
            pruner2.set_state_dict(state)  # converts, then restores
            for n, m in pruner2.mask_arrays().items():
                np.testing.assert_array_equal(m, masks[n], err_msg=n)
                held = scope_array(scope2, pruner2.masks[n])
                assert held.dtype == (np.bool_ if saved_packed else np.uint8), n  # this program's representation
            exe2.run(net2.main, feed=_feed(9), fetch_list=[net2.loss])
            for n, w in _snapshot(scope2, list(masks)).items():
                np.testing.assert_array_equal(w, expected[n], err_msg=n)
                np.testing.assert_array_equal(w != 0, scope_mask(scope2, pruner2.masks[n], w.shape) & (w != 0))
            assert pruner2.threshold == pruner.threshold


@pytest.mark.parametrize("saved_packed", [True, False], ids=["packed-to-bool", "bool-to-packed"])
def test_every_pruner_call_converts_first(static, tmp_path, saved_packed):
    """Not only set_state_dict: step() right after paddle.static.load converts too (no broadcast error)."""
    net, scope, exe, pruner = _build(saved_packed, False)
    with paddle.static.scope_guard(scope):
        exe.run(net.main, feed=_feed(0), fetch_list=[net.loss])
        pruner.step()
        masks = pruner.mask_arrays()
        paddle.static.save(net.main, str(tmp_path / "m"))
    net2, scope2, exe2, pruner2 = _build(not saved_packed, False)
    with paddle.static.scope_guard(scope2):
        paddle.static.load(net2.main, str(tmp_path / "m"), exe2)
        got = pruner2.mask_arrays()
        for n in masks:
            np.testing.assert_array_equal(got[n], masks[n], err_msg=n)
        pruner2.update_params()
        exe2.run(net2.main, feed=_feed(1), fetch_list=[net2.loss])


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "bool"])
@pytest.mark.parametrize("bad", ["float32", "short"])
def test_a_mask_of_neither_representation_is_one_error_naming_both(static, packed, bad):
    net, scope, exe, pruner = _build(packed, False)
    with paddle.static.scope_guard(scope):
        exe.run(net.main, feed=_feed(0), fetch_list=[net.loss])
        pruner.step()
        name = pruner.prunable_params[0]
        var = pruner.masks[name]
        shape = scope_array(scope, name).shape
        n = int(np.prod(shape))
        wrong = np.ones(n, np.float32) if bad == "float32" else np.ones((n + 7) // 8 - 1, np.uint8)
        scope.find_var(var).get_tensor().set(wrong, paddle.CPUPlace())
        names = pruner.prunable_params + [pruner.masks[p] for p in pruner.prunable_params[1:]]
        before = _snapshot(scope, names)
        state = (pruner.ratio, pruner.threshold, pruner.cur_iteration)
        for call in (pruner.step, pruner.update_params, pruner.mask_arrays, pruner.state_dict):
            with pytest.raises(ValueError) as info:
                call()
            msg = str(info.value)
            assert var in msg and "packed_masks=True" in msg and "packed_masks=False" in msg, msg
            assert f"bool{list(shape)}" in msg and f"uint8[{(n + 7) // 8}]" in msg, msg
            assert "In user code" not in msg
            for k, v in _snapshot(scope, names).items():
                np.testing.assert_array_equal(v, before[k], err_msg=k)
            np.testing.assert_array_equal(scope_array(scope, var), wrong)
            assert (pruner.ratio, pruner.threshold, pruner.cur_iteration) == state
