"""Training pictures: loss and metric curves per epoch, and a 2-D classifier's decision boundary.

matplotlib is optional (`pip install 'graphc[plot]'`) and imported only here, only
when asked. The numbers are always written as CSV (history.csv); without matplotlib
the decision boundary's grid is written as CSV too, and the caller says how to
install it.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from .errors import SpecError
from .model import Model, Runner
from .outfiles import atomic_write, write_text, writable_folder

INSTALL = "pip install 'graphc[plot]'  (or: pip install matplotlib)"
FILES = ("history.csv", "curves.png", "decision_boundary.png", "decision_boundary.csv")
GRID = 150          # points per side of the decision-boundary grid
CHUNK = 2048        # grid points per forward pass (one compiled plan)


def _matplotlib():
    """matplotlib's Figure and Agg canvas, or None when it is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure, FigureCanvasAgg


def check_plot_folder(out_dir: Path) -> None:
    """SpecError now, before training, unless every file write_plots may write in `out_dir`
    can be written."""
    writable_folder(out_dir, "--plot", FILES)


def _write_csv(path: Path, rows) -> None:
    text = io.StringIO()
    csv.writer(text).writerows(rows)
    write_text(path, text.getvalue(), "--plot")


def _save_png(fig, path: Path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png"), "--plot")


def write_history_csv(history, path: Path) -> None:
    """One row per epoch: epoch, loss, lr, then each metric."""
    names = sorted({k for e in history for k in e.metrics})
    _write_csv(path, [["epoch", "loss", "lr"] + names]
               + [[e.epoch, repr(e.loss), repr(e.lr)] + [repr(e.metrics.get(k)) for k in names]
                  for e in history])


def classifier_2d(model: Model, metrics: Mapping) -> Optional[tuple]:
    """(points input, label input, class scores node) for a classifier of 2-D points, else None."""
    graph = model.graph
    fed = model.fed_inputs
    points = [n for n in fed if not graph[n].dtype.startswith("int")]
    labels = [n for n in fed if graph[n].dtype.startswith("int")]
    if len(points) != 1 or len(labels) != 1 or graph[points[0]].shape[-1:] != (2,) \
            or len(graph[points[0]].shape) != 2:
        return None
    preds = [m.nodes[0] for m in metrics.values() if m.nodes[1:] == (labels[0],)] \
        + list(model.spec.outputs)
    for p in preds:
        shape = graph[p].shape
        if len(shape) == 2 and isinstance(shape[1], int) and shape[1] >= 2:
            return points[0], labels[0], p
    return None


def predict_grid(model: Model, roles: tuple, points: np.ndarray, n: int = GRID) -> tuple:
    """(xs, ys, class index on the n x n grid) around the data, by forward passes."""
    x_name, label_name, pred = roles
    lo, hi = points.min(axis=0), points.max(axis=0)
    pad = 0.1 * (hi - lo) + 1e-6
    xs = np.linspace(lo[0] - pad[0], hi[0] + pad[0], n)
    ys = np.linspace(lo[1] - pad[1], hi[1] + pad[1], n)
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    runner = Runner(model.graph, model.store, keep={pred})
    dtype = model.graph[x_name].dtype
    classes = np.empty(len(grid), dtype=np.int64)
    for start in range(0, len(grid), CHUNK):
        chunk = np.zeros((CHUNK, 2), dtype=dtype)    # padded: one plan for every chunk
        part = grid[start:start + CHUNK]
        chunk[:len(part)] = part
        ex = runner.run({x_name: chunk, label_name: np.zeros(CHUNK, dtype=np.int64)})
        classes[start:start + len(part)] = np.asarray(ex[pred]).argmax(axis=1)[:len(part)]
    return xs, ys, classes.reshape(n, n)


def _curves_png(mpl, history, path: Path) -> None:
    Figure, Canvas = mpl
    names = sorted({k for e in history for k in e.metrics})
    fig = Figure(figsize=(4.5 * (1 + bool(names)), 3.4), dpi=100)
    Canvas(fig)
    axes = fig.subplots(1, 1 + bool(names), squeeze=False)[0]
    epochs = [e.epoch for e in history]
    axes[0].plot(epochs, [e.loss for e in history], color="#4c78a8")
    axes[0].set(xlabel="epoch", ylabel="loss", title="training loss")
    for name in names:
        axes[1].plot(epochs, [e.metrics.get(name, np.nan) for e in history], label=name)
    if names:
        axes[1].set(xlabel="epoch", title="metrics")
        axes[1].legend()
    fig.tight_layout()
    _save_png(fig, path)


def _boundary_png(mpl, grid: tuple, points, labels, path: Path) -> None:
    Figure, Canvas = mpl
    xs, ys, classes = grid
    fig = Figure(figsize=(5, 5), dpi=100)
    Canvas(fig)
    ax = fig.subplots()
    k = int(max(classes.max(), labels.max())) + 1
    ax.contourf(xs, ys, classes, levels=np.arange(k + 1) - 0.5, cmap="Spectral", alpha=0.35)
    ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="Spectral", s=12, edgecolors="k",
               linewidths=0.3, vmin=0, vmax=k - 1)
    ax.set(title="decision boundary", xlim=(xs[0], xs[-1]), ylim=(ys[0], ys[-1]))
    fig.tight_layout()
    _save_png(fig, path)


def _boundary_csv(grid: tuple, path: Path) -> None:
    xs, ys, classes = grid
    _write_csv(path, [["x0", "x1", "class"]]
               + [[repr(float(x)), repr(float(y)), int(classes[i, j])]
                  for i, y in enumerate(ys) for j, x in enumerate(xs)])


def write_plots(out_dir: Path, model: Model, history, arrays: Mapping, metrics: Mapping) -> tuple:
    """(files written, matplotlib found): history.csv always; curves.png and, for a 2-D
    classifier, decision_boundary.png with matplotlib, else decision_boundary.csv."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpecError(f"cannot write --plot {out_dir}: {exc.strerror or exc}") from None
    written = [out_dir / "history.csv"]
    write_history_csv(history, written[0])
    mpl = _matplotlib()
    if mpl is not None:
        written.append(out_dir / "curves.png")
        _curves_png(mpl, history, written[-1])
    roles = classifier_2d(model, metrics)
    if roles is not None:
        points, labels = arrays[roles[0]], arrays[roles[1]]
        grid = predict_grid(model, roles, points)
        if mpl is not None:
            written.append(out_dir / "decision_boundary.png")
            _boundary_png(mpl, grid, points, labels, written[-1])
        else:
            written.append(out_dir / "decision_boundary.csv")
            _boundary_csv(grid, written[-1])
    return written, mpl is not None
