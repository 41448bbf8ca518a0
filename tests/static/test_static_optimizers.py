"""Every optimizer keeps pruned weights at zero: the pass finds parameter updates structurally.

Each optimizer class of ``paddle.optimizer`` (enumerated, not listed), in PIR and in legacy IR, plus a user's own
update (``paddle.assign(p - lr * g, p)`` after ``append_backward``) and an update inside a control-flow branch:
the pass must see every update, and after every ``exe.run`` every pruned weight is exactly 0 while kept weights
still train. Masks are set in the scope directly (bool and bit-packed), so only the pass is under test.
"""
import contextlib
import inspect

import numpy as np
import paddle
import pytest

from paddleslim_static.mask_pass import apply_mask_pass, mask_var_name, masked_params, unmasked_params
from paddleslim_static.programs import has_optimizer_ops, param_writes

OPTIMIZERS = sorted(
    name for name, cls in vars(paddle.optimizer).items()
    if inspect.isclass(cls) and issubclass(cls, paddle.optimizer.Optimizer) and cls is not paddle.optimizer.Optimizer
)
# (optimizer, legacy IR) -> why it cannot build a static program here; the test checks that it still cannot.
CANNOT_RUN = {
    ("LBFGS", False): "LBFGS needs a loss closure: dygraph only, static minimize() raises",
    ("LBFGS", True): "LBFGS needs a loss closure: dygraph only, static minimize() raises",
    ("ASGD", True): "Paddle 3.3.1's ASGD.minimize fails under legacy IR (index_put gets a list: TypeError)",
}
SIZES = ((5, 7), (7, 3))  # 35 and 21 weights: packed masks end in a partial byte


def test_optimizers_enumerated():
    assert {"SGD", "Momentum", "Adam", "AdamW", "Rprop", "ASGD", "Lamb"} <= set(OPTIMIZERS)


@contextlib.contextmanager
def _ir(legacy):
    paddle.enable_static()
    try:
        with (paddle.pir_utils.OldIrGuard() if legacy else contextlib.nullcontext()):
            yield
    finally:
        paddle.disable_static()


def _build(update, legacy):
    """(main, startup, loss, weight names); ``update(loss, layers)`` adds the parameter updates."""
    main, startup = paddle.static.Program(), paddle.static.Program()
    main.random_seed = startup.random_seed = 1
    with paddle.static.program_guard(main, startup), paddle.utils.unique_name.guard():
        x = paddle.static.data("x", [None, SIZES[0][0]], "float32")
        layers = [paddle.nn.Linear(a, b) for a, b in SIZES]
        h = x
        for i, layer in enumerate(layers):
            h = layer(h)
            if i < len(layers) - 1:
                h = paddle.nn.functional.relu(h)
        loss = (h * h).mean()
        update(loss, layers)
    return main, startup, loss, [layer.weight.name for layer in layers]


def _run_and_check(main, startup, loss, names, packed, runs=3):
    assert unmasked_params(main, names) == names  # the pass must see the updates of every weight
    res = apply_mask_pass(main, startup, names, packed=packed)
    assert res.masked == tuple(names) and unmasked_params(main, names) == []
    assert masked_params(main) == set(names)
    assert not apply_mask_pass(main, startup, names, packed=packed).modified
    rng = np.random.default_rng(0)
    scope, exe = paddle.static.Scope(), paddle.static.Executor(paddle.CPUPlace())
    with paddle.static.scope_guard(scope):
        exe.run(startup)
        masks = {}
        for n in names:
            shape = np.array(scope.find_var(n).get_tensor()).shape
            masks[n] = rng.random(shape) < 0.5
            value = np.packbits(masks[n].reshape(-1)) if packed else masks[n]
            scope.find_var(mask_var_name(n)).get_tensor().set(value, paddle.CPUPlace())
        before = {n: np.array(scope.find_var(n).get_tensor()) for n in names}
        for i in range(runs):
            x = np.random.default_rng(i).standard_normal((4, SIZES[0][0])).astype(np.float32)
            exe.run(main, feed={"x": x}, fetch_list=[loss])
            for n, m in masks.items():
                w = np.array(scope.find_var(n).get_tensor())
                assert np.all(w[~m] == 0), f"run {i}: pruned weights of {n} came back"
                assert np.all(w[m] != 0), f"run {i}: kept weights of {n} were zeroed"
        trained = any(np.any(np.array(scope.find_var(n).get_tensor())[masks[n]] != before[n][masks[n]])
                      for n in names)
        assert trained  # the optimizer did run: kept weights moved


@pytest.mark.parametrize("packed", [False, True], ids=["bool", "packed"])
@pytest.mark.parametrize("legacy", [False, True], ids=["pir", "legacy"])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_keeps_pruned_weights_zero(name, legacy, packed):
    def update(loss, layers):
        getattr(paddle.optimizer, name)(learning_rate=0.05).minimize(loss)

    with _ir(legacy):
        if (name, legacy) in CANNOT_RUN:
            with pytest.raises(Exception):
                main, startup, loss, _ = _build(update, legacy)
                exe = paddle.static.Executor(paddle.CPUPlace())
                exe.run(startup)
                exe.run(main, feed={"x": np.ones((2, SIZES[0][0]), np.float32)}, fetch_list=[loss])
            pytest.skip(CANNOT_RUN[(name, legacy)])
        main, startup, loss, names = _build(update, legacy)
        assert has_optimizer_ops(main)
        _run_and_check(main, startup, loss, names, packed)


def _own_update(loss, layers):
    for p, g in paddle.static.append_backward(loss):
        paddle.assign(p - 0.1 * g, p)


@pytest.mark.parametrize("packed", [False, True], ids=["bool", "packed"])
@pytest.mark.parametrize("legacy", [False, True], ids=["pir", "legacy"])
def test_users_own_optimizer(legacy, packed):
    with _ir(legacy):
        main, startup, loss, names = _build(_own_update, legacy)
        assert has_optimizer_ops(main)
        _run_and_check(main, startup, loss, names, packed)


def test_update_inside_a_control_flow_branch():
    """PIR: an update inside ``cond`` is attributed to the ``pd_op.if``; the mask op runs after it."""
    def update(loss, layers):
        grads = paddle.static.append_backward(loss)

        def apply():
            for p, g in grads:
                paddle.assign(p - 0.1 * g, p)
            return paddle.full([1], 1.0)

        paddle.static.nn.cond(loss > -1.0, apply, lambda: paddle.full([1], 0.0))

    with _ir(False):
        main, startup, loss, names = _build(update, False)
        writers = param_writes(main)
        assert [op.name() for _, op, _ in writers] == ["pd_op.if"] and set(names) <= writers[0][2]
        _run_and_check(main, startup, loss, names, packed=False)


@pytest.mark.parametrize("legacy", [False, True], ids=["pir", "legacy"])
def test_updates_appended_after_the_pass_are_reported_and_masked_by_a_rerun(legacy):
    with _ir(legacy):
        main, startup, loss, names = _build(lambda loss, layers: paddle.optimizer.SGD(0.1).minimize(loss), legacy)
        apply_mask_pass(main, startup, names)
        assert unmasked_params(main, names) == []
        with paddle.static.program_guard(main, startup):
            w = [p for p in main.global_block().all_parameters() if p.name == names[1]][0]
            paddle.assign(w * 2.0, w)  # a write after the mask op: pruned weights would be 0 * 2, but any
        assert unmasked_params(main, names) == [names[1]]  # later write is reported
        res = apply_mask_pass(main, startup, names)
        assert res.masked == (names[1],) and unmasked_params(main, names) == []
        assert not apply_mask_pass(main, startup, names).modified


@pytest.mark.parametrize("legacy", [False, True], ids=["pir", "legacy"])
def test_program_without_updates_gets_no_mask_ops(legacy):
    with _ir(legacy):
        main, startup, loss, names = _build(lambda loss, layers: None, legacy)
        assert not has_optimizer_ops(main) and param_writes(main) == []
        res = apply_mask_pass(main, startup, names)
        assert res.masked == () and unmasked_params(main, names) == [] and not masked_params(main)
