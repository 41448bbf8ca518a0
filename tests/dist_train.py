"""Run by test_distributed.py under `paddle.distributed.launch --nproc_per_node 2` (CPU, gloo)."""
import sys

import numpy as np
import paddle
import paddle.distributed as dist
from paddle.vision.models import LeNet

from paddleslim_dygraph import UnstructuredPruner


def main(out_prefix: str) -> None:
    dist.init_parallel_env()
    rank = dist.get_rank()
    paddle.seed(0)  # identical initial weights on every rank
    model = paddle.DataParallel(LeNet(num_classes=10))
    pruner = UnstructuredPruner(model, "ratio", ratio=0.7)
    opt = paddle.optimizer.Momentum(0.01, parameters=model.parameters())
    rng = np.random.default_rng(rank)  # each rank sees different data
    for _ in range(5):
        x = paddle.to_tensor(rng.random((8, 1, 28, 28), dtype=np.float32))
        y = paddle.to_tensor(rng.integers(0, 10, (8,)))
        loss = paddle.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.clear_grad()
        pruner.step()
    state = model.state_dict()
    arrays = {k: v.numpy() for k, v in state.items()}
    key_of = {v.name: k for k, v in state.items()}  # masks are not in the state dict: the zeros carry them
    arrays.update({key_of[n] + "_mask": m.numpy() for n, m in pruner.masks.items()})
    arrays["__threshold__"] = np.array(pruner.threshold)
    np.savez(f"{out_prefix}.rank{rank}.npz", **arrays)


if __name__ == "__main__":
    main(sys.argv[1])
