"""Run by test_distributed_selection.py under `paddle.distributed.launch --nproc_per_node 2` (CPU, gloo):
each rank owns every other layer and computes thresholds and masks through paddleslim_static.collectives."""
import sys

import numpy as np

CASES = {"ratio": (0.7, False, (1, 1)), "local": (0.55, True, (1, 1)), "block": (0.6, False, (4, 4)),
         "block_local": (0.5, True, (2, 2)), "static": (0.3, False, (2, 1))}


def layers():
    """The model's prunable weights (deterministic): big enough for the streaming path, with ties and zeros."""
    rng = np.random.default_rng(2024)
    shapes = [(400, 300), (64, 32, 3, 3), (257, 129), (128, 512), (30, 7), (96, 96, 1, 1)]
    ws = {f"layer{i}.w": rng.standard_normal(s).astype(np.float32) for i, s in enumerate(shapes)}
    ws["layer2.w"][:, :50] = 0.0
    ws["layer3.w"] = (np.round(ws["layer3.w"] * 4) / 4).astype(np.float32)
    return ws


def main(out_prefix: str) -> None:
    import paddle
    import paddle.distributed as dist
    from paddleslim_static.collectives import PaddleCollectives
    from paddleslim_static.core import NonFiniteScoreError, engine

    dist.init_parallel_env()
    rank = dist.get_rank()
    coll = PaddleCollectives()
    mine = {n: w for i, (n, w) in enumerate(layers().items()) if i % 2 == rank}
    out = {}
    for case, (ratio, local, block) in CASES.items():
        if case == "static":
            paddle.enable_static()  # a caller in static mode: the collectives still run eagerly
        for _ in range(2):  # cold, then warm from the cached threshold
            g, per = engine.ratio_thresholds(mine, ratio, local, block, collectives=coll)
        if case == "static":
            paddle.disable_static()
        masks = {n: np.empty(w.shape, bool) for n, w in mine.items()}
        engine.fill_masks(mine, masks, g, per, block)
        if g is not None:
            out[f"{case}/threshold"] = np.array(g)
        out.update({f"{case}/mask/{n}": m for n, m in masks.items()})
        out.update({f"{case}/t/{n}": np.array(t) for n, t in per.items()})
    # the dygraph pruner on this rank's half of a model of Linear layers (the 2-D weights), one global ratio
    from paddleslim_dygraph import UnstructuredPruner

    flat = {n: w for n, w in mine.items() if w.ndim == 2}
    model = paddle.nn.LayerList()
    for n, w in flat.items():
        layer = paddle.nn.Linear(*w.shape)
        layer.weight.set_value(w)
        model.append(layer)
    pruner = UnstructuredPruner(model, "ratio", ratio=0.65, collectives=coll)
    pruner.step()
    out["pruner/threshold"] = np.array(np.float32(pruner.threshold))
    for (n, _), layer in zip(flat.items(), model):
        out[f"pruner/mask/{n}"] = pruner.masks[layer.weight.name].numpy()
    bad = {n: w.copy() for n, w in mine.items()}
    if rank == 1:
        next(iter(bad.values()))[3, 0] = np.nan
    try:
        engine.ratio_thresholds(bad, 0.5, False, (1, 1), collectives=coll)
        out["nan/error"] = np.array("no error")
    except NonFiniteScoreError as e:
        out["nan/error"] = np.array(str(e))
    np.savez(f"{out_prefix}.rank{rank}.npz", **out)


if __name__ == "__main__":
    main(sys.argv[1])
