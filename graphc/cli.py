"""The `graphc` command line (click): check, grad, train, plan, ops.

Every GraphcError becomes one `error:` line on stderr and its exit code
(2 bad input, 1 failed check); nothing here computes, it only calls the
stages and prints.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
import numpy as np

from . import shapes as S
from .errors import GraphcError, SpecError, set_memory_limit
from .ops import OPS, ops_in

SPEC = click.Path(dir_okay=False, path_type=Path)


class Group(click.Group):
    """Turns errors into `error: ...` lines with the right exit code, never a traceback."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        try:
            rv = super().main(*args, **kwargs)
            sys.exit(rv if isinstance(rv, int) else 0)
        except GraphcError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(130)
        except click.UsageError as exc:
            hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
            click.echo(f"error: {exc.format_message()}{hint}", err=True)
            sys.exit(2)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            sys.exit(130)
        except Exception as exc:    # a bug in graphc, not in the user's input
            if os.environ.get("GRAPHC_DEBUG"):
                raise
            click.echo(f"error: internal error ({type(exc).__name__}: {exc}); this is a "
                       "graphc bug: rerun with GRAPHC_DEBUG=1 for the traceback", err=True)
            sys.exit(1)


@click.group(cls=Group)
@click.version_option(package_name="graphc")
@click.option("--max-memory", metavar="SIZE", envvar="GRAPHC_MAX_MEMORY", expose_value=False,
              callback=lambda ctx, param, size: set_memory_limit(size),
              help="Refuse a parameter or arena above SIZE (512M, 4G) [default: half of RAM].")
def main():
    """graphc: a graph-definition compiler with static execution plans."""


def _nested(arr: np.ndarray):
    return np.asarray(arr).tolist()


def _fmt_array(arr: np.ndarray) -> str:
    arr = np.asarray(arr)
    if arr.ndim == 0:
        return f"{float(arr):.6g}"
    if arr.size <= 16:
        return np.array2string(arr, precision=6, separator=", ").replace("\n", "")
    return (f"shape {list(arr.shape)}, mean {arr.mean():.4g}, norm {np.linalg.norm(arr):.4g}, "
            f"min {arr.min():.4g}, max {arr.max():.4g}")


@main.command()
@click.argument("spec", type=SPEC)
def check(spec):
    """Validate SPEC; print nodes, shapes and the parameter count."""
    from .autodiff import check_params_reach_loss, grad_graph, trained_params
    from .model import load_model
    model = load_model(spec)
    gg = grad_graph(model.graph, trained_params(model.graph))
    check_params_reach_loss(model.graph, gg.grads)
    if "data" in model.spec.train:    # the training settings too, so typos surface here
        from .train import parse_train
        parse_train(model)
    click.echo(model.graph.dump())
    count = sum(int(np.prod(model.store[p].shape)) for p in trained_params(model.graph))
    click.echo(f"ok: {len(model.graph.nodes)} nodes, {len(trained_params(model.graph))} "
               f"params ({count} values), loss '{model.graph.loss}'")


def _feeds(model, inputs_path, batch_size=None):
    """Fed inputs for one pass: --inputs FILE.npz, else the first batch of train.data."""
    from .data import first_batch
    from .train import load_dataset, parse_train
    fed = model.fed_inputs
    given = {}
    if inputs_path:
        given = _load_npz(inputs_path)
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


def _write_dot(path: Path, text: str, render: bool) -> None:
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


def _load_npz(path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError) as exc:
        raise SpecError(f"cannot read {path}: {exc}") from None


@main.command()
@click.argument("spec", type=SPEC)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the gradients to FILE.npz, one array per leaf.")
@click.option("--all", "everything", is_flag=True,
              help="Also print every node's value and gradient.")
@click.option("--params", type=click.Path(dir_okay=False, path_type=Path),
              help="Load parameter values from a checkpoint .npz.")
@click.option("--inputs", type=click.Path(dir_okay=False, path_type=Path),
              help="Load input values from an .npz (arrays named like the inputs).")
@click.option("--dot", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the forward graph as Graphviz DOT, each node with its value and "
                   "gradient, each edge with its local gradient.")
@click.option("--render", is_flag=True, help="Also render the DOT to SVG with Graphviz.")
def grad(spec, as_json, out, everything, params, inputs, dot, render):
    """One forward + backward pass: the loss and d loss / d every leaf."""
    from .model import load_model, run_grads
    from .train import load_params
    model = load_model(spec)
    if params:
        load_params(params, model)
    feeds = _feeds(model, inputs)
    result = run_grads(model, feeds, everything)
    if dot:
        from .annotate import grad_dot
        _write_dot(dot, grad_dot(model, feeds), render)
    if out:
        from .train import atomic_savez
        atomic_savez(out, result.grads)
    if as_json:
        grads = {**{k: _nested(v) for k, v in result.node_grads.items()},
                 **{k: _nested(v) for k, v in result.grads.items()}}
        click.echo(json.dumps({"loss": result.loss, "grads": grads,
                               "values": {k: _nested(v) for k, v in result.values.items()}}))
        return
    click.echo(f"loss = {result.loss:.6g}")
    for name, g in result.grads.items():
        click.echo(f"d loss / d {name} = {_fmt_array(g)}")
    if everything:
        click.echo("")
        for name, v in result.values.items():
            g = result.node_grads.get(name)
            tail = f"   grad {_fmt_array(g)}" if g is not None else ""
            click.echo(f"{name} = {_fmt_array(v)}{tail}")


@main.command()
@click.argument("spec", type=SPEC)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Checkpoint path (default <name>.ckpt.npz here).")
@click.option("--json", "as_json", is_flag=True, help="Print the final metrics as JSON.")
@click.option("--epochs", type=click.IntRange(min=1))
@click.option("--batch-size", type=click.IntRange(min=1))
@click.option("--lr", type=click.FloatRange(min=0, min_open=True))
@click.option("--seed", type=int)
@click.option("--resume", type=click.Path(dir_okay=False, path_type=Path),
              help="Continue the run saved in this checkpoint (same spec and settings); "
                   "--out defaults to it.")
@click.option("--init-from", type=click.Path(dir_okay=False, path_type=Path),
              help="Start from this checkpoint's params that match by name and shape.")
@click.option("--save-every", type=click.IntRange(min=1),
              help="Save a checkpoint every N epochs [default: each epoch end, at most "
                   "once a second].")
@click.option("--plot", type=click.Path(file_okay=False, path_type=Path),
              help="Write loss/metric curves per epoch (and a 2-D decision boundary) to DIR.")
def train(spec, out, as_json, epochs, batch_size, lr, seed, resume, init_from, save_every,
          plot):
    """Train SPEC on its train.data; save a checkpoint."""
    from .model import load_model
    from .train import init_from as load_init, parse_train, train as run_train
    if resume and init_from:
        raise click.UsageError("--resume and --init-from exclude each other")
    model = load_model(spec, seed)
    cfg = parse_train(model, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    out = out or resume or Path(f"{model.spec.name}.ckpt.npz")
    for note in load_init(init_from, model) if init_from else []:
        click.echo(f"warning: --init-from: {note}", err=True)
    progress = _progress(cfg.epochs, as_json)
    with progress as log:
        result = run_train(model, cfg, out=out, log=log, resume=resume, save_every=save_every)
    for note in result.notes:
        click.echo(note, err=as_json)
    summary = " ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
    click.echo(f"final: loss {result.loss:.4f} {summary}  ({result.samples_per_s:.0f} samples/s)"
               f" -> {out}", err=as_json)
    if plot:
        _write_plots(plot, model, cfg, result.history, as_json)
    if as_json:
        click.echo(json.dumps(result.json()))


def _write_plots(out_dir: Path, model, cfg, history, quiet_stdout: bool) -> None:
    from .plots import INSTALL, write_plots
    from .train import load_dataset
    written, with_mpl = write_plots(out_dir, model, history, load_dataset(model, cfg).train,
                                    cfg.metrics)
    if not with_mpl:
        click.echo(f"matplotlib is not installed, so no pictures were drawn; the numbers are "
                   f"in CSV instead. To draw them: {INSTALL}", err=True)
    click.echo("plots: " + ", ".join(str(p) for p in written), err=quiet_stdout)


class _progress:
    """A click progress bar on a terminal; plain per-epoch lines otherwise."""

    def __init__(self, epochs: int, quiet_stdout: bool):
        self.epochs, self.err = epochs, quiet_stdout
        self.every = max(1, epochs // 30)
        self.bar = None

    def __enter__(self):
        if sys.stderr.isatty() if self.err else sys.stdout.isatty():
            self.bar = click.progressbar(length=self.epochs, label="training",
                                         file=sys.stderr if self.err else None)
            self.bar.__enter__()
        return self.log

    def log(self, e):
        text = f"epoch {e.epoch:>4}/{self.epochs}  loss {e.loss:.4f}  " + "  ".join(
            f"{k} {v:.4f}" for k, v in e.metrics.items()) + f"  lr {e.lr:.4g}"
        if self.bar is not None:
            self.bar.label = text
            self.bar.update(1)
        elif e.epoch % self.every == 0 or e.epoch in (1, self.epochs):
            click.echo(text, err=self.err)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)


@main.command()
@click.argument("spec", type=SPEC)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON (contract §2).")
@click.option("--dot", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the plan as Graphviz DOT.")
@click.option("--batch-size", type=click.IntRange(min=1))
@click.option("--memory", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the arena over time as SVG: one bar per buffer.")
@click.option("--only", metavar="FIRST..LAST",
              help="With --dot: draw only these steps (node names or step numbers).")
@click.option("--render", is_flag=True, help="Also render the DOT to SVG with Graphviz.")
def plan(spec, as_json, dot, batch_size, memory, only, render):
    """Compile the training step; print its schedule, buffers and memory summary."""
    from .model import load_model
    from .plan import compile_plan, plan_json, plan_table, verify_plan
    from .step import parse_optimizer, training_graph
    model = load_model(spec)
    train_cfg = model.spec.train
    opt = parse_optimizer(train_cfg.get("optimizer"), train_cfg.mark_of("optimizer"))
    step = training_graph(model.graph, opt)
    bs = batch_size or train_cfg.get("batch_size", 32)
    compiled = compile_plan(step.graph, {"batch": bs}, {model.graph.loss}, step.forward)
    verify_plan(compiled)
    if only and not dot:
        raise click.UsageError("--only selects the steps --dot draws: give --dot FILE too")
    if dot:
        from .dot import plan_dot
        _write_dot(dot, plan_dot(step.graph, compiled, only), render)
    if memory:
        from .memsvg import memory_svg
        memory.write_text(memory_svg(compiled, f"{model.spec.name}: the arena over one "
                                               f"training step"), encoding="utf-8")
        click.echo(f"wrote {memory}", err=True)
    if as_json:
        click.echo(json.dumps(plan_json(compiled)))
    else:
        click.echo(plan_table(compiled))


@main.command()
@click.argument("spec", type=SPEC)
@click.option("--eps", type=click.FloatRange(min=0, min_open=True), default=1e-6,
              show_default=True, help="Central-difference step.")
@click.option("--tol", type=click.FloatRange(min=0), default=1e-5, show_default=True,
              help="Largest allowed rel error |a-n| / max(1e-8, |a|+|n|).")
@click.option("--atol", type=click.FloatRange(min=0),
              help="Abs error that passes whatever the rel error "
                   "[default: the central difference's rounding noise].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--params", type=click.Path(dir_okay=False, path_type=Path),
              help="Load parameter values from a checkpoint .npz.")
@click.option("--inputs", type=click.Path(dir_okay=False, path_type=Path),
              help="Load input values from an .npz (arrays named like the inputs).")
def gradcheck(spec, eps, tol, atol, as_json, params, inputs):
    """Analytic vs central-difference gradients of every leaf, in float64 (exit 1 on failure)."""
    from .errors import CheckFailed
    from .gradcheck import check_json, check_model, check_table
    from .model import load_model
    from .train import load_params
    model = load_model(spec)
    if params:
        load_params(params, model)
    result = check_model(model, _feeds(model, inputs), eps=eps, tol=tol, atol=atol)
    click.echo(json.dumps(check_json(result)) if as_json else check_table(result))
    if not result.ok:
        failed = ", ".join(c.leaf for c in result.leaves if not c.ok)
        raise CheckFailed(f"gradient check failed for {failed} (tol {tol:g})")


@main.command("eval")
@click.argument("spec", type=SPEC)
@click.option("--params", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The checkpoint .npz to evaluate.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def eval_(spec, params, as_json):
    """Loss and metrics of a checkpoint on SPEC's data (its validation split if it has one)."""
    from .model import load_model
    from .train import evaluate_checkpoint
    result = evaluate_checkpoint(load_model(spec), params)
    if as_json:
        click.echo(json.dumps(result))
        return
    metrics = "".join(f"  {k} {v:.4f}" for k, v in result["metrics"].items())
    click.echo(f"loss {result['loss']:.4f}{metrics}  ({result['samples']} samples)")


@main.command()
@click.argument("spec", type=SPEC)
@click.option("--wrt", required=True, metavar="LEAF",
              help="The leaf (or node) whose gradient to take apart.")
@click.option("--max-paths", type=click.IntRange(min=1), default=64, show_default=True,
              help="Print at most this many paths.")
@click.option("--params", type=click.Path(dir_okay=False, path_type=Path),
              help="Load parameter values from a checkpoint .npz.")
@click.option("--inputs", type=click.Path(dir_okay=False, path_type=Path),
              help="Load input values from an .npz (arrays named like the inputs).")
def explain(spec, wrt, max_paths, params, inputs):
    """The chain rule for d loss / d LEAF: local gradients multiplied along each path,
    added over paths, next to the gradient graphc computes."""
    from .explain import check_explanation, explain as run_explain, explanation_text
    from .model import load_model
    from .train import load_params
    model = load_model(spec)
    if params:
        load_params(params, model)
    e = run_explain(model, _feeds(model, inputs), wrt, max_paths)
    click.echo(explanation_text(e))
    check_explanation(e)


@main.command()
def ops():
    """List the op catalog with signatures."""
    groups = {"forward": "ops to write in expressions and {op:} nodes; docs/ops.md has each "
                         "one's math and gradient",
              "layer": "expand into their own params and forward ops",
              "backward": "added by autodiff", "update": "added by the optimizer"}
    for group, what in groups.items():
        click.echo(f"[{group}] {what}")
        for name in ops_in(group):
            click.echo(f"  {OPS[name].doc}")
    from .expr import ALIASES
    click.echo("[aliases] " + ", ".join(f"{a} = {op}" for a, op in ALIASES.items()))
