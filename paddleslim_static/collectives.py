"""``paddle.distributed`` collectives for the core's global selection across ranks (gloo on CPU, NCCL on GPU).

Pass an instance as ``collectives=`` to :func:`paddleslim_static.core.engine.ratio_thresholds` when each rank
holds a different part of the model's parameters (pipeline stages, sharded optimizers, layers split by hand):
every rank then gets the threshold one process would pick over all ranks' weights, bit for bit. Call
``paddle.distributed.init_parallel_env()`` (or ``fleet.init``) first. The calls run eagerly even when the
caller has static mode enabled. With one process they return their input and need no initialised group.

Which group: the ranks over which the *parameters are split*, and only those. ``paddle.DataParallel`` and
fleet sharding stages 1-2 replicate every parameter on every rank: pass no collectives (each rank already sees all
weights and computes the same threshold; summing replicas would count each weight several times). Pipeline
stages or sharding stage 3 split the parameters: pass ``PaddleCollectives(group)`` with that group, e.g.
``fleet.get_hybrid_communicate_group().get_pipe_parallel_group()`` under hybrid parallelism. Every rank of the
group must make the same call at the same time (it is a collective).

>>> import numpy as np
>>> from paddleslim_static.collectives import PaddleCollectives
>>> c = PaddleCollectives()  # a single process: identities
>>> c.allreduce_sum(np.array([3, 4], np.int64)).tolist(), [a.tolist() for a in c.allgather(np.arange(3))]
([3, 4], [[0, 1, 2]])
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, List, Optional

import numpy as np

__all__ = ["PaddleCollectives"]


@contextlib.contextmanager
def _eager() -> Iterator[None]:
    import paddle
    static = not paddle.in_dynamic_mode()
    if static:
        paddle.disable_static()
    try:
        yield
    finally:
        if static:
            paddle.enable_static()


class PaddleCollectives:
    """``allreduce_sum`` / ``allgather`` of 1-D numpy arrays over a ``paddle.distributed`` group.

    ``group``: a group from ``paddle.distributed.new_group`` (default: all ranks). Arrays travel as int64 or
    float64 tensors on the current device; ``allgather`` accepts different lengths on different ranks.
    """

    def __init__(self, group: Optional[Any] = None) -> None:
        self.group = group

    def _world(self) -> int:
        import paddle.distributed as dist
        if self.group is not None:
            return int(self.group.nranks)
        return int(dist.get_world_size()) if dist.is_initialized() else 1

    @staticmethod
    def _wire(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x).reshape(-1)
        if x.dtype.kind in "biu":
            return x.astype(np.int64)
        if x.dtype.kind == "f":
            return x.astype(np.float64)
        raise TypeError(f"PaddleCollectives: x must be an integer or float array; got dtype {x.dtype}")

    def allreduce_sum(self, x: np.ndarray) -> np.ndarray:
        """Element-wise sum over ranks (int arrays come back as int64, float arrays as float64)."""
        wire = self._wire(x)
        if self._world() == 1:
            return wire
        import paddle
        import paddle.distributed as dist
        with _eager():
            t = paddle.to_tensor(wire)
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
            return t.numpy().astype(wire.dtype, copy=False)

    def allgather(self, x: np.ndarray) -> List[np.ndarray]:
        """Every rank's array, in rank order; lengths may differ (gathered padded to the longest, then cut)."""
        wire = self._wire(x)
        if self._world() == 1:
            return [wire]
        import paddle
        import paddle.distributed as dist
        with _eager():
            sizes: List[Any] = []
            dist.all_gather(sizes, paddle.to_tensor(np.array([wire.size], np.int64)), group=self.group)
            lengths = [int(s.numpy()[0]) for s in sizes]
            padded = np.zeros(max(max(lengths), 1), wire.dtype)
            padded[: wire.size] = wire
            parts: List[Any] = []
            dist.all_gather(parts, paddle.to_tensor(padded), group=self.group)
            return [p.numpy()[:n].astype(wire.dtype, copy=False) for p, n in zip(parts, lengths)]
