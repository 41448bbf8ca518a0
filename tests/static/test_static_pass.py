"""The mask pass: where its ops go, idempotence, scope state, eval/inference programs, legacy IR."""
import contextlib

import numpy as np
import paddle
import pytest

from nets import NETS, batch, scope_array, static_mode, static_net
from paddleslim_static import UnstructuredPruner, apply_mask_pass, mask_var_name, masked_params
from paddleslim_static.core.packing import unpack_mask
from paddleslim_static.mask_pass import unmasked_params
from paddleslim_static.programs import has_optimizer_ops, norm_param_names, param_infos
from paddleslim_static.pruner import GLOBAL_THRESHOLD_VAR, READY_VAR

MLP = NETS["mlp"]
MOBILE = NETS["mobilenet"]


@pytest.fixture
def static():
    with static_mode():
        yield


def _momentum():
    return paddle.optimizer.Momentum(0.05, momentum=0.9)


def _weights_2d(program):
    return [p.name for p in program.global_block().all_parameters() if len(p.shape) >= 2]


def _feed(spec, n=4, seed=0):
    x, y = batch(spec, n, seed)
    return {"x": x, "y": y}


def _op_names(program):
    return [op.name() for op in program.global_block().ops]


def test_pass_appends_mask_ops_after_update_ops(static):
    net = static_net(MLP, _momentum)
    names = _weights_2d(net.main)
    startup_ops = net.startup.global_block().num_ops()
    res = apply_mask_pass(net.main, net.startup, names, {"thr": 0.5})
    ops = _op_names(net.main)
    last_update = max(i for i, n in enumerate(ops) if n == "pd_op.momentum_")
    tail = ops[last_update + 1:]
    assert tail == ["pd_op.cast", "pd_op.multiply_"] * len(names)
    assert res.modified and set(res.masked) == set(names) == masked_params(net.main)
    assert res.mask_vars == {n: n + "_mask" for n in names}
    assert set(res.vars_added) == {n + "_mask" for n in names} | {"thr"}
    assert res.ops_added == 2 * len(names) + len(names) + 1  # cast+multiply_ per param, one data op per var
    # masks: persistable bool data, not parameters, invisible to the optimizer; the startup fills them
    assert sorted(p.name for p in net.main.global_block().all_parameters()) == sorted(
        p.name for p in static_net(MLP, _momentum).main.global_block().all_parameters())
    data = {op.attrs()["name"]: op.result(0) for op in net.main.global_block().ops if op.name() == "pd_op.data"}
    for n in names:
        m = data[mask_var_name(n)]
        assert m.persistable and not m.is_parameter and m.dtype == paddle.bool and m.shape == \
            [p for p in net.main.global_block().all_parameters() if p.name == n][0].shape
    assert net.startup.global_block().num_ops() == startup_ops + 2 * (len(names) + 1)  # full + shadow_output


def test_pass_is_idempotent(static):
    net = static_net(MLP, _momentum)
    names = _weights_2d(net.main)
    apply_mask_pass(net.main, net.startup, names, {"thr": 0.5})
    n_main, n_start = net.main.global_block().num_ops(), net.startup.global_block().num_ops()
    again = apply_mask_pass(net.main, net.startup, names, {"thr": 0.5})
    assert (again.modified, again.ops_added, again.vars_added, again.masked) == (False, 0, (), ())
    assert net.main.global_block().num_ops() == n_main and net.startup.global_block().num_ops() == n_start
    # a pruner built on the already-rewritten program adds no second mask op
    scope = paddle.static.Scope()
    pruner = UnstructuredPruner(net.main, "ratio", ratio=0.5, scope=scope, startup_program=net.startup,
                                packed_masks=False)  # the bool masks made above
    assert pruner.pass_result.masked == ()
    assert _op_names(net.main).count("pd_op.multiply_") == len(names)


def test_mask_op_is_really_in_place(static):
    """Zeroed mask entries zero the weights at the end of every exe.run (not only in step())."""
    net = static_net(MLP, _momentum)
    names = _weights_2d(net.main)
    apply_mask_pass(net.main, net.startup, names)
    scope, exe = paddle.static.Scope(), paddle.static.Executor(paddle.CPUPlace())
    with paddle.static.scope_guard(scope):
        exe.run(net.startup)
        rng = np.random.default_rng(0)
        masks = {n: rng.random(scope_array(scope, n).shape) < 0.5 for n in names}
        for n, m in masks.items():
            scope.find_var(mask_var_name(n)).get_tensor().set(m, paddle.CPUPlace())
        for i in range(3):
            exe.run(net.main, feed=_feed(MLP, seed=i), fetch_list=[net.loss])
            for n, m in masks.items():
                w = scope_array(scope, n)
                assert np.all(w[~m] == 0) and np.count_nonzero(w[m]) == m.sum()


def _bool_mask(scope, var, shape):
    """The scope's mask as bool of ``shape``, whether stored as bool or bit-packed uint8."""
    m = scope_array(scope, var)
    return unpack_mask(m, shape) if m.dtype == np.uint8 else m


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "bool"])
@pytest.mark.parametrize("startup_first", [True, False], ids=["startup-before", "startup-after"])
def test_masks_and_thresholds_exist_in_scope(static, startup_first, packed):
    net = static_net(MLP, _momentum)
    scope, exe = paddle.static.Scope(), paddle.static.Executor(paddle.CPUPlace())
    with paddle.static.scope_guard(scope):
        if startup_first:
            exe.run(net.startup)
        pruner = UnstructuredPruner(net.main, "threshold", threshold=0.1, scope=scope, startup_program=net.startup,
                                    packed_masks=packed)
        shapes = {p.name: tuple(p.shape) for p in net.main.global_block().all_parameters()}
        for n, var in pruner.masks.items():
            m = scope_array(scope, var)
            assert (m.dtype, m.shape) == ((np.uint8, ((np.prod(shapes[n]) + 7) // 8,)) if packed
                                          else (np.bool_, shapes[n]))
        assert scope_array(scope, GLOBAL_THRESHOLD_VAR) == np.float32(0.1)
        assert bool(scope_array(scope, READY_VAR)) is startup_first
        if not startup_first:
            with pytest.raises(RuntimeError, match="startup"):
                pruner.update_params()  # no weights yet: clear error, state unchanged
            exe.run(net.startup)  # re-initialises masks to True and the ready flag to False
            assert all(_bool_mask(scope, v, shapes[n]).all() for n, v in pruner.masks.items())
            assert scope_array(scope, GLOBAL_THRESHOLD_VAR) == np.float32(0.1)
            assert not bool(scope_array(scope, READY_VAR))
        pruner.update_params()  # threshold-mode masks are (re)computed lazily here
        assert bool(scope_array(scope, READY_VAR))
        for n, var in pruner.masks.items():
            w, m = scope_array(scope, n), _bool_mask(scope, var, shapes[n])
            np.testing.assert_array_equal(m, np.abs(w) >= np.float32(0.1))
            assert np.all(w[np.abs(w) < np.float32(0.1)] == 0) and (~m).any()


def test_local_thresholds_in_scope(static):
    net = static_net(MLP, _momentum)
    scope, exe = paddle.static.Scope(), paddle.static.Executor(paddle.CPUPlace())
    with paddle.static.scope_guard(scope):
        exe.run(net.startup)
        pruner = UnstructuredPruner(net.main, "ratio", ratio=0.5, scope=scope, local_sparsity=True,
                                    startup_program=net.startup)
        pruner.step()
        assert set(pruner.thresholds) == set(pruner.prunable_params)
        for n, t in pruner.thresholds.items():
            assert scope_array(scope, n + "_threshold") == np.float32(t)
            assert abs(UnstructuredPruner.sparse_by_layer(net.main, scope)[n] - 0.5) < 0.02


def test_eval_and_inference_programs_have_no_masks(static, tmp_path):
    net = static_net(MOBILE, _momentum)
    scope, exe = paddle.static.Scope(), paddle.static.Executor(paddle.CPUPlace())
    with paddle.static.scope_guard(scope):
        exe.run(net.startup)
        pruner = UnstructuredPruner(net.main, "ratio", ratio=0.6, scope=scope, startup_program=net.startup)
        feed = _feed(MOBILE)
        exe.run(net.main, feed=feed, fetch_list=[net.loss])
        pruner.step()
        # the eval program was cloned before minimize: no mask ops, no mask variables, same weights
        assert "pd_op.multiply_" not in _op_names(net.test) and not masked_params(net.test)
        test_vars = {op.attrs()["name"] for op in net.test.global_block().ops if op.name() == "pd_op.data"}
        assert not any(v.endswith("_mask") for v in test_vars)
        out, = exe.run(net.test, feed=feed, fetch_list=[net.out_test])
        assert np.isfinite(out).all()
        prefix = str(tmp_path / "infer")
        paddle.static.save_inference_model(prefix, [net.x_test], [net.out_test], exe, program=net.test)
    text = open(prefix + ".json").read()
    assert "_mask" not in text and "multiply_" not in text and "unstructured_pruner" not in text
    scope2 = paddle.static.Scope()
    with paddle.static.scope_guard(scope2):
        prog, feeds, fetches = paddle.static.load_inference_model(prefix, exe)
        out2, = exe.run(prog, feed={feeds[0]: feed["x"]}, fetch_list=fetches)
        np.testing.assert_allclose(out2, out, rtol=1e-5, atol=1e-6)
        saved = {n: scope_array(scope2, n) for n in pruner.prunable_params}
        for n, w in saved.items():
            np.testing.assert_array_equal(w, scope_array(scope, n))
        zeros = sum(int((w == 0).sum()) for w in saved.values()) / sum(w.size for w in saved.values())
        assert abs(zeros - 0.6) < 0.01  # the inference model's weights are sparse
        assert abs(1 - UnstructuredPruner.total_sparse(prog, scope2)
                   - (1 - UnstructuredPruner.total_sparse(net.test, scope))) < 1e-12


def test_program_without_optimizer_gets_no_mask_ops(static):
    net = static_net(MLP, None)
    assert not has_optimizer_ops(net.main)
    scope, exe = paddle.static.Scope(), paddle.static.Executor(paddle.CPUPlace())
    with paddle.static.scope_guard(scope):
        exe.run(net.startup)
        n_ops = net.main.global_block().num_ops()
        pruner = UnstructuredPruner(net.main, "threshold", threshold=0.2, scope=scope, startup_program=net.startup)
        assert pruner.pass_result.masked == () and not masked_params(net.main)
        assert "pd_op.multiply_" not in _op_names(net.main)
        assert net.main.global_block().num_ops() == n_ops + len(pruner.pass_result.vars_added)
        pruner.update_params()
        for n in pruner.prunable_params:
            w = scope_array(scope, n)
            assert np.all(w[np.abs(w) < np.float32(0.2)] == 0) and np.all(np.abs(w[w != 0]) >= np.float32(0.2))
            assert (w == 0).any()


def test_norm_params_detected_from_ops(static):
    net = static_net(MOBILE, _momentum)
    norms = norm_param_names(net.main)
    bn = {p.name for p in net.main.global_block().all_parameters() if p.name.startswith("batch_norm")}
    assert norms == bn and len(bn) == 4 * 7  # scale, bias, mean, variance of 7 BN layers
    infos = {i.name: i for i in param_infos(net.main)}
    assert all(infos[n].is_norm for n in bn) and not any(i.is_norm for n, i in infos.items() if n not in bn)


def test_pass_errors(static):
    net = static_net(MLP, _momentum)
    with pytest.raises(ValueError, match="not parameters"):
        apply_mask_pass(net.main, net.startup, ["nope.w_0"])
    with pytest.raises(TypeError, match="program"):
        apply_mask_pass("main", net.startup, [])
    with pytest.raises(TypeError, match="param_names"):
        apply_mask_pass(net.main, net.startup, "linear_0.w_0")
    with pytest.raises(TypeError, match="program"):
        UnstructuredPruner(object(), "ratio")


def test_legacy_ir_program(static):
    with paddle.pir_utils.OldIrGuard():
        net = static_net(MLP, _momentum, legacy=True)
        names = _weights_2d(net.main)
        scope, exe = paddle.static.Scope(), paddle.static.Executor(paddle.CPUPlace())
        with paddle.static.scope_guard(scope):
            exe.run(net.startup)
            pruner = UnstructuredPruner(net.main, "ratio", ratio=0.7, scope=scope, startup_program=net.startup,
                                        packed_masks=False)
            assert sorted(pruner.prunable_params) == sorted(names)
            types = [op.type for op in net.main.global_block().ops]
            last_update = max(i for i, t in enumerate(types) if t == "momentum")
            assert types[last_update + 1:] == ["cast", "elementwise_mul"] * len(names)
            assert masked_params(net.main) == set(names)
            again = apply_mask_pass(net.main, net.startup, names)
            assert not again.modified and again.ops_added == 0
            test = net.main.clone(for_test=True)  # optimize-role ops (mask ops included) dropped
            assert "elementwise_mul" not in [op.type for op in test.global_block().ops]
            for i in range(3):
                exe.run(net.main, feed=_feed(MLP, seed=i), fetch_list=[net.loss])
                if i == 0:
                    pruner.step()
                for n, v in pruner.masks.items():
                    m = scope_array(scope, v)
                    assert np.all(scope_array(scope, n)[~m] == 0)
            assert abs(UnstructuredPruner.total_sparse_conv1x1(net.main, scope) - 1.0) < 1e-12
            dens = sum(scope_array(scope, n).astype(bool).sum() for n in names) / sum(
                scope_array(scope, n).size for n in names)
            assert abs(dens - 0.3) < 0.01


def test_gmp_recomputes_masks_after_startup_rerun(static):
    """Startup re-run resets masks to True; a GMP pruner that had pruned recomputes on its next step."""
    from paddleslim_static import GMPUnstructuredPruner
    net = static_net(MLP, _momentum)
    scope, exe = paddle.static.Scope(), paddle.static.Executor(paddle.CPUPlace())
    cfg = {"stable_iterations": 0, "pruning_iterations": 100, "tunning_iterations": 10, "resume_iteration": -1,
           "pruning_steps": 2, "initial_ratio": 0.3}
    with paddle.static.scope_guard(scope):
        exe.run(net.startup)
        pruner = GMPUnstructuredPruner(net.main, ratio=0.6, scope=scope, configs=cfg, startup_program=net.startup)
        pruner.step()
        pruner.step()  # ratio unchanged: masks only applied
        assert pruner.ratio == 0.3
        exe.run(net.startup)
        shapes = {p.name: tuple(p.shape) for p in net.main.global_block().all_parameters()}
        assert all(_bool_mask(scope, v, shapes[n]).all() for n, v in pruner.masks.items())
        pruner.step()  # ratio still 0.3, but the masks were lost: recomputed
        zeros = sum(int((scope_array(scope, n) == 0).sum()) for n in pruner.prunable_params)
        assert zeros == round(0.3 * sum(scope_array(scope, n).size for n in pruner.prunable_params))
        assert scope_array(scope, GLOBAL_THRESHOLD_VAR) == np.float32(pruner.threshold)


def test_pass_before_minimize_then_updates_are_reported(static):
    """Run before minimize(): no mask ops; the updates minimize() appends show up in unmasked_params."""
    net = static_net(MLP, None)
    names = _weights_2d(net.main)
    assert apply_mask_pass(net.main, net.startup, names).masked == ()
    with paddle.static.program_guard(net.main, net.startup):
        _momentum().minimize(net.loss)
    assert unmasked_params(net.main, names) == names
    assert apply_mask_pass(net.main, net.startup, names).masked == tuple(names)
    assert unmasked_params(net.main, names) == []


def _snapshot(program):
    """Everything the pass could change: ops with their operands/results, variables, of every block."""
    if isinstance(program, paddle.pir.Program):
        ops = []
        for op in program.global_block().ops:
            names = [v.name if v.has_name else None for v in op.operands_source()]
            ops.append((op.name(), tuple(names), tuple(r.name if r.has_name else None for r in op.results())))
        return ops
    block = program.global_block()
    return ([(op.type, tuple(op.input_arg_names), tuple(op.output_arg_names)) for op in block.ops],
            sorted((n, v.persistable, str(v.dtype), tuple(v.shape)) for n, v in block.vars.items()))


def _bad_calls(legacy):
    """(label, build-the-trap, call, error type, message) for every argument the pass validates."""
    def clash(main, names):
        with paddle.static.program_guard(main):
            if legacy:
                main.global_block().create_var(name=names[1] + "_mask", shape=[3], dtype="float32")
            else:
                paddle.static.data(names[1] + "_mask", [3], "float32")

    def other_ir_startup(main, names):
        with (paddle.pir_utils.IrGuard() if legacy else paddle.pir_utils.OldIrGuard()):
            return paddle.static.Program()

    return [
        ("unknown param", None, lambda m, s, n: apply_mask_pass(m, s, n + ["nope.w_0"]), ValueError, "nope.w_0"),
        ("scalar nan", None, lambda m, s, n: apply_mask_pass(m, s, n, {"t": float("nan")}), TypeError, "scalars"),
        ("scalar str", None, lambda m, s, n: apply_mask_pass(m, s, n, {"t": "0.5"}), TypeError, "scalars"),
        ("scalar is a param", None, lambda m, s, n: apply_mask_pass(m, s, n, {n[0]: 0.5}), ValueError, "scalars"),
        ("scalar is a mask", None, lambda m, s, n: apply_mask_pass(m, s, n, {n[0] + "_mask": 0.5}), ValueError,
         "scalars"),
        ("packed not bool", None, lambda m, s, n: apply_mask_pass(m, s, n, packed=1), TypeError, "packed"),
        ("mask name clash", clash, lambda m, s, n: apply_mask_pass(m, s, n, {"t": 0.5}), ValueError, "_mask"),
        ("IR mismatch", None, lambda m, s, n: apply_mask_pass(m, other_ir_startup(m, n), n), TypeError,
         "startup_program"),
        ("packed over bool masks", lambda m, n: apply_mask_pass(m, None, n[:1]),
         lambda m, s, n: apply_mask_pass(m, s, n, packed=True), ValueError, "packed"),
    ]


@pytest.mark.parametrize("legacy", [False, True], ids=["pir", "legacy"])
@pytest.mark.parametrize("case", range(len(_bad_calls(False))), ids=[c[0] for c in _bad_calls(False)])
def test_failed_pass_changes_nothing(static, legacy, case):
    label, trap, call, error, message = _bad_calls(legacy)[case]
    with (paddle.pir_utils.OldIrGuard() if legacy else contextlib.nullcontext()):
        net = static_net(MLP, _momentum, legacy=legacy)
        names = _weights_2d(net.main)
        if trap is not None:
            trap(net.main, names)
        before = _snapshot(net.main), _snapshot(net.startup)
        with pytest.raises(error, match=message):
            call(net.main, net.startup, names)
        assert (_snapshot(net.main), _snapshot(net.startup)) == before
        # and the same program still takes a valid call afterwards
        if label not in ("packed over bool masks", "mask name clash"):
            assert set(apply_mask_pass(net.main, net.startup, names).masked) == set(names)


@pytest.mark.parametrize("legacy", [False, True], ids=["pir", "legacy"])
def test_packed_masks(static, legacy):
    """uint8 masks of ceil(n/8) bytes, initialised to np.packbits(all True) exactly; the ops unpack them."""
    with (paddle.pir_utils.OldIrGuard() if legacy else contextlib.nullcontext()):
        net = static_net(NETS["lenet"], _momentum, legacy=legacy)
        names = _weights_2d(net.main)
        res = apply_mask_pass(net.main, net.startup, names, packed=True)
        assert res.packed and set(res.masked) == set(names) and unmasked_params(net.main, names) == []
        shapes = {p.name: tuple(p.shape) for p in net.main.global_block().all_parameters()}
        assert any(int(np.prod(shapes[n])) % 8 for n in names)  # a partial last byte is covered
        scope, exe = paddle.static.Scope(), paddle.static.Executor(paddle.CPUPlace())
        with paddle.static.scope_guard(scope):
            exe.run(net.startup)
            rng = np.random.default_rng(3)
            masks = {}
            for n in names:
                size = int(np.prod(shapes[n]))
                bits = scope_array(scope, mask_var_name(n))
                assert bits.dtype == np.uint8 and bits.shape == ((size + 7) // 8,)
                np.testing.assert_array_equal(bits, np.packbits(np.ones(size, bool)))
                masks[n] = rng.random(shapes[n]) < 0.3
                scope.find_var(mask_var_name(n)).get_tensor().set(np.packbits(masks[n].reshape(-1)),
                                                                  paddle.CPUPlace())
            exe.run(net.main, feed=_feed(NETS["lenet"]), fetch_list=[net.loss])
            for n, m in masks.items():
                w = scope_array(scope, n)
                np.testing.assert_array_equal(w != 0, m)
        if legacy:  # mask ops (unpacking included) carry the optimize role: a test clone drops them all
            test = net.main.clone(for_test=True)
            assert not {"gather", "elementwise_mul"} & {op.type for op in test.global_block().ops}
