"""Networks shared by the tests, built identically in dygraph and static mode.

Every builder is a plain ``paddle.nn.Layer`` factory; :func:`dygraph_model` and :func:`static_net`
construct it under a fresh ``paddle.utils.unique_name.guard()`` so parameter names match across modes
(``linear_0.w_0``, ``conv2d_1.w_0``, ``batch_norm2d_0.w_1`` ...).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Dict, Optional, Tuple

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F


class MLP(nn.Layer):
    def __init__(self, sizes=(16, 32, 24, 10)):
        super().__init__()
        self.fcs = nn.LayerList([nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])])

    def forward(self, x):
        for i, fc in enumerate(self.fcs):
            x = fc(x)
            if i < len(self.fcs) - 1:
                x = F.relu(x)
        return x


class LeNet(nn.Layer):
    """LeNet-5 on 1x28x28 inputs (same layout as paddle.vision.models.LeNet)."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2D(1, 6, 3, stride=1, padding=1), nn.ReLU(), nn.MaxPool2D(2, 2),
            nn.Conv2D(6, 16, 5, stride=1, padding=0), nn.ReLU(), nn.MaxPool2D(2, 2),
        )
        self.fc = nn.Sequential(nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, num_classes))

    def forward(self, x):
        return self.fc(paddle.flatten(self.features(x), 1))


class _ConvBN(nn.Layer):
    def __init__(self, cin, cout, k, stride=1, groups=1):
        super().__init__()
        self.conv = nn.Conv2D(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias_attr=False)
        self.bn = nn.BatchNorm2D(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class MobileNetTiny(nn.Layer):
    """MobileNetV1-style: stem conv+BN, depthwise 3x3 + pointwise 1x1 blocks with BN, linear head."""

    def __init__(self, num_classes=10, width=8):
        super().__init__()
        c = width
        self.stem = _ConvBN(3, c, 3, stride=2)
        layers = []
        for cout, stride in ((2 * c, 1), (4 * c, 2), (4 * c, 1)):
            layers += [_ConvBN(c, c, 3, stride=stride, groups=c), _ConvBN(c, cout, 1)]
            c = cout
        self.blocks = nn.Sequential(*layers)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(paddle.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ResTransposeNet(nn.Layer):
    """conv+BN with residual adds and a conv2d_transpose (the PaddleSlim-style scenario)."""

    def __init__(self, num_classes=10, c=8):
        super().__init__()
        self.stem = _ConvBN(3, c, 3)
        self.b1 = _ConvBN(c, c, 3)
        self.b2 = _ConvBN(c, c, 1)
        self.down = _ConvBN(c, 2 * c, 3, stride=2)
        self.up = nn.Conv2DTranspose(2 * c, c, 4, stride=2, padding=1)
        self.b3 = _ConvBN(c, c, 5)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.b2(self.b1(x))
        x = x + self.up(self.down(x))
        x = x + self.b3(x)
        return self.fc(paddle.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@dataclass(frozen=True)
class NetSpec:
    name: str
    build: Callable[[], nn.Layer]
    input_shape: Tuple[int, ...]  # without batch
    num_classes: int = 10


NETS: Dict[str, NetSpec] = {
    "mlp": NetSpec("mlp", MLP, (16,)),
    "lenet": NetSpec("lenet", LeNet, (1, 28, 28)),
    "mobilenet": NetSpec("mobilenet", MobileNetTiny, (3, 16, 16)),
    "restranspose": NetSpec("restranspose", ResTransposeNet, (3, 16, 16)),
}


def batch(spec: NetSpec, n: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n,) + spec.input_shape).astype(np.float32)
    y = rng.integers(0, spec.num_classes, (n, 1)).astype(np.int64)
    return x, y


def dygraph_model(spec: NetSpec, seed: int = 0) -> nn.Layer:
    """The network in dygraph mode with seeded weights (call outside static mode)."""
    paddle.seed(seed)
    with paddle.utils.unique_name.guard():
        return spec.build()


def static_mode() -> ContextManager[None]:
    """Static mode (PIR) inside the block, the caller's mode afterwards: the library's one guard."""
    from paddleslim_static.programs import static_mode as guard

    return guard(pir=True)


@dataclass
class StaticNet:
    main: Any
    startup: Any
    test: Optional[Any]  # eval program cloned before minimize (PIR) / clone(for_test=True) (legacy)
    x: Any
    y: Any
    out: Any
    out_test: Any
    loss: Any
    x_test: Any = None


def static_net(spec: NetSpec, optimizer: Optional[Callable[[], Any]] = None, legacy: bool = False) -> StaticNet:
    """Build the network as a static program (call in static mode); ``optimizer`` is a factory."""
    ctx = paddle.pir_utils.OldIrGuard() if legacy else contextlib.nullcontext()
    with ctx:
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup), paddle.utils.unique_name.guard():
            x = paddle.static.data("x", [None, *spec.input_shape], "float32")
            y = paddle.static.data("y", [None, 1], "int64")
            out = spec.build()(x)
            loss = F.cross_entropy(out, y)
            test, out_test, x_test = None, None, None
            if not legacy:
                vm = paddle.pir.IrMapping()
                test = main.clone(vm)
                out_test, x_test = vm.look_up(out), vm.look_up(x)
                for op in test.global_block().ops:
                    if op.has_attr("is_test"):
                        op.set_bool_attr("is_test", True)
            if optimizer is not None:
                optimizer().minimize(loss)
            if legacy:
                test, out_test, x_test = main.clone(for_test=True), out, x
    return StaticNet(main, startup, test, x, y, out, out_test, loss, x_test)


def copy_weights(model: nn.Layer, scope: Any, place: Any = None) -> None:
    """Copy every dygraph parameter (BatchNorm statistics included) into the scope, by name."""
    place = paddle.CPUPlace() if place is None else place
    for p in model.parameters():
        var = scope.find_var(p.name)
        if var is None:
            raise KeyError(f"{p.name} not in scope")
        var.get_tensor().set(p.numpy(), place)


def scope_array(scope: Any, name: str) -> np.ndarray:
    return np.array(scope.find_var(name).get_tensor())


def scope_mask(scope: Any, var: str, shape) -> np.ndarray:
    """A mask variable of the scope as a bool array of ``shape`` (bit-packed uint8 masks are unpacked)."""
    from paddleslim_static.core.packing import unpack_mask

    arr = scope_array(scope, var)
    return unpack_mask(arr, shape) if arr.dtype == np.uint8 else arr


def assert_same(a: Dict[str, Any], b: Dict[str, Any]) -> None:
    """Two snapshots (name -> array or plain value) are equal, arrays bit for bit."""
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        else:
            assert a[k] == b[k], k
