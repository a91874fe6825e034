"""What the command modules share: the SPEC argument type, input feeds, array printing,
DOT writing, the training step as `train` builds it, BLAS thread limits."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click
import numpy as np

from .errors import SpecError, did_you_mean


SPEC = click.Path(dir_okay=False, path_type=Path)


def nested(arr: np.ndarray):
    return np.asarray(arr).tolist()


def fmt_array(arr: np.ndarray) -> str:
    arr = np.asarray(arr)
    if arr.ndim == 0:
        return f"{float(arr):.6g}"
    if arr.size <= 16:
        return np.array2string(arr, precision=6, separator=", ").replace("\n", "")
    return (f"shape {list(arr.shape)}, mean {arr.mean():.4g}, norm {np.linalg.norm(arr):.4g}, "
            f"min {arr.min():.4g}, max {arr.max():.4g}")


def input_feeds(model, inputs_path, batch_size=None):
    """Fed inputs for one pass: --inputs FILE.npz, else the first batch of train.data."""
    from .checkpoint import read
    from .data import first_batch
    from .train import load_dataset, parse_train
    fed = model.fed_inputs
    given = {}
    if inputs_path:
        given = read(inputs_path, "--inputs")
        for name, arr in given.items():
            if name not in model.graph.nodes or model.graph[name].op != "input":
                raise SpecError(f"--inputs {inputs_path}: '{name}' is not an input of the spec")
            if name not in fed:
                model.store[name] = arr.astype(model.graph[name].dtype).reshape(
                    model.store[name].shape)
    missing = [n for n in fed if n not in given]
    if missing and "data" in model.spec.train:
        cfg = parse_train(model, batch_size=batch_size)
        data = first_batch(load_dataset(model, cfg).train, cfg.batch_size)
        given = {**{n: data[n] for n in missing}, **given}
    elif missing:
        raise SpecError(f"input '{missing[0]}' has no value and the spec has no train.data",
                        mark=model.graph[missing[0]].mark, node=missing[0],
                        hint="give it a value: in the spec, or pass --inputs FILE.npz")
    return {n: given[n] for n in fed}


def write_dot(path: Path, text: str, render: bool) -> None:
    """Always write the DOT; render it to SVG only where Graphviz's `dot` is installed."""
    from .dot import render as render_dot
    path.write_text(text, encoding="utf-8")
    click.echo(f"wrote {path}", err=True)
    if not render:
        return
    svg = render_dot(path, "svg")
    if svg is None:
        click.echo(f"Graphviz's `dot` is not installed, so {path} was not rendered; install "
                   f"Graphviz (apt-get install graphviz, brew install graphviz) and run: "
                   f"dot -Tsvg {path} -o {path.with_suffix('.svg')}", err=True)
    else:
        click.echo(f"wrote {svg}", err=True)


def training_step(spec, batch_size, dims=None):
    """(model, step graph, batch size, dims) of the spec's training step, as `train` builds
    it. The batch dims (each fed input's first dim, as a batch of data sizes them) take the
    batch size: --batch-size, a `dims` entry for one of them, else train.batch_size, else 32.
    Any other symbolic dim is sized only by `dims` (--dim NAME=SIZE)."""
    from .model import load_model
    from .step import parse_optimizer, training_graph
    model = load_model(spec)
    raw = model.spec.train
    opt = parse_optimizer(raw.get("optimizer"), raw.mark_of("optimizer"))
    from .trainconfig import _clip                    # the same checks as train's
    step = training_graph(model.graph, opt, _clip(raw))
    bs, dims = _sized_dims(model, batch_size, dict(dims or {}))
    return model, step, bs, dims


def _sized_dims(model, batch_size, dims: dict) -> tuple:
    """(batch size, every symbolic dim's size): `training_step`'s sizing rule."""
    from .plan import batch_dims
    from .trainconfig import _positive_int
    _check_dim_names(model, dims)
    lead = batch_dims(model.graph)
    given = {f"--dim {d}={dims[d]}": dims[d] for d in lead if d in dims}
    if batch_size is not None:
        given[f"--batch-size {batch_size}"] = batch_size
    if len(set(given.values())) > 1:
        raise SpecError(f"{' and '.join(given)} give the batch dim different sizes",
                        hint=f"give one of them ({', '.join(lead)} is the inputs' first dim, "
                             f"which a batch sizes)")
    bs = _positive_int(model.spec.train, "batch_size", 32, next(iter(given.values()), None))
    return bs, {**dict.fromkeys(lead, bs), **dims}


def _check_dim_names(model, dims) -> None:
    """Every --dim names a symbolic dim of the spec."""
    from . import shapes as S
    known = sorted(set().union(*(S.symbols(n.shape) for n in model.graph.nodes.values())))
    for name, size in dims.items():
        if name not in known:
            raise SpecError(f"--dim {name}={size}: {model.spec.path} has no symbolic dim "
                            f"'{name}'",
                            hint=did_you_mean(name, known) or (
                                f"its symbolic dims are {', '.join(known)}" if known
                                else "it has no symbolic dims"))


THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def limit_threads(threads) -> None:
    """Cap BLAS threads: threadpoolctl when installed, else re-run with the env vars set
    (BLAS reads them only at start-up)."""
    if threads is None:
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        if all(os.environ.get(v) == str(threads) for v in THREAD_VARS):
            return
        env = {**os.environ, **{v: str(threads) for v in THREAD_VARS}}
        os.execve(sys.executable, [sys.executable, "-m", "graphc", *sys.argv[1:]], env)
    threadpool_limits(threads)
