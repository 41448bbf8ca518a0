"""The density plot reads well for real networks: the prunable weights by default (all on request), at most one
screen high, the title and every label inside the image, labels that do not overlap."""
from __future__ import annotations

import struct

import paddle
import pytest

from paddleslim_dygraph import UnstructuredPruner
from paddleslim_tools.report import plots, sparsity_report  # project modules: a broken import fails, never skips

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def mobilenet_report():
    paddle.seed(0)
    model = paddle.vision.models.mobilenet_v1(scale=0.25)
    pruner = UnstructuredPruner(model, "ratio", ratio=0.75)
    pruner.step()
    return sparsity_report(model, pruner=pruner), sparsity_report(model)


def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def _inside_and_apart(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    ax = fig.axes[0]
    texts = [ax.title] + [t for t in ax.get_yticklabels() if t.get_text()] + [ax.xaxis.label]
    for t in texts:
        e = t.get_window_extent(renderer)
        assert e.x0 >= box.x0 - 1 and e.x1 <= box.x1 + 1 and e.y0 >= box.y0 - 1 and e.y1 <= box.y1 + 1, t.get_text()
    labels = sorted((t.get_window_extent(renderer) for t in ax.get_yticklabels() if t.get_text()),
                    key=lambda e: e.y0)
    for a, b in zip(labels, labels[1:]):
        assert a.y1 <= b.y0 + 0.5, "tick labels overlap"
    return [t.get_text() for t in ax.get_yticklabels() if t.get_text()]


def test_prunable_weights_by_default_all_on_request(mobilenet_report, tmp_path):
    rep, _ = mobilenet_report
    prunable = [r for r in rep.layers if r.prunable]
    assert len(rep.layers) == 137 and len(prunable) == 28
    assert plots.density_rows(rep) == prunable
    assert plots.density_rows(rep, "all") == rep.layers
    fig = plots.density_figure(rep)
    labels = _inside_and_apart(fig)
    assert len(labels) == 28 and labels[0].startswith("conv1.0.weight") and labels[-1].startswith("fc.weight")
    assert "28 prunable weights (of 137)" in fig.axes[0].get_title()
    w, h = _png_size(plots.plot_density(rep, tmp_path / "d.png"))
    assert h <= 960 and w <= 1000


def test_every_weight_still_fits_one_screen(mobilenet_report, tmp_path):
    rep, unknown = mobilenet_report
    fig = plots.density_figure(rep, "all")
    labels = _inside_and_apart(fig)
    assert 0 < len(labels) <= 60
    w, h = _png_size(plots.plot_density(rep, tmp_path / "a.png", weights="all"))
    assert h <= 960 and w <= 1000
    # no pruner, no masks: the >= 2-D weights stand in for the prunable ones
    assert plots.density_rows(unknown) == [r for r in unknown.layers if len(r.shape) >= 2]
    with pytest.raises(ValueError, match="weights must be one of"):
        plots.density_rows(rep, "some")


def test_write_passes_the_choice_on(mobilenet_report, tmp_path):
    rep, _ = mobilenet_report
    small = rep.write(tmp_path / "p", plots=True)["density_png"]
    big = rep.write(tmp_path / "a", plots=True, density_weights="all")["density_png"]
    assert _png_size(small)[1] < _png_size(big)[1] == 960
