"""Quality study: held-out accuracy of the demo CNN, dense vs one-shot vs GMP at 50..98% sparsity.

Not a timed test. For every seed: train the demo CNN densely (``--epochs`` epochs, Momentum 0.9), then from
that same dense model, for every sparsity s:

* ``oneshot``     - ``UnstructuredPruner(model, 'ratio', ratio=s).step()`` once, evaluated as is;
* ``oneshot_ft``  - the same masks kept fixed (the pruner's forward hook re-applies them), fine-tuned for
  ``2 * epochs`` epochs: the same training budget GMP gets;
* ``dense_long``  - the dense model trained ``2 * epochs`` more epochs (the baseline with the same budget);
* ``gmp``         - ``GMPUnstructuredPruner(ratio=s)`` with the demo's configs (prune over ``epochs`` epochs,
  then fine-tune ``epochs`` epochs at s), ``step()`` after every optimizer step.

The static-graph path (``paddleslim_static.GMPUnstructuredPruner`` on a ``Program`` of the same network,
dense training in the same program) runs on one setting (``--static-sparsity``, default 0.9) for every seed.

    python benchmarks/quality_study.py                       # digits, 5 seeds
    python benchmarks/quality_study.py --mnist-dir ~/mnist   # plus MNIST from local IDX files
    python benchmarks/quality_study.py --benchmark patterns --out docs/quality_patterns   # the harder one

``--benchmark patterns`` is the harder benchmark, where capacity matters: procedurally generated 12x12 noisy
textures (6 classes: stripes in four orientations, a checkerboard, rings; random frequency, phase, amplitude,
Gaussian noise sd 0.8; generated here, nothing is downloaded) and a ~6K-weight CNN whose dense accuracy is far
from 100%. For every seed it compares the sparsity allocations (``sparsity_allocation='global'``, ``'uniform'``,
``'erk'``) under GMP and one-shot + fine-tune (same budget) at 90/95/98%, all from the same dense weights, and
reports paired differences to the dense model.

Writes ``<out>.json`` (every run) and ``<out>.png`` (one plot), and prints a markdown table.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import paddle

import paddleslim_static  # noqa: F401  (imported up front: every module of the package from one version)
from paddleslim_dygraph import GMPUnstructuredPruner, UnstructuredPruner
from paddleslim_tools.demo import Dataset, accuracy, build_model, gmp_configs, load_digits, load_mnist, train_epoch

SPARSITIES = (0.5, 0.75, 0.9, 0.95, 0.98)
HARD_SPARSITIES = (0.9, 0.95, 0.98)
ALLOCATIONS = ("global", "uniform", "erk")
PATTERN_CLASSES = 6
_log = logging.getLogger("quality_study")


def _prunable_sparsity(model: paddle.nn.Layer, names) -> float:
    arrays = [p.numpy() for p in model.parameters() if p.name in set(names)]
    return 1.0 - sum(int(np.count_nonzero(a)) for a in arrays) / sum(a.size for a in arrays)


def _opt(model, lr):
    return paddle.optimizer.Momentum(learning_rate=lr, momentum=0.9, parameters=model.parameters())


def dygraph_seed(data: Dataset, seed: int, epochs: int, batch: int, lr: float, sparsities) -> Dict[str, object]:
    """Dense, then the three arms at every sparsity, all from the same dense weights."""
    paddle.seed(seed)
    rng = np.random.default_rng(seed)
    loss_fn = paddle.nn.CrossEntropyLoss()
    with paddle.utils.unique_name.guard():
        model = build_model(data.image_shape)
    opt = _opt(model, lr)
    for _ in range(epochs):
        train_epoch(model, opt, loss_fn, data, batch, rng)
    dense_state = copy.deepcopy(model.state_dict())
    out: Dict[str, object] = {"seed": seed, "dense": accuracy(model, data.x_test, data.y_test)}
    paddle.seed(seed + 1000)
    long_rng = np.random.default_rng(seed + 1000)
    for _ in range(2 * epochs):  # the dense baseline with the pruning arms' total budget
        train_epoch(model, opt, loss_fn, data, batch, long_rng)
    out["dense_long"] = accuracy(model, data.x_test, data.y_test)
    iters = -(-len(data.y_train) // batch)
    for s in sparsities:
        row = {}
        for arm in ("oneshot", "gmp"):
            paddle.seed(seed + 1000)
            arm_rng = np.random.default_rng(seed + 1000)
            with paddle.utils.unique_name.guard():
                net = build_model(data.image_shape)
            net.set_state_dict(dense_state)
            opt = _opt(net, lr)
            if arm == "oneshot":
                pruner = UnstructuredPruner(net, "ratio", ratio=s)
                pruner.step()
                row["oneshot"] = accuracy(net, data.x_test, data.y_test)
                for _ in range(2 * epochs):  # masks fixed: no step(); the forward hook keeps pruned weights 0
                    train_epoch(net, opt, loss_fn, data, batch, arm_rng)
                pruner.update_params()
                row["oneshot_ft"] = accuracy(net, data.x_test, data.y_test)
                row["oneshot_ft_sparsity"] = _prunable_sparsity(net, pruner.masks)
            else:
                configs = gmp_configs(iters, epochs, epochs)
                pruner = GMPUnstructuredPruner(net, ratio=s, configs=configs)
                for _ in range(2 * epochs):
                    train_epoch(net, opt, loss_fn, data, batch, arm_rng, pruner)
                pruner.update_params()
                row["gmp"] = accuracy(net, data.x_test, data.y_test)
                row["gmp_sparsity"] = _prunable_sparsity(net, pruner.masks)
            pruner.finalize()
        out[str(s)] = row
    return out


def static_seed(data: Dataset, seed: int, epochs: int, batch: int, lr: float, sparsity: float) -> Dict[str, float]:
    """Dense training then GMP to ``sparsity`` in one static Program (PIR), same schedule as the dygraph arm."""
    paddle.enable_static()
    try:
        main, startup = paddle.static.Program(), paddle.static.Program()
        main.random_seed = startup.random_seed = seed
        h, w = data.image_shape
        with paddle.static.program_guard(main, startup), paddle.utils.unique_name.guard():
            x = paddle.static.data("x", [None, 1, h, w], "float32")
            y = paddle.static.data("y", [None], "int64")
            loss = paddle.nn.functional.cross_entropy(build_model(data.image_shape)(x), y)
            paddle.optimizer.Momentum(learning_rate=lr, momentum=0.9).minimize(loss)
        # PIR has no clone(for_test=True): the eval program builds the same network (same parameter names,
        # so it reads the same scope variables) with BatchNorm in eval mode.
        test_prog = paddle.static.Program()
        with paddle.static.program_guard(test_prog, paddle.static.Program()), paddle.utils.unique_name.guard():
            net = build_model(data.image_shape)
            net.eval()
            logits = net(paddle.static.data("x", [None, 1, h, w], "float32"))
        scope = paddle.static.Scope()
        exe = paddle.static.Executor(paddle.CPUPlace())
        rng = np.random.default_rng(seed)

        def run_epochs(n, pruner=None):
            for _ in range(n):
                for idx in _order(len(data.y_train), batch, rng):
                    exe.run(main, feed={"x": data.x_train[idx], "y": data.y_train[idx]}, fetch_list=[loss])
                    if pruner is not None:
                        pruner.step()

        def acc():
            correct = 0
            for i in range(0, len(data.y_test), 1024):
                (lg,) = exe.run(test_prog, feed={"x": data.x_test[i:i + 1024]},
                                fetch_list=[logits])
                correct += int((np.asarray(lg).argmax(1) == data.y_test[i:i + 1024]).sum())
            return correct / len(data.y_test)

        with paddle.static.scope_guard(scope):
            exe.run(startup)
            run_epochs(epochs)
            dense = acc()
            iters = -(-len(data.y_train) // batch)
            pruner = paddleslim_static.GMPUnstructuredPruner(
                main, ratio=sparsity, scope=scope, configs=gmp_configs(iters, epochs, epochs),
                startup_program=startup)
            run_epochs(2 * epochs, pruner)
            return {"seed": seed, "dense": dense, "gmp": acc(),
                    "density_all": paddleslim_static.density(test_prog, scope)}
    finally:
        paddle.disable_static()


def _order(n, batch, rng):
    order = rng.permutation(n)
    return [order[i:i + batch] for i in range(0, n, batch)]


def summarize(runs: List[Dict[str, object]], sparsities) -> Dict[str, Dict[str, List[float]]]:
    """arm -> sparsity -> [mean, std, min, max] over seeds."""
    def stats(vals):
        v = np.asarray(vals, dtype=float)
        return [float(v.mean()), float(v.std(ddof=1) if len(v) > 1 else 0.0), float(v.min()), float(v.max())]

    table: Dict[str, Dict[str, List[float]]] = {"dense": {"0": stats([r["dense"] for r in runs])}}
    if runs and "dense_long" in runs[0]:
        table["dense_long"] = {"0": stats([r["dense_long"] for r in runs])}
    for arm in ("oneshot", "oneshot_ft", "gmp"):
        table[arm] = {str(s): stats([r[str(s)][arm] for r in runs]) for s in sparsities}
    return table


def markdown(table, sparsities, static: Optional[Dict[str, object]] = None) -> str:
    dense, long = table["dense"]["0"], table["dense_long"]["0"]
    lines = ["| method | " + " | ".join(f"{s:.0%}" for s in sparsities) + " |",
             "|---|" + "---|" * len(sparsities)]
    lines.append(f"| dense, E epochs | {dense[0]:.2%} ± {dense[1]:.2%} (all columns) |" + " |" * (len(sparsities) - 1))
    lines.append(f"| dense, 3E epochs (same budget) | {long[0]:.2%} ± {long[1]:.2%} (all columns) |"
                 + " |" * (len(sparsities) - 1))
    names = {"oneshot": "one-shot (no fine-tune)", "oneshot_ft": "one-shot + fine-tune", "gmp": "GMP"}
    for arm in ("oneshot", "oneshot_ft", "gmp"):
        cells = [f"{table[arm][str(s)][0]:.2%} ± {table[arm][str(s)][1]:.2%}" for s in sparsities]
        lines.append(f"| {names[arm]} | " + " | ".join(cells) + " |")
    gaps = [f"{(table['gmp'][str(s)][0] - long[0]) * 100:+.2f}" for s in sparsities]
    lines.append("| GMP - dense same budget (points) | " + " | ".join(gaps) + " |")
    gaps = [f"{(table['gmp'][str(s)][0] - table['oneshot_ft'][str(s)][0]) * 100:+.2f}" for s in sparsities]
    lines.append("| GMP - one-shot+FT (points) | " + " | ".join(gaps) + " |")
    if static:
        lines.append("")
        lines.append(f"static graph, GMP {static['sparsity']:.0%}: dense {static['dense'][0]:.2%} ± "
                     f"{static['dense'][1]:.2%}, GMP {static['gmp'][0]:.2%} ± {static['gmp'][1]:.2%} "
                     f"(dygraph GMP {table['gmp'][str(static['sparsity'])][0]:.2%} ± "
                     f"{table['gmp'][str(static['sparsity'])][1]:.2%})")
    return "\n".join(lines)


def plot(results: Dict[str, Dict[str, object]], path: Path) -> None:
    """Per dataset: all arms on a 0-100% axis (left) and the close ones zoomed (right)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(12, 4.3 * len(results)), squeeze=False)
    styles = {"oneshot": ("one-shot, no fine-tune", "tab:red", "s"),
              "oneshot_ft": ("one-shot + fine-tune (same budget)", "tab:orange", "^"),
              "gmp": ("GMP", "tab:blue", "o")}
    for row, (name, res) in zip(axes, results.items()):
        table, sp = res["table"], res["sparsities"]
        xs = np.arange(len(sp))
        d = table["dense_long"]["0"]
        for k, ax in enumerate(row):
            ax.axhspan((d[0] - d[1]) * 100, (d[0] + d[1]) * 100, color="0.85",
                       label=f"dense, same budget: {d[0]:.2%} ± {d[1]:.2%}")
            ax.axhline(d[0] * 100, color="0.4", lw=1)
            for arm, (label, color, marker) in styles.items():
                if k == 1 and arm == "oneshot":
                    continue
                m = np.array([table[arm][str(s)][0] for s in sp]) * 100
                e = np.array([table[arm][str(s)][1] for s in sp]) * 100
                ax.errorbar(xs + (0.04 if arm == "gmp" else 0), m, yerr=e, label=label, color=color,
                            marker=marker, capsize=3)
            ax.set_xticks(xs, [f"{s:.0%}" for s in sp])
            ax.set_xlabel("sparsity of the prunable weights")
            ax.set_ylabel("held-out accuracy (%)")
            ax.grid(alpha=0.3)
            if k == 0:
                ax.set_ylim(0, 101)
                ax.set_title(f"{name}: mean ± sd over {res['seeds']} seeds")
                ax.legend(loc="lower left", fontsize=8)
            else:
                vals = [table[a][str(s)][0] * 100 for a in ("oneshot_ft", "gmp") for s in sp] + [d[0] * 100]
                ax.set_ylim(min(vals) - 2, min(100.2, max(vals) + 1.5))
                ax.set_title(f"{name}: zoom (dense, one-shot + fine-tune, GMP)")
                ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- the harder benchmark: noisy procedural textures, a small CNN, sparsity allocations --------------------------
def make_patterns(n: int, rng: np.random.Generator, size: int = 12, noise: float = 0.8) -> tuple:
    """``n`` noisy 1 x size x size textures and their labels (0-5: horizontal, vertical, two diagonal stripes,
    checkerboard, rings), random frequency, phase, amplitude and ring centre, plus Gaussian noise of sd ``noise``."""
    y = rng.integers(0, PATTERN_CLASSES, n)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    x = np.empty((n, 1, size, size), np.float32)
    for i in range(n):
        f, ph, c = rng.uniform(0.5, 1.2), rng.uniform(0, 2 * np.pi), y[i]
        if c == 0:
            img = np.sin(f * yy + ph)
        elif c == 1:
            img = np.sin(f * xx + ph)
        elif c == 2:
            img = np.sin(f * (xx + yy) / 1.41 + ph)
        elif c == 3:
            img = np.sin(f * (xx - yy) / 1.41 + ph)
        elif c == 4:
            img = np.sin(f * xx + ph) * np.sin(f * yy + ph)
        else:
            cy, cx = rng.uniform(3, size - 3, 2)
            img = np.sin(f * 1.5 * np.hypot(yy - cy, xx - cx) + ph)
        x[i, 0] = rng.uniform(0.3, 1.0) * img + noise * rng.standard_normal((size, size))
    return x, y.astype(np.int64)


def load_patterns(n_train: int = 3000, n_test: int = 1000, seed: int = 12345) -> Dataset:
    """The patterns data set: fixed (one generator seed), the same for every training seed."""
    rng = np.random.default_rng(seed)
    x_train, y_train = make_patterns(n_train, rng)
    x_test, y_test = make_patterns(n_test, rng)
    return Dataset("patterns", x_train, y_train, x_test, y_test)


def patterns_model() -> paddle.nn.Layer:
    """conv3x3(8)-ReLU-maxpool, conv3x3(16)-ReLU-maxpool, FC(32)-ReLU, FC(6): 6,024 prunable weights, of which
    the first convolution holds 72 (the layer global magnitude pruning starves first)."""
    return paddle.nn.Sequential(
        paddle.nn.Conv2D(1, 8, 3, padding=1), paddle.nn.ReLU(), paddle.nn.MaxPool2D(2),
        paddle.nn.Conv2D(8, 16, 3, padding=1), paddle.nn.ReLU(), paddle.nn.MaxPool2D(2), paddle.nn.Flatten(),
        paddle.nn.Linear(16 * 9, 32), paddle.nn.ReLU(), paddle.nn.Linear(32, PATTERN_CLASSES))


def _layer_density(net: paddle.nn.Layer, names) -> List[float]:
    return [float(np.count_nonzero(p.numpy())) / p.size for p in net.parameters() if p.name in set(names)]


def allocation_seed(data: Dataset, seed: int, epochs: int, batch: int, lr: float, sparsities,
                    allocations=ALLOCATIONS) -> Dict[str, object]:
    """Dense (E epochs) and dense with the arms' budget (3E); then, from the same dense weights, for every sparsity
    and allocation: one-shot (+ 2E epochs of fine-tuning with fixed masks) and GMP (2E epochs)."""
    paddle.seed(seed)
    rng = np.random.default_rng(seed)
    loss_fn = paddle.nn.CrossEntropyLoss()
    with paddle.utils.unique_name.guard():
        model = patterns_model()
    opt = _opt(model, lr)
    for _ in range(epochs):
        train_epoch(model, opt, loss_fn, data, batch, rng)
    dense_state = copy.deepcopy(model.state_dict())
    out: Dict[str, object] = {"seed": seed, "dense": accuracy(model, data.x_test, data.y_test)}
    long_rng = np.random.default_rng(seed + 1000)
    for _ in range(2 * epochs):
        train_epoch(model, opt, loss_fn, data, batch, long_rng)
    out["dense_long"] = accuracy(model, data.x_test, data.y_test)
    iters = -(-len(data.y_train) // batch)
    for s in sparsities:
        for alloc in allocations:
            row: Dict[str, object] = {}
            for arm in ("oneshot", "gmp"):
                paddle.seed(seed + 1000)
                arm_rng = np.random.default_rng(seed + 1000)
                with paddle.utils.unique_name.guard():
                    net = patterns_model()
                net.set_state_dict(dense_state)
                opt = _opt(net, lr)
                if arm == "oneshot":
                    pruner = UnstructuredPruner(net, "ratio", ratio=s, sparsity_allocation=alloc)
                    pruner.step()
                    row["oneshot"] = accuracy(net, data.x_test, data.y_test)
                    row["oneshot_protected"] = list(pruner.protected_params)
                    for _ in range(2 * epochs):
                        train_epoch(net, opt, loss_fn, data, batch, arm_rng)
                    pruner.update_params()
                    row["oneshot_ft"] = accuracy(net, data.x_test, data.y_test)
                    row["oneshot_ft_layers"] = _layer_density(net, pruner.prunable_params)
                else:
                    pruner = GMPUnstructuredPruner(net, ratio=s, configs=gmp_configs(iters, epochs, epochs),
                                                   sparsity_allocation=alloc)
                    for _ in range(2 * epochs):
                        train_epoch(net, opt, loss_fn, data, batch, arm_rng, pruner)
                    pruner.update_params()
                    row["gmp"] = accuracy(net, data.x_test, data.y_test)
                    row["gmp_layers"] = _layer_density(net, pruner.prunable_params)
                    row["gmp_protected"] = list(pruner.protected_params)
                    row["gmp_sparsity"] = _prunable_sparsity(net, pruner.masks)
                pruner.finalize()
            out[f"{s}/{alloc}"] = row
    return out


def _paired(runs, key, arm, base) -> List[float]:
    """[mean, sd, min, max] over seeds of (arm at key) - base (points), paired by seed."""
    d = np.array([(r[key][arm] - (r[base] if isinstance(base, str) else base(r))) * 100 for r in runs])
    return [float(d.mean()), float(d.std(ddof=1) if len(d) > 1 else 0.0), float(d.min()), float(d.max())]


def allocation_tables(runs, sparsities, allocations=ALLOCATIONS) -> Dict[str, object]:
    """Accuracy (mean, sd, min, max over seeds), paired differences to dense (same budget) and to global."""
    def stats(vals):
        v = np.asarray(vals, float) * 100
        return [float(v.mean()), float(v.std(ddof=1) if len(v) > 1 else 0.0), float(v.min()), float(v.max())]
    t: Dict[str, object] = {"dense": stats([r["dense"] for r in runs]),
                            "dense_long": stats([r["dense_long"] for r in runs]), "acc": {}, "vs_dense": {},
                            "vs_global": {}, "chance_runs": {}}
    for arm in ("oneshot", "oneshot_ft", "gmp"):
        for s in sparsities:
            for a in allocations:
                key, name = f"{s}/{a}", f"{arm}/{s}/{a}"
                t["acc"][name] = stats([r[key][arm] for r in runs])
                t["vs_dense"][name] = _paired(runs, key, arm, "dense_long")
                t["chance_runs"][name] = sum(r[key][arm] < 1.5 / PATTERN_CLASSES for r in runs)
                if a != "global":
                    t["vs_global"][name] = _paired(runs, key, arm, lambda r, s=s: r[f"{s}/global"][arm])
    t["gmp_vs_oneshot_ft"] = {f"{s}/{a}": _paired(runs, f"{s}/{a}", "gmp", lambda r, k=f"{s}/{a}": r[k]["oneshot_ft"])
                              for s in sparsities for a in allocations}
    return t


def allocation_markdown(t, sparsities, allocations=ALLOCATIONS) -> str:
    d, dl = t["dense"], t["dense_long"]
    names = {"gmp": "GMP", "oneshot_ft": "one-shot + fine-tune", "oneshot": "one-shot, no fine-tune"}
    paired = "{:+.2f} ± {:.2f} [{:+.1f}, {:+.1f}]"
    cols = " | ".join(f"{s:.0%}" for s in sparsities) + " |"

    def table(title, key, cell, arms, allocs, label="{a}"):
        """A titled table: one row per (arm, allocation), one column per sparsity."""
        out = ["", title, "", "| method | allocation | " + cols, "|---|---|" + "---|" * len(sparsities)]
        for arm in arms:
            for a in allocs:
                cells = [cell.format(*t[key][f"{arm}/{s}/{a}"]) if cell else str(t[key][f"{arm}/{s}/{a}"])
                         for s in sparsities]
                out.append(f"| {names[arm]} | {label.format(a=a)} | " + " | ".join(cells) + " |")
        return out

    lines = [f"dense, E epochs: {d[0]:.2f} ± {d[1]:.2f}; "
             f"dense, 3E epochs (the arms' budget): {dl[0]:.2f} ± {dl[1]:.2f}"]
    lines += table("accuracy (%, mean ± sd over seeds):", "acc", "{:.2f} ± {:.2f}", ("gmp", "oneshot_ft", "oneshot"),
                   allocations)
    lines += table("paired difference to dense with the same budget (points, mean ± sd [min, max] over seeds):",
                   "vs_dense", paired, ("gmp", "oneshot_ft"), allocations)
    lines += table("paired difference to global (points, mean ± sd [min, max] over seeds):", "vs_global", paired,
                   ("gmp", "oneshot_ft"), allocations[1:], "{a} − global")
    lines += ["", "paired difference GMP − one-shot + fine-tune, same budget (points):", "",
              "| allocation | " + cols, "|---|" + "---|" * len(sparsities)]
    for a in allocations:
        lines.append(f"| {a} | " + " | ".join(paired.format(*t["gmp_vs_oneshot_ft"][f"{s}/{a}"])
                                              for s in sparsities) + " |")
    lines += table("runs at chance (< 1.5 x 1/6 accuracy), of all seeds:", "chance_runs", None,
                   ("gmp", "oneshot_ft"), allocations)
    return "\n".join(lines)


def layer_markdown(runs, sparsities, allocations=ALLOCATIONS) -> str:
    """Final density per layer (GMP, mean over seeds) and how many runs the collapse guard protected a layer in."""
    lines = ["| sparsity | allocation | conv1 (72) | conv2 (1,152) | fc1 (4,608) | fc2 (192) | runs with a protected "
             "layer (GMP / one-shot) |", "|---|---|---|---|---|---|---|"]
    for s in sparsities:
        for a in allocations:
            k = f"{s}/{a}"
            d = np.mean([r[k]["gmp_layers"] for r in runs], axis=0) * 100
            prot = (sum(bool(r[k]["gmp_protected"]) for r in runs), sum(bool(r[k]["oneshot_protected"]) for r in runs))
            lines.append(f"| {s:.0%} | {a} | " + " | ".join(f"{v:.2f}%" for v in d) + f" | {prot[0]} / {prot[1]} |")
    return "\n".join(lines)


def allocation_plot(t, sparsities, seeds: int, path: Path, allocations=ALLOCATIONS) -> None:
    """Left: accuracy vs sparsity per allocation (GMP solid, one-shot + fine-tune dashed); right: paired
    difference to dense with the same budget."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = {"global": "tab:blue", "uniform": "tab:orange", "erk": "tab:green"}
    xs = np.arange(len(sparsities))
    dl = t["dense_long"]
    axes[0].axhspan(dl[0] - dl[1], dl[0] + dl[1], color="0.85", label=f"dense, same budget: {dl[0]:.1f} ± {dl[1]:.1f}")
    axes[0].axhline(100 / PATTERN_CLASSES, color="k", ls=":", lw=1, label="chance")
    axes[1].axhline(0, color="0.4", lw=1)
    for a in allocations:
        for arm, ls, off in (("gmp", "-", -0.04), ("oneshot_ft", "--", 0.04)):
            label = f"{a}, {'GMP' if arm == 'gmp' else 'one-shot + FT'}"
            acc = np.array([t["acc"][f"{arm}/{s}/{a}"][:2] for s in sparsities])
            axes[0].errorbar(xs + off, acc[:, 0], yerr=acc[:, 1], color=colors[a], ls=ls, marker="o", capsize=3,
                             label=label)
            dif = np.array([t["vs_dense"][f"{arm}/{s}/{a}"][:2] for s in sparsities])
            axes[1].errorbar(xs + off, dif[:, 0], yerr=dif[:, 1], color=colors[a], ls=ls, marker="o", capsize=3,
                             label=label)
    for ax, title, ylabel in ((axes[0], "held-out accuracy", "accuracy (%)"),
                              (axes[1], "paired difference to dense (same budget)", "points")):
        ax.set_xticks(xs, [f"{s:.0%}" for s in sparsities])
        ax.set_xlabel("sparsity of the prunable weights")
        ax.set_ylabel(ylabel)
        ax.set_title(f"patterns, 6K-weight CNN: {title}, mean ± sd over {seeds} seeds", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def patterns_main(args) -> int:
    data = load_patterns()
    t0 = time.perf_counter()
    partial = args.out.with_suffix(".partial.json")
    runs: List[Dict[str, object]] = []
    if args.runs_from is not None:
        runs = json.loads(args.runs_from.read_text())["runs"][:args.seeds]
    for seed in range(len(runs), args.seeds):
        runs.append(allocation_seed(data, seed, args.epochs, args.batch_size, args.lr, HARD_SPARSITIES))
        partial.write_text(json.dumps({"dataset": "patterns", "runs": runs}, indent=1))
        r = runs[-1]
        print(f"[{time.perf_counter() - t0:7.1f} s] seed {seed}: dense {r['dense']:.3f} long {r['dense_long']:.3f} "
              + " ".join(f"{k}: gmp {v['gmp']:.3f} os+ft {v['oneshot_ft']:.3f}"
                         for k, v in r.items() if isinstance(v, dict)), flush=True)
    t = allocation_tables(runs, HARD_SPARSITIES)
    seconds = time.perf_counter() - t0
    if args.runs_from is not None:  # the time of the run that trained them
        seconds = json.loads(args.runs_from.read_text()).get("seconds", seconds)
    res = {"runs": runs, "table": t, "seeds": args.seeds, "epochs": args.epochs, "batch_size": args.batch_size,
           "lr": args.lr, "sparsities": list(HARD_SPARSITIES), "allocations": list(ALLOCATIONS),
           "seconds": seconds}
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    partial.unlink(missing_ok=True)
    allocation_plot(t, HARD_SPARSITIES, args.seeds, args.out.with_suffix(".png"))
    print(f"\n## patterns ({args.seeds} seeds, {args.epochs} dense epochs, batch {args.batch_size}, lr {args.lr})\n")
    print(allocation_markdown(t, HARD_SPARSITIES))
    print("\nfinal density per layer (GMP, mean over seeds):\n")
    print(layer_markdown(runs, HARD_SPARSITIES))
    print(f"\nwrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')} in {res['seconds']:.0f} s",
          flush=True)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--benchmark", choices=("digits", "patterns"), default="digits",
                   help="digits: the demo CNN on the bundled digits; patterns: the harder allocation study")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=None, help="dense epochs E (default: digits 12, patterns 10)")
    p.add_argument("--mnist-epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=None, help="default: digits 32, patterns 64")
    p.add_argument("--lr", type=float, default=None, help="default: digits 0.05, patterns 0.02")
    p.add_argument("--mnist-dir", type=Path, default=None)
    p.add_argument("--static-sparsity", type=float, default=0.9)
    p.add_argument("--no-static", action="store_true")
    p.add_argument("--runs-from", type=Path, default=None,
                   help="reuse the dygraph runs of a (partial) result JSON of the digits set; run the rest")
    p.add_argument("--out", type=Path, default=Path("docs/quality_digits"), help="output stem (.json, .png)")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", message="When training, we now always track global mean and variance")
    paddle.set_device("cpu")
    patterns = args.benchmark == "patterns"
    args.epochs = args.epochs if args.epochs is not None else (10 if patterns else 12)
    args.batch_size = args.batch_size if args.batch_size is not None else (64 if patterns else 32)
    args.lr = args.lr if args.lr is not None else (0.02 if patterns else 0.05)
    if patterns:
        return patterns_main(args)
    datasets = [("digits", load_digits(), args.epochs, args.batch_size)]
    if args.mnist_dir:
        datasets.append(("mnist", load_mnist(args.mnist_dir), args.mnist_epochs, 128))
    results: Dict[str, Dict[str, object]] = {}
    t0 = time.perf_counter()
    partial = args.out.with_suffix(".partial.json")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name, data, epochs, batch in datasets:
        runs = []
        if args.runs_from is not None and name == "digits":
            saved = json.loads(args.runs_from.read_text())
            runs = saved["runs"] if "runs" in saved else saved["results"]["digits"]["runs"]
            runs = runs[:args.seeds]
        for seed in range(len(runs), args.seeds):
            runs.append(dygraph_seed(data, seed, epochs, batch, args.lr, SPARSITIES))
            partial.write_text(json.dumps({"dataset": name, "runs": runs}, indent=1))  # survives a later crash
            print(f"[{time.perf_counter() - t0:7.1f} s] {name} seed {seed}: dense {runs[-1]['dense']:.4f} "
                  + " ".join(f"{s}: gmp {runs[-1][str(s)]['gmp']:.4f} os+ft {runs[-1][str(s)]['oneshot_ft']:.4f}"
                             for s in SPARSITIES), flush=True)
        res: Dict[str, object] = {"runs": runs, "seeds": args.seeds, "epochs": epochs, "batch_size": batch,
                                  "lr": args.lr, "sparsities": list(SPARSITIES)}
        res["table"] = summarize(runs, SPARSITIES)
        if not args.no_static and name == "digits":
            st = [static_seed(data, seed, epochs, batch, args.lr, args.static_sparsity) for seed in range(args.seeds)]
            print(f"[{time.perf_counter() - t0:7.1f} s] static: {st}", flush=True)
            res["static"] = {"sparsity": args.static_sparsity, "runs": st,
                             "dense": summarize([{"dense": r["dense"]} for r in st], [])["dense"]["0"],
                             "gmp": summarize([{"dense": r["gmp"]} for r in st], [])["dense"]["0"]}
        results[name] = res
        print(f"\n## {name} ({args.seeds} seeds, {epochs} dense epochs, batch {batch})\n")
        print(markdown(res["table"], SPARSITIES, res.get("static")), flush=True)
    res_all = {"results": results, "seconds": time.perf_counter() - t0}
    args.out.with_suffix(".json").write_text(json.dumps(res_all, indent=1))
    partial.unlink(missing_ok=True)
    plot(results, args.out.with_suffix(".png"))
    print(f"\nwrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')} "
          f"in {res_all['seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
