"""What the command modules share: the SPEC argument type, input feeds, array printing,
the default checkpoint, DOT writing, the training step as `train` builds it, BLAS thread
limits."""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import click
import numpy as np

from .errors import SpecError, did_you_mean
from .outfiles import write_text


class NamedPath(click.Path):
    """click.Path that refuses an empty name: Path('') is '.', the current folder, which a
    file option would then read as a folder, or a folder option fill unasked."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value:
            self.fail(f"the path is empty; name a {'file' if self.file_okay else 'folder'}",
                      param, ctx)
        return super().convert(value, param, ctx)


FILE = NamedPath(dir_okay=False, path_type=Path)        # every file option and argument
FOLDER = NamedPath(file_okay=False, path_type=Path)
SPEC = FILE
MEMORY_BUDGET = click.option("--memory-budget", metavar="SIZE",
                             help="Fit the step's plan in SIZE (such as 64MiB) by recomputing "
                                  "forward values in the backward pass [default: "
                                  "train.memory].")


class FiniteFloat(click.FloatRange):
    """A FloatRange that also refuses nan and inf (click's bounds let nan through)."""
    name = "finite float"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def nested(arr: np.ndarray):
    return np.asarray(arr).tolist()


def json_text(obj) -> str:
    """`obj` as strict JSON, one line: a NaN or infinity (which JSON cannot hold, and
    Python would write as the non-JSON NaN) becomes null. docs/cli.md#exit-codes-and-output."""
    try:
        return json.dumps(obj, allow_nan=False)
    except ValueError:          # rare: walk the object only when a non-finite number is there
        return json.dumps(_finite_or_none(obj), allow_nan=False)


def _finite_or_none(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def fmt_result(arr: np.ndarray) -> str:
    arr = np.asarray(arr)
    if arr.ndim == 0:
        return f"{float(arr):.6g}"
    if arr.size <= 16:
        return np.array2string(arr, precision=6, separator=", ").replace("\n", "")
    return (f"shape {list(arr.shape)}, mean {arr.mean():.4g}, norm {np.linalg.norm(arr):.4g}, "
            f"min {arr.min():.4g}, max {arr.max():.4g}")


def input_feeds(model, inputs_path, batch_size=None):
    """Fed inputs for one pass: --inputs FILE.npz, else the first batch of train.data."""
    from .checkpoint import check_not_a_checkpoint, read
    from .data import first_batch
    from .trainconfig import load_dataset, parse_train
    fed = model.fed_inputs
    given = {}
    if inputs_path:
        arrays = read(inputs_path, "--inputs")
        check_not_a_checkpoint(arrays, f"--inputs {inputs_path}")
        given = {name: _given_input(model, name, arr, inputs_path)
                 for name, arr in arrays.items()}
        for name, arr in given.items():
            if name not in fed:
                model.store[name] = arr
    missing = [n for n in fed if n not in given]
    if missing and "data" in model.spec.train:
        cfg = parse_train(model, batch_size=batch_size)
        data = first_batch(load_dataset(model, cfg).train, cfg.batch_size)
        _check_batches_agree(model, given, {n: data[n] for n in missing}, inputs_path)
        given = {**{n: data[n] for n in missing}, **given}
    elif missing:
        raise SpecError(f"input '{missing[0]}' has no value and the spec has no train.data",
                        mark=model.graph[missing[0]].mark, node=missing[0],
                        hint="give it a value: in the spec, or pass --inputs FILE.npz")
    return {n: given[n] for n in fed}


def _check_batches_agree(model, given: dict, filled: dict, path) -> None:
    """SpecError where an input of --inputs and one its file lacks (filled from train.data's
    first batch) share a batch dim but not its size: name both sources, not only the dim."""
    sizes: dict = {}        # dim -> (input, its rows, where they came from)
    for arrays, where in ((given, f"--inputs {path}"), (filled, "train.data's first batch")):
        for name, arr in arrays.items():
            lead = model.graph[name].shape[:1]
            if not (lead and isinstance(lead[0], str) and np.ndim(arr)):
                continue
            first = sizes.setdefault(lead[0], (name, len(arr), where))
            if first[1] != len(arr):
                raise SpecError(f"{first[2]} gives '{first[0]}' {first[1]} samples, but "
                                f"'{name}', which it lacks, comes from {where}: "
                                f"{len(arr)} samples", mark=model.graph[name].mark, node=name,
                                hint=f"add '{name}' to {path}")


def default_checkpoint(model) -> Path:
    """`<name>.ckpt.npz` in the current folder: where `graphc train` saves by default."""
    return Path(f"{model.spec.name}.ckpt.npz")


def checkpoint_or_default(model, params) -> Path:
    """--params, else the default checkpoint when it exists; an error saying how to make one
    when it does not."""
    if params is not None:
        return params
    path = default_checkpoint(model)
    if not path.is_file():
        raise SpecError(f"no --params given, and there is no {path} here (the default "
                        f"checkpoint of spec '{model.spec.name}')",
                        hint=f"train first (graphc train {model.spec.path}), or pass "
                             "--params CKPT.npz")
    return path


def dot_outputs(dot, render: bool) -> dict:
    """The files --dot FILE [--render] writes, by flag, for outfiles.check_outputs."""
    return {"--dot": dot, "--render": dot.with_suffix(".svg") if dot and render else None}


def _given_input(model, name: str, arr: np.ndarray, path) -> np.ndarray:
    """One array of --inputs checked against the input it feeds: numbers its dtype holds,
    at least one sample, and the shape of an input with a value; cast to its dtype."""
    from .data import check_values
    from .datafiles import numeric
    shown = f"--inputs {path} array '{name}'"
    if name not in model.graph.nodes or model.graph[name].op != "input":
        leaf = name in model.graph.nodes and model.graph[name].op in ("param", "state")
        raise SpecError(f"--inputs {path}: '{name}' is not an input of the spec",
                        hint=f"'{name}' is a {model.graph[name].op}: pass its value with "
                        "--params" if leaf else did_you_mean(name, model.fed_inputs))
    node = model.graph[name]
    arr = numeric(arr, shown, samples=name in model.fed_inputs)
    check_values(name, arr, np.dtype(node.dtype), lambda n, idx: f"{shown} at index {idx}")
    if name in model.fed_inputs and len(arr) == 0:
        raise SpecError(f"{shown} has no samples (its first dimension is 0)", node=name)
    have = model.store[name].shape if name not in model.fed_inputs else None
    if have is not None and arr.shape != have:
        raise SpecError(f"{shown} has shape {list(arr.shape)}, but input '{name}' has shape "
                        f"{list(have)}", mark=node.mark, node=name)
    return arr.astype(node.dtype)


def write_dot(path: Path, text: str, render: bool) -> None:
    """Always write the DOT; render it to SVG only where Graphviz's `dot` is installed."""
    from .dot import render as render_dot
    write_text(path, text, "--dot")
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
    it, its symbolic dims sized by `batch_size` and `dims` (trainconfig.training_step)."""
    from .model import load_model
    from .trainconfig import training_step as step_of
    model = load_model(spec)
    return (model, *step_of(model, batch_size, dims))


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
