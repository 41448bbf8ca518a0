"""GMP schedule: PaddleSlim's ratio stack, as a pure function of the iteration."""
import pytest
from hypothesis import given, strategies as st

from paddleslim_static.core import GMPSchedule

BASE = dict(stable_iterations=0, pruning_iterations=1000, tunning_iterations=1000, resume_iteration=0,
            pruning_steps=20, initial_ratio=0.15)


def paddleslim_stack_ratios(cfg, target, n_iter):
    """PaddleSlim 2.6's stateful algorithm, re-stated: a reversed stack popped every period."""
    period = int(cfg["pruning_iterations"] / cfg["pruning_steps"])
    steps = cfg["pruning_steps"]
    stack = [((i / steps) - 1.0) ** 3 + 1 for i in range(steps)]
    stack = [r * (target - cfg["initial_ratio"]) + cfg["initial_ratio"] for r in stack]
    stable = int(float(cfg["stable_iterations"]) / cfg["pruning_iterations"] * steps)
    tun = int(float(cfg["tunning_iterations"]) / cfg["pruning_iterations"] * steps)
    stack = [0.0] * stable + stack + [target] * tun
    stack.reverse()
    ratio, out = 0.0, []
    for it in range(n_iter):
        if it % period == 0:
            ratio = stack.pop() if stack else target
        out.append(ratio)
    return out


@given(st.integers(0, 3000), st.integers(11, 400), st.integers(1, 30), st.floats(0, 0.5), st.floats(0.5, 0.95))
def test_matches_paddleslim_stack(stable, per_step, steps, initial, target):
    cfg = dict(BASE, stable_iterations=stable, pruning_iterations=per_step * steps, pruning_steps=steps,
               initial_ratio=initial)
    s = GMPSchedule.from_configs(cfg, target)
    n = stable + 2 * per_step * steps + 50
    want = paddleslim_stack_ratios(cfg, target, n)
    assert [s.ratio_at(i) for i in range(n)] == want


def test_known_values():
    s = GMPSchedule.from_configs(BASE, 0.55)
    assert s.period == 50
    assert s.ratio_at(-1) == 0.0
    assert s.ratio_at(0) == pytest.approx(0.15)
    assert s.ratio_at(49) == s.ratio_at(0)
    assert s.ratio_at(50) == pytest.approx(0.15 + 0.4 * (1 - (1 - 1 / 20) ** 3))
    assert s.ratio_at(999) < 0.55 and s.ratio_at(1000) == 0.55 and s.ratio_at(10**6) == 0.55
    ratios = [s.ratio_at(i) for i in range(0, 1000, 50)]
    assert ratios == sorted(ratios) and len(set(ratios)) == 20


def test_stable_phase_is_zero():
    s = GMPSchedule.from_configs(dict(BASE, stable_iterations=200), 0.5)
    assert {s.ratio_at(i) for i in range(200)} == {0.0} and s.ratio_at(200) == pytest.approx(0.15)


def test_tuning_spelling_accepted():
    cfg = dict(BASE)
    cfg["tuning_iterations"] = cfg.pop("tunning_iterations")
    assert GMPSchedule.from_configs(cfg, 0.5).tuning_iterations == 1000


@pytest.mark.parametrize("change, exc, match", [
    (dict(pruning_steps=100), ValueError, "must exceed 10"),
    (dict(pruning_steps=0), ValueError, "pruning_steps"),
    (dict(pruning_steps=2.5), TypeError, "pruning_steps"),
    (dict(initial_ratio=0.7), ValueError, "initial_ratio"),
    (dict(initial_ratio=1.5), ValueError, "initial_ratio"),
    (dict(stable_iterations=-5), ValueError, "stable_iterations"),
    (dict(resume_iteration="3"), TypeError, "resume_iteration"),
    (dict(bogus=1), ValueError, "unknown keys"),
    (dict(tuning_iterations=5), ValueError, "different"),
])
def test_bad_configs(change, exc, match):
    with pytest.raises(exc, match=match):
        GMPSchedule.from_configs(dict(BASE, **change), 0.5)


@pytest.mark.parametrize("missing", sorted(BASE))
def test_missing_key(missing):
    cfg = {k: v for k, v in BASE.items() if k != missing}
    with pytest.raises(ValueError, match=missing):
        GMPSchedule.from_configs(cfg, 0.5)


def test_configs_none_or_not_dict():
    with pytest.raises(ValueError, match="configs is required"):
        GMPSchedule.from_configs(None, 0.5)
    with pytest.raises(TypeError, match="configs must be a dict"):
        GMPSchedule.from_configs([1, 2], 0.5)
