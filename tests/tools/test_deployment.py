"""Deployment report: Paddle Lite sparse-conv and XNNPACK verdicts on hand-built layers, dygraph and static."""
import numpy as np
import paddle
import pytest

from paddleslim_tools.report import deployment_report, lite_verdict, lite_zero_fraction


def _sparse_1x1(cout, cin, zero_frac, seed=0, dtype=np.float32):
    """A [cout, cin, 1, 1] weight with exactly round(zero_frac * n) zeros at random places (unstructured)."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal(cout * cin) + 3.0).astype(dtype)  # no accidental zeros
    w[rng.permutation(w.size)[: int(round(zero_frac * w.size))]] = 0
    return w.reshape(cout, cin, 1, 1)


OK = dict(op_type="conv2d", groups=1, strides=[1, 1], paddings=[0, 0])


def _ref_lite_fraction(w):
    """Paddle Lite's ComputeSemiSparseZeros + its fp32 branch, written as loops."""
    h = w.shape[0]
    m = w.reshape(h, -1)
    width = m.shape[1]
    nz = blocks2 = 0
    align2 = h - h % 2
    for oc in range(0, align2, 2):
        for ic in range(width):
            a, b = m[oc, ic] != 0, m[oc + 1, ic] != 0
            nz += int(a) + int(b)
            blocks2 += int(a or b)
    block2_nz = nz
    for oc in range(align2, h):
        nz += int(np.count_nonzero(m[oc]))
    semi = block2_nz * 5 >= blocks2 * 9
    stored = blocks2 * 2 + (nz - block2_nz) if semi else nz
    return (h * width - stored) / (h * width), semi


def test_qualifying_layer_and_each_condition_flipped():
    w = _sparse_1x1(16, 32, 0.75)
    assert lite_verdict(w, **OK)[:3] == (True, "ok", "unstructured")
    flips = [
        (dict(OK, op_type="depthwise_conv2d"), w, "not conv2d"),
        (dict(OK, op_type="matmul"), w, "not conv2d"),
        (dict(OK, op_type="conv2d_transpose"), w, "not conv2d"),
        (OK, w.astype(np.float64), "not float32/int8"),
        (OK, w.astype(np.float16), "not float32/int8"),
        (OK, np.repeat(np.repeat(w, 3, 2), 3, 3), "kernel 3x3"),
        (dict(OK, groups=2), w, "groups 2"),
        (dict(OK, strides=[2, 2]), w, "strides"),
        (dict(OK, strides=[1, 2]), w, "strides"),
        (dict(OK, paddings=[1, 1]), w, "paddings"),
        (dict(OK, paddings=[0, 1]), w, "paddings"),
        (OK, _sparse_1x1(16, 32, 0.5), "zeros 0.500 < 0.6"),
    ]
    for kw, weight, reason in flips:
        ok, why, _, _ = lite_verdict(weight, **kw)
        assert not ok and reason in why, (kw, why)
    # int8 weights are taken; the threshold is the opt flag
    assert lite_verdict(w.astype(np.int8), **OK)[0]
    assert lite_verdict(_sparse_1x1(16, 32, 0.5), **OK, sparse_threshold=0.4)[0]
    assert not lite_verdict(w, **OK, sparse_threshold=0.8)[0]
    # exactly at the threshold counts (the pass skips only when below)
    assert lite_verdict(_sparse_1x1(10, 10, 0.6), **OK)[0]


def test_2x1_block_kernel_and_its_zero_count():
    # two output channels sharing their zero pattern: the 2x1 kernel
    w = np.repeat(_sparse_1x1(4, 20, 0.7), 2, axis=0)
    ok, _, kernel, frac = lite_verdict(w, **OK)
    assert ok and kernel == "2x1 block" and frac == pytest.approx(0.7)
    # 2x1 chosen (19 nonzeros in 10 blocks: 95% full), but the filled zero stops counting as a zero
    w = np.zeros((2, 40, 1, 1), np.float32)
    w[0, :10] = 1.0
    w[1, :9] = 1.0
    raw = 1 - np.count_nonzero(w) / w.size  # 0.7625
    frac, semi = lite_zero_fraction(w)
    assert semi and frac == pytest.approx(0.75)
    assert not lite_verdict(w, **OK, sparse_threshold=0.76)[0] and raw >= 0.76
    assert lite_verdict(w, **OK, sparse_threshold=0.75)[0]
    # 85% full blocks: unstructured kernel, zeros counted as they are
    w = np.zeros((2, 40, 1, 1), np.float32)
    w[0, :20] = 1.0
    w[1, :14] = 1.0
    w[1, 20:26] = 1.0  # 40 nonzeros in 26 blocks
    assert lite_verdict(w, **OK)[2] == "unstructured"


def test_lite_zero_fraction_matches_the_pass_loops():
    rng = np.random.default_rng(3)
    for _ in range(60):
        cout, cin = int(rng.integers(1, 9)), int(rng.integers(1, 9))
        w = rng.standard_normal((cout, cin, 1, 1)).astype(np.float32)
        if rng.random() < 0.5:  # paired rows: pushes the 2x1 branch
            w[1::2] = w[0::2][: w[1::2].shape[0]]
        w[rng.random(w.shape) < rng.random()] = 0
        frac, semi = lite_zero_fraction(w)
        ref_frac, ref_semi = _ref_lite_fraction(w)
        assert semi == ref_semi and frac == pytest.approx(ref_frac, abs=1e-7)


class _Net(paddle.nn.Layer):
    """1x1 conv (qualifies), 1x1 stride 2, 3x3, depthwise 1x1, 1x1 too dense, then a Linear."""

    def __init__(self):
        super().__init__()
        self.a = paddle.nn.Conv2D(8, 16, 1)
        self.b = paddle.nn.Conv2D(16, 16, 1, stride=2)
        self.c = paddle.nn.Conv2D(16, 16, 3, padding=1)
        self.d = paddle.nn.Conv2D(16, 16, 1, groups=16)
        self.e = paddle.nn.Conv2D(16, 16, 1)
        self.fc = paddle.nn.Linear(16 * 3 * 3, 10)

    def forward(self, x):
        x = self.e(self.d(self.c(self.b(self.a(x)))))
        return self.fc(paddle.flatten(x, 1))


WEIGHTS = {"a": _sparse_1x1(16, 8, 0.9, 1), "b": _sparse_1x1(16, 16, 0.9, 2), "e": _sparse_1x1(16, 16, 0.3, 3)}
EXPECT = [("conv2d", True), ("conv2d", False), ("conv2d", False), ("depthwise_conv2d", False), ("conv2d", False),
          ("matmul", False)]
SHAPE = [2, 8, 6, 6]
# conv FLOPs = 2 * output elements * (Cin/groups * k * k); matmul = 2 * M * K * N
FLOPS = [2 * 2 * 16 * 36 * 8, 2 * 2 * 16 * 9 * 16, 2 * 2 * 16 * 9 * 144, 2 * 2 * 16 * 9 * 1, 2 * 2 * 16 * 9 * 16,
         2 * 2 * 144 * 10]


def _set(net):
    for name, w in WEIGHTS.items():
        getattr(net, name).weight.set_value(w)


def _check(rep, xnn_a):
    assert [(o.op, o.lite) for o in rep.ops] == EXPECT
    assert [o.flops for o in rep.ops] == FLOPS
    assert rep.ops[1].lite_reason.startswith("strides") and "3x3" in rep.ops[2].lite_reason
    assert "not conv2d" in rep.ops[3].lite_reason and "< 0.6" in rep.ops[4].lite_reason
    assert rep.lite_flops_share == pytest.approx(FLOPS[0] / sum(FLOPS))
    # XNNPACK: 1x1 stride-1 groups-1 convs are a and e: (0.9 * 128 + 0.3 * 256) / 384 = 0.5 zeros < 2/3
    assert [o.xnnpack_1x1 for o in rep.ops] == [True, False, False, False, True, False]
    assert rep.xnnpack_zero_fraction == pytest.approx((115 + 77) / 384)
    assert not any(o.xnnpack for o in rep.ops) and xnn_a is None
    d = rep.to_dict()
    assert d["lite_flops_share"] == rep.lite_flops_share and len(d["ops"]) == 6
    assert "Paddle Lite would run 1 of 6" in rep.summary()


def test_dygraph_model_verdicts_and_flops():
    paddle.seed(0)
    net = _Net()
    _set(net)
    net.train()
    rep = deployment_report(net, SHAPE)
    _check(rep, None)
    assert net.training  # mode restored, hooks removed
    assert all(not layer._forward_post_hooks for layer in net.sublayers())
    # make e sparse: now 1x1 zeros are (115 + 0.9 * 256) / 384 > 2/3 -> XNNPACK takes both
    net.e.weight.set_value(_sparse_1x1(16, 16, 0.9, 4))
    rep = deployment_report(net, SHAPE)
    assert [o.xnnpack for o in rep.ops] == [True, False, False, False, True, False]
    assert rep.ops[4].lite and rep.xnnpack_flops_share == pytest.approx((FLOPS[0] + FLOPS[4]) / sum(FLOPS))


def test_xnnpack_needs_strictly_more_than_two_thirds():
    net = paddle.nn.Sequential(paddle.nn.Conv2D(3, 3, 1, bias_attr=False))
    w = np.ones((3, 3, 1, 1), np.float32)
    w.reshape(-1)[:6] = 0  # exactly 2/3
    net[0].weight.set_value(w)
    assert not deployment_report(net, [1, 3, 4, 4]).ops[0].xnnpack
    w.reshape(-1)[6] = 0
    net[0].weight.set_value(w)
    assert deployment_report(net, [1, 3, 4, 4]).ops[0].xnnpack


@pytest.mark.parametrize("legacy", [False, True])
def test_static_program_same_verdicts(legacy):
    paddle.enable_static()
    try:
        guard = paddle.pir_utils.OldIrGuard() if legacy else paddle.pir_utils.IrGuard()
        with guard:
            main, startup = paddle.static.Program(), paddle.static.Program()
            with paddle.static.program_guard(main, startup):
                x = paddle.static.data("x", [None, 8, 6, 6], "float32")
                net = _Net()
                net(x)
            scope = paddle.static.Scope()
            with paddle.static.scope_guard(scope):
                paddle.static.Executor(paddle.CPUPlace()).run(startup)
            for name, w in WEIGHTS.items():
                scope.find_var(getattr(net, name).weight.name).get_tensor().set(w, paddle.CPUPlace())
            rep = deployment_report(main, SHAPE, scope=scope)
    finally:
        paddle.disable_static()
    _check(rep, None)


def test_nothing_accelerated_is_a_plain_sentence():
    net = paddle.nn.Sequential(paddle.nn.Conv2D(1, 4, 3), paddle.nn.Flatten(), paddle.nn.Linear(4 * 36, 2))
    rep = deployment_report(net, [1, 1, 8, 8])
    assert rep.summary().startswith("Nothing in this model would run on sparse kernels")
    assert rep.lite_flops_share == 0.0 and rep.summary() in rep.format_table()
    net = paddle.nn.Sequential(paddle.nn.Conv2D(4, 4, 1))
    assert "not sparse enough" in deployment_report(net, [1, 4, 2, 2]).summary()


@pytest.mark.parametrize("shape", [[], [1, 0, 2, 2], "1x3", [1.5, 3], None])
def test_bad_input_shape(shape):
    with pytest.raises(ValueError, match="input_shape"):
        deployment_report(paddle.nn.Conv2D(1, 1, 1), shape)


def test_bad_threshold_and_target():
    with pytest.raises(ValueError, match="sparse_threshold"):
        deployment_report(paddle.nn.Conv2D(1, 1, 1), [1, 1, 2, 2], sparse_threshold=1.5)
    with pytest.raises(TypeError, match="program"):
        deployment_report(object(), [1, 1, 2, 2])


FLIPS = [  # (Conv2D kwargs, zero fraction, expected Lite verdict, reason fragment)
    ({}, 0.9, True, "ok"),
    ({"padding": 1}, 0.9, False, "paddings"),
    ({"groups": 2}, 0.9, False, "groups 2"),
    ({"stride": 2}, 0.9, False, "strides"),
    ({"kernel_size": 3}, 0.9, False, "kernel 3x3"),
    ({}, 0.5, False, "zeros 0.500 < 0.6"),
    ({"groups": 8}, 0.9, False, "depthwise_conv2d"),
]


def _flip_weight(shape, frac):
    w = np.full(shape, 1.5, np.float32).ravel()
    w[np.random.default_rng(0).permutation(w.size)[:int(round(frac * w.size))]] = 0
    return w.reshape(shape)


@pytest.mark.parametrize("kw, frac, ok, reason", FLIPS)
def test_each_condition_flipped_same_verdict_in_dygraph_and_static(kw, frac, ok, reason):
    kw = dict({"kernel_size": 1}, **kw)
    conv = paddle.nn.Conv2D(8, 8, **kw)
    w = _flip_weight(conv.weight.shape, frac)
    conv.weight.set_value(w)
    dy = deployment_report(conv, [1, 8, 6, 6]).ops[0]
    paddle.enable_static()
    try:
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup):
            x = paddle.static.data("x", [None, 8, 6, 6], "float32")
            sconv = paddle.nn.Conv2D(8, 8, **kw)
            sconv(x)
        scope = paddle.static.Scope()
        with paddle.static.scope_guard(scope):
            paddle.static.Executor(paddle.CPUPlace()).run(startup)
        scope.find_var(sconv.weight.name).get_tensor().set(w, paddle.CPUPlace())
        st = deployment_report(main, [1, 8, 6, 6], scope=scope).ops[0]
    finally:
        paddle.disable_static()
    for op in (dy, st):
        assert op.lite == ok and reason in (op.lite_reason if reason != "depthwise_conv2d" else op.op), op
    assert (dy.op, dy.lite_reason, dy.flops, dy.zero_fraction) == (st.op, st.lite_reason, st.flops, st.zero_fraction)
