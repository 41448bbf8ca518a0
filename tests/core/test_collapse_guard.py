"""Sparsity allocation and the collapse guard through both front-ends: bitwise parity between dygraph and a PIR
program (global with protected layers, uniform, ERK, min_density, blocks, N:M, GMP), exact counts against a
brute-force reference, and the arguments' validation."""
import logging
import math

import numpy as np
import paddle
import pytest

import paddleslim_dygraph as dy
from nets import NETS
from paddleslim_static.core import allocation as al
from paddleslim_static.core.backend import ArrayBackend
from paddleslim_static.core.pruner import Pruner
from test_parity import Dygraph, Static, _assert_same


def _pair(spec, shrink=None, factor=1e-3):
    """(dygraph, static) twins; ``shrink``: the index of a prunable weight scaled by ``factor`` first, so that a
    global threshold would empty it (the first convolution of the issue's collapse)."""
    d = Dygraph(spec, 0)
    if shrink is not None:
        p = [p for p in d.model.parameters() if len(p.shape) > 1][shrink]
        p.set_value((p.numpy() * factor).astype(np.float32))
    return d, Static(spec, 0, twin=d)


OPTIONS = {
    "global-protected": dict(mode="ratio", ratio=0.98),
    "global-min-density": dict(mode="ratio", ratio=0.9, min_density=0.05),
    "uniform": dict(mode="ratio", ratio=0.9, sparsity_allocation="uniform"),
    "erk": dict(mode="ratio", ratio=0.95, sparsity_allocation="erk"),
    "erk-min-density": dict(mode="ratio", ratio=0.9, sparsity_allocation="erk", min_density=0.08),
    "erk-block2x2": dict(mode="ratio", ratio=0.9, sparsity_allocation="erk", sparse_block=(2, 2)),
    "global-block2x1-protected": dict(mode="ratio", ratio=0.98, sparse_block=(2, 1)),
    "uniform-nm2:4": dict(mode="ratio", ratio=0.6, sparsity_allocation="uniform", sparse_pattern="2:4"),
    "local-protected": dict(mode="ratio", ratio=0.995, local_sparsity=True),
}
CASES = [(net, opt) for net in ("lenet", "mobilenet") for opt in OPTIONS]


@pytest.mark.parametrize("net,option", CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_allocations_are_bitwise_identical_in_both_modes(net, option):
    d, s = _pair(NETS[net], shrink=0)
    pd, ps = d.pruner(**OPTIONS[option]), s.pruner(**OPTIONS[option])
    pd.step()
    ps.step()
    _assert_same(d, s, pd, ps)
    assert pd.protected_params == ps.protected_params
    masks = s.masks(ps)
    lows = dict(zip(masks, al.floors([m.size for m in masks.values()], OPTIONS[option].get("min_density", 0.0))))
    for n, m in masks.items():  # no layer below its floor, in either mode
        assert int(m.sum()) >= lows[n], n
    if option.endswith("protected"):
        assert ps.protected_params, "the shrunk layer should have needed protection"


GMP = {"stable_iterations": 0, "pruning_iterations": 44, "tunning_iterations": 10, "resume_iteration": -1,
       "pruning_steps": 4, "initial_ratio": 0.5}


@pytest.mark.parametrize("allocation", ["global", "erk"])
def test_gmp_with_an_allocation_is_bitwise_identical_in_both_modes(allocation):
    d, s = _pair(NETS["lenet"], shrink=0)
    kw = dict(gmp=True, ratio=0.98, configs=GMP, sparsity_allocation=allocation)
    pd, ps = d.pruner(**kw), s.pruner(**kw)
    ratios = set()
    for _ in range(56):
        pd.step()
        ps.step()
        ratios.add(ps.ratio)
    assert max(ratios) == 0.98 and len(ratios) > 2
    _assert_same(d, s, pd, ps)
    assert all(m.any() for m in s.masks(ps).values())


def _distinct(shapes, seed=0, scales=None):
    rng = np.random.default_rng(seed)
    n = sum(math.prod(s) for s in shapes)
    vals = rng.permutation(np.arange(1, n + 1, dtype=np.float32)) / n
    out, at = {}, 0
    for i, s in enumerate(shapes):
        m = math.prod(s)
        out[f"w{i}"] = (vals[at:at + m].reshape(s) * (1 if scales is None else scales[i])).astype(np.float32)
        at += m
    return out


SHAPES = [(3, 3, 1, 8), (3, 3, 8, 16), (144, 32), (32, 6)]


@pytest.mark.parametrize("method", ["uniform", "erk"])
@pytest.mark.parametrize("ratio", [0.5, 0.9, 0.98])
def test_each_layer_prunes_exactly_its_allocated_count(method, ratio):
    w = _distinct(SHAPES)
    Pruner(ArrayBackend(w), mode="ratio", ratio=ratio, sparsity_allocation=method).step()
    pruned = [int((a == 0).sum()) for a in w.values()]
    assert pruned == al.prune_counts(SHAPES, ratio, method)
    assert sum(pruned) == round(ratio * sum(math.prod(s) for s in SHAPES))


def test_global_protects_a_layer_it_would_empty_and_still_prunes_the_global_count(caplog):
    w = _distinct(SHAPES, scales=[1e-4, 1, 1, 1])  # every weight of w0 below every other weight
    ref = {n: a.copy() for n, a in w.items()}
    pruner = Pruner(ArrayBackend(w), mode="ratio", ratio=0.98)
    with caplog.at_level(logging.WARNING, logger="paddleslim_static.core.pruner"):
        pruner.step()
    kept = {n: int((a != 0).sum()) for n, a in w.items()}
    n_all = sum(a.size for a in w.values())
    assert kept["w0"] == 1 and np.abs(w["w0"]).max() == np.abs(ref["w0"]).max()  # its largest weight stays
    assert n_all - sum(kept.values()) == round(0.98 * n_all)
    assert pruner.protected_params == ["w0"] and "w0" in caplog.text
    # the others: one threshold, the one a global selection over them alone picks for the rest of the count
    others = np.sort(np.concatenate([np.abs(ref[n]).ravel() for n in ("w1", "w2", "w3")]))
    t = others[round(0.98 * n_all) - (ref["w0"].size - 1)]
    assert pruner.threshold == t and pruner.thresholds == {"w0": float(np.abs(ref["w0"]).max())}
    for n in ("w1", "w2", "w3"):
        np.testing.assert_array_equal(w[n] != 0, np.abs(ref[n]) >= t)


def test_without_a_starved_layer_global_is_the_seeds_selection():
    w = _distinct(SHAPES)
    ref = np.sort(np.concatenate([a.ravel() for a in w.values()]))
    pruner = Pruner(ArrayBackend(w), mode="ratio", ratio=0.9)
    pruner.step()
    assert pruner.threshold == ref[round(0.9 * ref.size)] and pruner.thresholds == {}
    assert pruner.protected_params == []


def test_min_density_lifts_every_layer_to_its_floor():
    w = _distinct(SHAPES, scales=[1e-4, 1e-3, 1, 1])
    Pruner(ArrayBackend(w), mode="ratio", ratio=0.9, min_density=0.05).step()
    n_all = sum(a.size for a in w.values())
    for a in w.values():
        assert int((a != 0).sum()) >= math.ceil(0.05 * a.size)
    assert sum(int((a == 0).sum()) for a in w.values()) == round(0.9 * n_all)


def test_local_sparsity_keeps_the_seeds_rounding_and_protects_a_layer_it_would_empty():
    w = {"a": np.arange(1, 11, dtype=np.float32).reshape(2, 5), "b": np.arange(1, 201, dtype=np.float32).reshape(10, 20)}
    pruner = Pruner(ArrayBackend(w), mode="ratio", ratio=0.96, local_sparsity=True)
    pruner.step()  # round(0.96 * 10) = 10 would empty 'a'; 'b' prunes round(0.96 * 200) = 192 as the seed says
    assert int((w["a"] != 0).sum()) == 1 and int((w["b"] == 0).sum()) == 192
    assert pruner.protected_params == ["a"] and pruner.sparsity_allocation == "uniform"


@pytest.mark.parametrize("kw,exc,match", [
    (dict(mode="ratio", sparsity_allocation="erk", local_sparsity=True), ValueError, "local_sparsity"),
    (dict(mode="threshold", sparsity_allocation="erk"), ValueError, "mode='ratio'"),
    (dict(mode="threshold", min_density=0.1), ValueError, "min_density"),
    (dict(mode="ratio", sparsity_allocation="ERK"), ValueError, "sparsity_allocation"),
    (dict(mode="ratio", sparsity_allocation=0), TypeError, "sparsity_allocation"),
    (dict(mode="ratio", min_density=2.0), ValueError, "min_density"),
    (dict(mode="ratio", ratio=0.95, min_density=0.1), ValueError, "min_density=0.1"),
])
def test_bad_arguments_raise_before_the_model_changes(kw, exc, match):
    spec = NETS["lenet"]
    d = Dygraph(spec, 0)
    before = {k: v.numpy().copy() for k, v in d.model.state_dict().items()}
    mode = kw.pop("mode")
    with pytest.raises(exc, match=match):
        dy.UnstructuredPruner(d.model, mode, **kw)
    after = d.model.state_dict()
    assert before.keys() == after.keys()  # no mask buffers were attached
    for k in before:
        np.testing.assert_array_equal(before[k], after[k].numpy())
    dy.UnstructuredPruner(d.model, "ratio", ratio=0.5).finalize()  # the model is free for another pruner


def test_gmp_checks_min_density_against_its_target_ratio():
    with pytest.raises(ValueError, match="min_density"):
        dy.GMPUnstructuredPruner(Dygraph(NETS["mlp"], 0).model, ratio=0.95, configs=GMP, min_density=0.1)


def test_erk_with_collectives_is_refused():
    class One:
        def allreduce_sum(self, x):
            return x

        def allgather(self, x):
            return [x]
    with pytest.raises(ValueError, match="collectives"):
        Pruner(ArrayBackend(_distinct(SHAPES)), mode="ratio", ratio=0.9, sparsity_allocation="erk", collectives=One())


def test_global_protection_with_collectives_matches_one_process():
    class One:
        def allreduce_sum(self, x):
            return np.asarray(x)

        def allgather(self, x):
            return [np.asarray(x)]
    a, b = _distinct(SHAPES, scales=[1e-4, 1, 1, 1]), _distinct(SHAPES, scales=[1e-4, 1, 1, 1])
    pa = Pruner(ArrayBackend(a), mode="ratio", ratio=0.98)
    pb = Pruner(ArrayBackend(b), mode="ratio", ratio=0.98, collectives=One())
    pa.step()
    pb.step()
    assert pa.threshold == pb.threshold and pa.thresholds == pb.thresholds and pb.protected_params == ["w0"]
    for n in a:
        assert a[n].tobytes() == b[n].tobytes()


def test_static_uniform_keeps_one_threshold_variable_per_parameter():
    d, s = _pair(NETS["mlp"])
    ps = s.pruner(mode="ratio", ratio=0.5, sparsity_allocation="uniform")
    ps.step()
    from paddleslim_static.pruner import threshold_var_name
    for n, t in ps.thresholds.items():
        v = np.array(s.scope.find_var(threshold_var_name(n)).get_tensor())
        assert np.float32(v) == np.float32(t)
    paddle.disable_static()


@pytest.mark.parametrize("mode", [Dygraph, Static], ids=["dygraph", "static"])
def test_the_sparsity_report_flags_empty_and_near_empty_layers(mode):
    from paddleslim_tools.report import sparsity_report
    d = Dygraph(NETS["mlp"], 0)
    ws = [p for p in d.model.parameters() if len(p.shape) > 1]  # 16x32, 32x24, 24x10
    ws[0].set_value((ws[0].numpy() * 1e-3).astype(np.float32))  # below the threshold everywhere: emptied
    ws[1].set_value(np.where(np.arange(ws[1].size).reshape(ws[1].shape) == 0, 1.0, 0.05).astype(np.float32))
    m = d if mode is Dygraph else Static(NETS["mlp"], 0, twin=d)
    pruner = m.pruner(mode="threshold", threshold=0.1)  # threshold mode: the user's threshold, no guard
    pruner.update_params()
    source = d.model if mode is Dygraph else m.net.main
    rep = sparsity_report(source, pruner=pruner, **({} if mode is Dygraph else {"scope": m.scope}))
    flags = {f["name"]: (f["flag"], f["nonzeros"]) for f in rep.flags()}
    assert flags[ws[0].name] == ("empty", 0) and flags[ws[1].name] == ("near-empty", 1)
    assert ws[2].name not in flags
    table = rep.format_table()
    assert f"EMPTY: {ws[0].name} keeps 0 of 512 weights" in table and f"NEAR-EMPTY: {ws[1].name}" in table
    assert rep.to_dict()["flags"] == rep.flags()


@pytest.mark.parametrize("mode", [Dygraph, Static], ids=["dygraph", "static"])
@pytest.mark.parametrize("option", ["erk", "global-protected"])
def test_a_state_round_trips_and_a_state_of_another_allocation_is_refused(mode, option):
    d = _pair(NETS["lenet"], shrink=0)[0]
    m = d if mode is Dygraph else Static(NETS["lenet"], 0, twin=d)
    pruner = m.pruner(**OPTIONS[option])
    pruner.step()
    state = pruner.state_dict()
    assert state["config"]["sparsity_allocation"] == OPTIONS[option].get("sparsity_allocation", "global")
    assert state["thresholds"]  # per-layer (ERK) or the protected layers' own (global)
    before = (pruner.threshold, dict(pruner.thresholds))
    pruner.set_state_dict(state)
    assert (pruner.threshold, dict(pruner.thresholds)) == before
    pruner.finalize()
    other = m.pruner(mode="ratio", ratio=OPTIONS[option]["ratio"], sparsity_allocation="uniform")
    with pytest.raises(ValueError, match=r"state\['config'\]\['sparsity_allocation'\]"):
        other.set_state_dict(state)
    if mode is Static:
        paddle.disable_static()
