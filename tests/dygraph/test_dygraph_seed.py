"""The seed API page's five examples, each asserting what the page says happens."""
import numpy as np
import paddle
from paddle.vision.models import LeNet as net

from paddleslim_dygraph import UnstructuredPruner

import reference as ref


def prunable_weights(model):
    return [p.numpy() for p in model.parameters() if len(p.shape) > 1]


def test_constructor_example():
    paddle.seed(0)
    model = net(num_classes=10)
    pruner = UnstructuredPruner(model, mode='ratio', ratio=0.5)
    assert pruner.mode == 'ratio' and pruner.ratio == 0.5
    # biases are skipped by default, weights get masks
    assert set(pruner.masks) == {p.name for p in model.parameters() if len(p.shape) > 1}
    assert all(m.dtype == paddle.bool and bool(m.all()) for m in pruner.masks.values())


def test_step_example_changes_threshold():
    paddle.seed(0)
    model = net(num_classes=10)
    pruner = UnstructuredPruner(model, mode='ratio', ratio=0.5)
    before = pruner.threshold
    want = ref.ratio_threshold(prunable_weights(model), 0.5)
    pruner.step()
    after = pruner.threshold
    assert before == 0.01 and after != before  # "the threshold printed differs"
    ws = prunable_weights(model)
    assert np.float32(after) == want
    n = sum(w.size for w in ws)
    zeros = sum(int((w == 0).sum()) for w in ws)
    assert zeros == round(0.5 * n)  # random init: distinct magnitudes, exactly k pruned


def test_update_params_example():
    paddle.seed(0)
    model = net(num_classes=10)
    pruner = UnstructuredPruner(model, mode='threshold', threshold=0.5)
    density0 = UnstructuredPruner.total_sparse(model)
    model(paddle.to_tensor(np.random.uniform(0, 1, [16, 1, 28, 28]), dtype='float32'))
    pruner.update_params()
    density1 = UnstructuredPruner.total_sparse(model)
    assert density1 < density0  # "the printed density differs"
    for p in model.parameters():
        if len(p.shape) > 1:
            w = p.numpy()
            assert not np.any((np.abs(w) < 0.5) & (w != 0)), p.name  # every prunable |w| < 0.5 is 0


def test_total_sparse_example_returns_density():
    paddle.seed(0)
    model = net(num_classes=10)
    arrays = [p.numpy() for p in model.parameters()]
    want = sum(int(np.count_nonzero(a)) for a in arrays) / sum(a.size for a in arrays)
    assert UnstructuredPruner.total_sparse(model) == want
    with paddle.no_grad():
        model.fc[0].weight.set_value(paddle.zeros_like(model.fc[0].weight))
    assert UnstructuredPruner.total_sparse(model) < want


def test_summarize_weights_example():
    paddle.seed(0)
    model = net(num_classes=10)
    pruner = UnstructuredPruner(model, mode='ratio', ratio=0.5)
    threshold = pruner.summarize_weights(model, 0.5)
    ws = prunable_weights(model)
    assert threshold == ref.summarize(ws, 0.5)
    n = sum(w.size for w in ws)
    below = sum(int((np.abs(w) < threshold).sum()) for w in ws)
    assert abs(below - 0.5 * n) <= 1  # "abs(w) < v for ratio of all weights"
    assert pruner.summarize_weights(model, 1.0) == max(float(np.abs(w).max()) for w in ws)
