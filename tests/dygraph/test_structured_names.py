"""Name-keyed results of the dygraph pruner take a parameter's structured name (``features.3.weight``, what
checkpoints and reports use) wherever they take its Paddle name (``conv2d_1.w_0``); iteration stays Paddle names."""
from __future__ import annotations

import copy
import json

import numpy as np
import paddle
import pytest

from paddleslim_dygraph import GMPUnstructuredPruner, UnstructuredPruner
from paddleslim_static.core.naming import NameKeyed


class Net(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.features = paddle.nn.Sequential(paddle.nn.Conv2D(1, 4, 3), paddle.nn.ReLU(), paddle.nn.Conv2D(4, 8, 1))
        self.head = paddle.nn.Linear(8 * 6 * 6, 3)

    def forward(self, x):
        return self.head(paddle.flatten(self.features(x), 1))


@pytest.mark.parametrize("local", [False, True])
def test_masks_thresholds_and_densities_by_structured_name(local):
    paddle.seed(0)
    net = Net()
    pruner = UnstructuredPruner(net, "ratio", ratio=0.6, local_sparsity=local)
    pruner.step()
    structured = {k: p.name for k, p in net.named_parameters()}
    assert list(pruner.masks) == [structured[k] for k in ("features.0.weight", "features.2.weight", "head.weight")]
    for key, name in structured.items():
        by_layer = UnstructuredPruner.sparse_by_layer(net)
        assert by_layer[key] == by_layer[name] == float(np.count_nonzero(dict(net.named_parameters())[key].numpy())
                                                       / dict(net.named_parameters())[key].size)
        assert (key in pruner.masks) == (name in pruner.masks)
        if name in pruner.masks:
            assert pruner.masks[key] is pruner.masks[name]
            np.testing.assert_array_equal(pruner.masks[key].numpy(), dict(net.named_parameters())[key].numpy() != 0)
        if local and name in pruner.masks:
            assert pruner.thresholds[key] == pruner.thresholds[name]
    assert pruner.masks.get("head.bias") is None and "head.bias" not in pruner.masks
    with pytest.raises(KeyError):
        pruner.masks["head.bias"]
    # what the results were before stays as it was: Paddle names, JSON, copies, state round trip
    assert json.loads(json.dumps(pruner.thresholds)) == dict(pruner.thresholds)
    assert all(k.startswith(("conv2d_", "linear_")) for k in pruner.thresholds)
    again = copy.deepcopy(pruner.thresholds)
    assert dict(again) == dict(pruner.thresholds)
    state = pruner.state_dict()
    pruner.set_state_dict(state)
    assert dict(pruner.thresholds) == {n: t for n, t in again.items()}


def test_gmp_pruner_masks_by_structured_name():
    configs = {"stable_iterations": 0, "pruning_iterations": 20, "tunning_iterations": 0, "resume_iteration": 0,
               "pruning_steps": 1, "initial_ratio": 0.5}
    net = Net()
    pruner = GMPUnstructuredPruner(net, ratio=0.5, configs=configs)
    pruner.step()
    assert pruner.masks["head.weight"] is not None and "features.2.weight" in pruner.masks


def test_name_keyed_prefers_a_real_key_over_an_alias():
    d = NameKeyed({"a": 1, "b": 2}, {"a": "b", "c": "a"})
    assert d["a"] == 1 and d["c"] == 1 and d.get("zz", 5) == 5 and 3 not in d and sorted(d) == ["a", "b"]
