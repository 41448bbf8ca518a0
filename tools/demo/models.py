"""The demo's networks: ``paddleslim-export --model paddleslim_tools.demo:digits_cnn`` (or ``:mnist_cnn``,
``:build_model``) rebuilds the network of a demo checkpoint.

>>> [type(layer).__name__ for layer in digits_cnn()][:4]
['Conv2D', 'BatchNorm2D', 'ReLU', 'MaxPool2D']
"""
from __future__ import annotations

from typing import List, Sequence

import paddle

__all__ = ["build_model", "digits_cnn", "mnist_cnn"]


def build_model(image_shape: Sequence[int] = (8, 8), num_classes: int = 10) -> paddle.nn.Layer:
    """conv3x3(16)-BN-ReLU-maxpool2, conv3x3(32)-ReLU, maxpool2 while the map is >= 8, FC(64)-ReLU, FC(classes).

    Only ops with an exact ONNX equivalent (no adaptive pooling with uneven windows), so the export check
    passes at any input size: 8x8 digits -> 4x4 maps, 28x28 MNIST -> 14x14 -> 7x7 maps. The BatchNorm layer
    is there to show it is skipped by the default prunable-parameter rule.

    >>> list(build_model((28, 28))[-3].weight.shape)
    [1568, 64]
    """
    if (not isinstance(image_shape, (tuple, list)) or len(image_shape) != 2
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 2 for d in image_shape)):
        raise ValueError(f"image_shape must be two ints >= 2 (height, width); got {image_shape!r}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2; got {num_classes!r}")
    h, w = image_shape[0] // 2, image_shape[1] // 2
    layers: List[paddle.nn.Layer] = [
        paddle.nn.Conv2D(1, 16, 3, padding=1), paddle.nn.BatchNorm2D(16), paddle.nn.ReLU(), paddle.nn.MaxPool2D(2),
        paddle.nn.Conv2D(16, 32, 3, padding=1), paddle.nn.ReLU(),
    ]
    while min(h, w) >= 8:
        layers.append(paddle.nn.MaxPool2D(2))
        h, w = h // 2, w // 2
    layers += [paddle.nn.Flatten(), paddle.nn.Linear(32 * h * w, 64), paddle.nn.ReLU(),
               paddle.nn.Linear(64, num_classes)]
    return paddle.nn.Sequential(*layers)


def digits_cnn() -> paddle.nn.Layer:
    """The demo network for the bundled 8x8 digits (``paddleslim-export --model paddleslim_tools.demo:digits_cnn``)."""
    return build_model((8, 8))


def mnist_cnn() -> paddle.nn.Layer:
    """The demo network for 28x28 MNIST (``paddleslim-export --model paddleslim_tools.demo:mnist_cnn``)."""
    return build_model((28, 28))
