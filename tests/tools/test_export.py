"""Export tool: round trips (dygraph, static, checkpoints), verification catching corruption, compression."""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import paddle
import pytest
from onnx import numpy_helper

from nets import NETS, dygraph_model, static_mode, static_net
from paddleslim_dygraph import UnstructuredPruner
from paddleslim_static.core.packing import pack_mask
from paddleslim_tools.export import ExportError, export_checkpoint, export_layer, export_program, verify_export
from paddleslim_tools.export.onnx_sparse import compress, densify, onnx_tensors, should_store_sparse
from paddleslim_tools.export.verify import match_weights


def spec(*shape, name="x"):
    return [paddle.static.InputSpec([None, *shape], "float32", name)]


def pruned(net_name, ratio, seed=0, **kw):
    model = dygraph_model(NETS[net_name], seed)
    pruner = UnstructuredPruner(model, "ratio", ratio=ratio, **kw)
    pruner.step()
    return model, pruner


def assert_export_ok(report, model=None):
    assert report.ok, report.failures
    assert report.verified
    for key in ("paddle_model", "paddle_params", "onnx", "onnx_sparse", "report"):
        assert os.path.isfile(report.files[key]), key
    # every sparse weight was matched and kept its zeros; outputs agreed
    assert not report.unmatched
    assert all(m.pattern_ok for m in report.weight_checks if m.how)
    assert report.output_checks and all(c.ok for c in report.output_checks)
    data = json.loads(open(report.files["report"]).read())
    assert data["ok"] is True and len(data["layers"]) == len(report.rows)
    onnx_w = onnx_tensors(onnx.load(report.files["onnx"]))
    if model is not None:  # the ONNX weights are the model's (masked) weights, bit for bit in value
        for p in model.parameters():
            if p.name in onnx_w and len(p.shape) >= 2:
                np.testing.assert_array_equal(onnx_w[p.name], p.numpy())
    # no mask variables anywhere in the outputs
    assert not [n for n in onnx_w if n.endswith("_mask")]
    assert not [r.name for r in report.rows if r.name.endswith("_mask")]
    with open(report.files["paddle_model"], "rb") as f:
        assert b"_mask" not in f.read()  # no mask ops or variables in the saved program


@pytest.mark.parametrize("net_name,ratio", [("lenet", 0.5), ("mlp", 0.5), ("mlp", 0.9)])
def test_dygraph_round_trip(tmp_path, net_name, ratio):
    model, pruner = pruned(net_name, ratio)
    hooks_before = len(model._forward_pre_hooks)  # no public API lists forward pre-hooks in Paddle 3.3
    report = export_layer(model, spec(*NETS[net_name].input_shape), tmp_path / "out", compress=True)
    assert_export_ok(report, model)
    # the exported weights' density is the pruner's
    prunable = [r for r in report.rows if len(r.shape) >= 2]
    nz = sum(r.nonzeros for r in prunable)
    size = sum(r.size for r in prunable)
    assert abs((1 - nz / size) - ratio) < 0.01
    # the caller's model keeps its live pruner (hook + masks) and still trains in its mode
    assert len(model._forward_pre_hooks) == hooks_before
    assert pruner.masks and all(m.dtype == paddle.bool for m in pruner.masks.values())
    assert model.training
    pruner.step()  # the pruner still works after the export
    # sparse weights are stored as sparse_initializers exactly when COO is smaller
    sp = onnx.load(report.files["onnx_sparse"])
    stored = {s.values.name for s in sp.graph.sparse_initializer}
    for r in report.rows:
        if len(r.shape) >= 2:
            assert (r.name in stored) == (r.bytes_sparse < r.bytes_dense), r
    if ratio >= 0.9:
        assert report.compression_ratio < 0.45


def test_mobilenet_v1_bn_depthwise_and_static_reexport(tmp_path):
    from paddle.vision.models import mobilenet_v1

    paddle.seed(1)
    model = mobilenet_v1(scale=0.25, num_classes=10)
    pruner = UnstructuredPruner(model, "ratio", ratio=0.75)
    pruner.step()
    with paddle.no_grad():  # non-trivial BatchNorm statistics, so outputs are not all zero
        for layer in model.sublayers():
            if isinstance(layer, paddle.nn.BatchNorm2D):
                layer._mean.set_value(paddle.rand(layer._mean.shape) * 0.1)
                layer._variance.set_value(paddle.rand(layer._variance.shape) + 0.5)
    report = export_layer(model, spec(3, 32, 32), tmp_path / "dy")
    assert_export_ok(report, model)
    ops = {n.op_type for n in onnx.load(report.files["onnx"]).graph.node}
    assert "Conv" in ops
    dw = [r for r in report.rows if r.shape[1:] == [1, 3, 3]]
    assert dw and all(r.pattern_ok for r in dw)  # depthwise weights verified too
    bn = [r for r in report.rows if r.name.startswith("batch_norm2d_")]
    assert bn and all(r.match == "name" for r in bn)  # BatchNorm kept as its own op, matched by name
    # (b) the saved inference model, exported again as a static model: same weights, same zeros
    again = export_program(os.path.join(report.out_dir, "model"), tmp_path / "st", name="mnv1")
    assert again.ok, again.failures
    a = onnx_tensors(onnx.load(report.files["onnx"]))
    b = onnx_tensors(onnx.load(again.files["onnx"]))
    for r in report.rows:
        np.testing.assert_array_equal(a[r.name], b[r.name])
    assert os.path.isfile(again.files["paddle_model"]) and again.files["paddle_model"].endswith("mnv1.json")


def test_static_program_with_scope_and_legacy_prefix(tmp_path):
    from paddleslim_static import UnstructuredPruner as StaticPruner

    with static_mode():
        net = static_net(NETS["mlp"], optimizer=lambda: paddle.optimizer.SGD(0.1))
        scope, exe = paddle.static.Scope(), paddle.static.Executor(paddle.CPUPlace())
        with paddle.static.scope_guard(scope):
            exe.run(net.startup)
            pruner = StaticPruner(net.main, "ratio", ratio=0.9, scope=scope, startup_program=net.startup)
            pruner.update_params()
            pruner.step()
        report = export_program(net.test, tmp_path / "prog", scope=scope, feed_names=["x"],
                                fetch_vars=[net.out_test])
        assert_export_ok(report)
        w = {r.name: r for r in report.rows}
        assert w["linear_0.w_0"].density <= 0.2 and w["linear_0.w_0"].stored_sparse
        assert scope.find_var("linear_0.w_0_mask") is not None  # the caller's scope is untouched
        with paddle.pir_utils.OldIrGuard():  # a legacy .pdmodel inference model
            leg = static_net(NETS["mlp"], legacy=True)
            lscope = paddle.static.Scope()
            with paddle.static.scope_guard(lscope):
                exe.run(leg.startup)
                for p in leg.main.global_block().all_parameters():
                    t = lscope.find_var(p.name).get_tensor()
                    a = np.array(t)
                    a[np.abs(a) < np.quantile(np.abs(a), 0.9)] = 0
                    t.set(a, paddle.CPUPlace())
                paddle.static.save_inference_model(str(tmp_path / "leg" / "model"), [leg.x_test], [leg.out_test],
                                                   exe, program=leg.test)
    assert os.path.isfile(tmp_path / "leg" / "model.pdmodel")
    rep = export_program(str(tmp_path / "leg" / "model"), tmp_path / "legout")
    assert_export_ok(rep)
    assert rep.files["paddle_model"].endswith(".pdmodel")
    assert {r.name for r in rep.rows} >= {"linear_0.w_0", "linear_2.w_0"}
    assert all(r.density <= 0.11 for r in rep.rows if len(r.shape) == 2)


@pytest.mark.parametrize("packed", [False, True])
def test_checkpoint_with_masks_is_folded(tmp_path, packed):
    """Checkpoints carrying ``<layer>.<attr>_mask`` entries: bool arrays (old) or bit-packed uint8 (new)."""
    model, pruner = pruned("lenet", 0.8)
    masks = {f"{k}_mask": m.numpy() for k, m in _masks_by_key(model, pruner).items()}
    with paddle.no_grad():  # weights drift from the masks, as after an optimizer step without step()
        for p in model.parameters():
            p.set_value(p + 0.01)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    state.update({k: (pack_mask(m) if packed else m) for k, m in masks.items()})
    ckpt = tmp_path / "lenet.pdparams"
    paddle.save(state, str(ckpt))
    report = export_checkpoint(str(ckpt), NETS["lenet"].build, spec(1, 28, 28), tmp_path / "out")
    assert_export_ok(report)
    params = dict(model.named_parameters())
    onnx_w = onnx_tensors(onnx.load(report.files["onnx"]))
    assert len(masks) >= 4
    for k, m in masks.items():
        w = params[k[: -len("_mask")]].numpy() * m
        assert (w == 0).any()
        np.testing.assert_array_equal(onnx_w[params[k[: -len("_mask")]].name], w)
    # a plain checkpoint (no masks) works too
    plain = {k: v for k, v in state.items() if not k.endswith("_mask")}
    rep2 = export_checkpoint(plain, NETS["lenet"].build, spec(1, 28, 28), tmp_path / "out2", verify=False,
                             compress=False)
    assert rep2.ok and "onnx_sparse" not in rep2.files and not rep2.verified
    # re-exporting into an existing directory without compression removes the stale sparse file
    rep3 = export_checkpoint(plain, NETS["lenet"].build, spec(1, 28, 28), tmp_path / "out", compress=False)
    assert rep3.ok and sorted(os.listdir(tmp_path / "out")) == [
        "model.json", "model.onnx", "model.pdiparams", "model_report.json"]


def _masks_by_key(model, pruner):
    """State-dict key of each masked parameter -> its mask (a copy)."""
    by_name = {p.name: k for k, p in model.state_dict().items()}
    return {by_name[n]: paddle.to_tensor(m.numpy()) for n, m in pruner.masks.items()}


def _tamper(name):
    """An onnx_transform that makes one pruned zero of weight ``name`` nonzero."""
    def fn(model):
        for node in model.graph.node:
            if node.op_type == "Constant" and node.output[0] == name:
                a = numpy_helper.to_array(node.attribute[0].t).copy()
                a.reshape(-1)[np.flatnonzero(a.reshape(-1) == 0)[0]] = 0.5
                node.attribute[0].t.CopyFrom(numpy_helper.from_array(a, name))
                return model
        raise AssertionError(f"{name} not found")
    return fn


def test_verification_catches_a_corrupted_weight(tmp_path):
    model, _ = pruned("mlp", 0.9)
    report = export_layer(model, spec(16), tmp_path / "bad", onnx_transform=_tamper("linear_0.w_0"))
    assert not report.ok
    bad = [m for m in report.weight_checks if not m.ok]
    assert [m.name for m in bad] == ["linear_0.w_0"] and bad[0].pattern_mismatches == 1
    assert any("linear_0.w_0" in f for f in report.failures)
    assert "ZEROS DIFFER" in report.format_table()
    # a good export, then its ONNX file tampered on disk: --check exits non-zero
    from paddleslim_tools.export import main

    good = export_layer(model, spec(16), tmp_path / "good")
    assert good.ok and main(["--check", str(tmp_path / "good"), "-q"]) == 0
    m = onnx.load(good.files["onnx"])
    for t in m.graph.initializer:
        if t.name == "linear_1.w_0":
            a = numpy_helper.to_array(t).copy()
            a.reshape(-1)[np.flatnonzero(a.reshape(-1) == 0)[0]] = 1e-3
            t.CopyFrom(numpy_helper.from_array(a, t.name))
    onnx.save(m, good.files["onnx"])
    rep = verify_export(tmp_path / "good")
    assert not rep.ok and any("linear_1.w_0" in f for f in rep.failures)
    assert main(["--check", str(tmp_path / "good"), "-q"]) == 1


def test_renamed_transposed_and_bn_folded_weights_are_matched():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    w[np.abs(w) < 0.8] = 0
    fc = rng.standard_normal((8, 5)).astype(np.float32)
    fc[np.abs(fc) < 1.0] = 0
    scale = rng.uniform(0.5, 2, (6, 1, 1, 1)).astype(np.float32)
    onnx_side = {"p2o.Conv.0": (w * scale).astype(np.float32), "p2o.Gemm.1": fc.T.copy(), "shape": np.ones(4)}
    checks = {m.name: m for m in match_weights({"conv.w": w, "fc.w": fc, "lost.w": fc[:2] * 0}, onnx_side)}
    assert checks["conv.w"].how == "values-scaled" and checks["conv.w"].pattern_ok
    assert checks["fc.w"].how == "values-transposed" and checks["fc.w"].onnx_name == "p2o.Gemm.1"
    assert checks["lost.w"].how is None and not checks["lost.w"].ok  # sparse and unmatched: a failure


def test_compressed_densifies_bit_for_bit_and_cutoff(tmp_path):
    model, _ = pruned("mlp", 0.9)
    with pytest.raises(ExportError, match="name must be a plain file name"):
        export_layer(model, spec(16), tmp_path / "o", name="../escape")
    with pytest.raises(ExportError, match="sparse_cutoff"):
        export_layer(model, spec(16), tmp_path / "o", sparse_cutoff=2.0)
    assert not (tmp_path / "o").exists()
    report = export_layer(model, spec(16), tmp_path / "o", sparse_cutoff=0.5)
    plain = onnx.load(report.files["onnx"])
    small = onnx.load(report.files["onnx_sparse"])
    assert densify(small).SerializeToString() == plain.SerializeToString()
    assert {s.values.name for s in small.graph.sparse_initializer} >= {"linear_0.w_0", "linear_1.w_0"}
    for sp in small.graph.sparse_initializer:  # INT64 linear indices, as the checker demands
        assert sp.indices.data_type == onnx.TensorProto.INT64
    onnx.checker.check_model(small)
    meta = {p.key: p.value for p in small.metadata_props}  # the file states what it saves
    assert int(meta["paddleslim.sparse_initializers"]) == len(small.graph.sparse_initializer)
    before, after = (int(x) for x in meta["paddleslim.weight_bytes_dense_to_stored"].split(" (")[0].split(" -> "))
    assert after < before
    a = np.zeros(100, np.float32)
    a[:30] = 1
    assert should_store_sparse(a) is True and should_store_sparse(np.ones(100, np.float32)) is False
    a[:40] = -1  # density 0.4 > 1/3: COO would be larger
    assert should_store_sparse(a) is False and should_store_sparse(a, max_density=0.5) is True
    neg0 = np.array([-0.0, 0.0, 1.0, 0.0] * 10, np.float32)  # masked negatives are -0.0: stored as nothing
    m, stored = compress(onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["w"], ["y"])], "g", [],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [40])], [numpy_helper.from_array(neg0, "w")])))
    assert stored == ["w"] and len(numpy_helper.to_array(m.graph.sparse_initializer[0].values)) == 10


def test_canonical_onnx_has_no_initializer_no_node_reads():
    """onnxruntime warns on every load about an initializer no node reads: the canonical form (every exported ONNX
    file) keeps only the read ones, subgraph reads and graph outputs included."""
    from onnx import helper

    from paddleslim_tools.export.onnx_sparse import canonicalize

    t = lambda name, v: numpy_helper.from_array(np.full(4, v, np.float32), name)  # noqa: E731
    out = lambda name: helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [4])  # noqa: E731
    then = helper.make_graph([helper.make_node("Identity", ["in_sub"], ["t"])], "then", [], [out("t")])
    other = helper.make_graph([helper.make_node("Identity", ["used"], ["e"])], "else", [], [out("e")])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "used"], ["y"]),
         helper.make_node("Constant", [], ["const_unused"], value=t("c", 5.0)),
         helper.make_node("If", ["cond"], ["z"], then_branch=then, else_branch=other)],
        "g", [out("x"), helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, [])], [out("y"), out("z"),
                                                                                              out("as_output")],
        [t("used", 1.0), t("unused", 2.0), t("in_sub", 3.0), t("as_output", 4.0)])
    names = [i.name for i in canonicalize(helper.make_model(graph)).graph.initializer]
    assert names == ["as_output", "in_sub", "used"]


def test_a_compressed_onnx_that_is_not_smaller_is_not_written(tmp_path):
    """A dense model: storing nothing sparse, the 'compressed' file would only add metadata - not written, and the
    report says why; a pruned one gets its smaller NAME.sparse.onnx."""
    dense = paddle.nn.Sequential(paddle.nn.Linear(16, 32), paddle.nn.ReLU(), paddle.nn.Linear(32, 4))
    report = export_layer(dense, spec(16), tmp_path / "d")
    assert report.ok and "onnx_sparse" not in report.files and report.compression_ratio is None
    assert not (tmp_path / "d" / "model.sparse.onnx").exists()
    assert any("model.sparse.onnx not written" in w and "not smaller than model.onnx" in w for w in report.warnings)
    assert "model.sparse.onnx not written" in report.format_table()
    model, _ = pruned("mlp", 0.9)
    report = export_layer(model, spec(16), tmp_path / "p")
    sizes = {k: os.path.getsize(p) for k, p in report.files.items() if k in ("onnx", "onnx_sparse")}
    assert sizes["onnx_sparse"] < sizes["onnx"]


def test_cross_mode_dygraph_and_static_pruners_export_identical_sparse_weights(tmp_path):
    """The same network pruned by the dygraph and by the static pruner exports the same sparse ONNX weights."""
    import paddleslim_static as static_mod
    spec_ = NETS["mobilenet"]
    model, _ = pruned("mobilenet", 0.75, seed=3)
    dense = {p.name: p.numpy() for p in dygraph_model(spec_, 3).parameters()}  # same seed: unpruned weights
    dy = export_layer(model, spec(*spec_.input_shape), tmp_path / "dy")
    assert dy.ok, dy.failures
    with static_mode():
        net = static_net(spec_, optimizer=lambda: paddle.optimizer.SGD(0.1))
        scope, exe = paddle.static.Scope(), paddle.static.Executor(paddle.CPUPlace())
        with paddle.static.scope_guard(scope):
            exe.run(net.startup)
            for n, w in dense.items():
                scope.find_var(n).get_tensor().set(w, paddle.CPUPlace())
            pruner = static_mod.UnstructuredPruner(net.main, "ratio", ratio=0.75, scope=scope,
                                                   startup_program=net.startup)
            pruner.step()
        st = export_program(net.test, tmp_path / "st", scope=scope, feed_names=["x"], fetch_vars=[net.out_test])
    assert st.ok, st.failures
    a = onnx.load(dy.files["onnx_sparse"])
    b = onnx.load(st.files["onnx_sparse"])
    sa = {s.values.name for s in a.graph.sparse_initializer}
    assert sa and sa == {s.values.name for s in b.graph.sparse_initializer}
    ta, tb = onnx_tensors(a), onnx_tensors(b)
    sparse_rows = [r.name for r in dy.rows if r.zeros and len(r.shape) >= 2]
    assert len(sparse_rows) >= 5
    for name in sparse_rows:
        np.testing.assert_array_equal(ta[name], tb[name], err_msg=name)
        np.testing.assert_array_equal(ta[name] == 0, tb[name] == 0, err_msg=name)
