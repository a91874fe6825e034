"""`graphc grad`, `graphc gradcheck`, `graphc explain`: one pass, its checks, its paths."""
from __future__ import annotations

import click
from .cli_common import FILE, SPEC, FiniteFloat, dot_outputs, input_feeds, fmt_result, json_text, \
    nested, write_dot

MODE = click.option("--mode", type=click.Choice(["train", "eval"]), default="train",
                    show_default=True,
                    help="Which plan: train (batch statistics, state updates, dropout "
                         "masks of the spec's seed at step 0) or eval (running statistics, "
                         "no dropout).")


@click.command()
@click.argument("spec", type=SPEC)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--out", type=FILE,
              help="Write the gradients to FILE.npz, one array per leaf.")
@click.option("--all", "everything", is_flag=True,
              help="Also print every node's value and gradient.")
@click.option("--params", type=FILE,
              help="Load parameter values from a checkpoint .npz.")
@click.option("--inputs", type=FILE,
              help="Load input values from an .npz (arrays named like the inputs).")
@click.option("--dot", type=FILE,
              help="Write the forward graph as Graphviz DOT (FILE.dot or FILE.gv), each node "
                   "with its value and gradient, each edge with its local gradient.")
@click.option("--render", is_flag=True, help="Also render the DOT to SVG with Graphviz.")
@MODE
def grad(spec, as_json, out, everything, params, inputs, dot, render, mode):
    """One forward + backward pass: the loss and d loss / d every leaf."""
    from .model import load_model, run_grads
    from .checkpoint import load_params, write
    from .outfiles import DOT, NPZ, check_outputs
    check_outputs({"--out": out, **dot_outputs(dot, render)},   # before the work
                  {"--out": NPZ, "--dot": DOT}, {"--params": params, "--inputs": inputs})
    model = load_model(spec, mode=mode)
    if params:
        load_params(params, model)
    feeds = input_feeds(model, inputs)
    result = run_grads(model, feeds, everything)
    if dot:
        from .annotate import grad_dot
        write_dot(dot, grad_dot(model, feeds), render)
    if out:
        write(out, result.grads, "--out")
    if as_json:
        grads = {**{k: nested(v) for k, v in result.node_grads.items()},
                 **{k: nested(v) for k, v in result.grads.items()}}
        click.echo(json_text({"loss": result.loss, "grads": grads,
                               "values": {k: nested(v) for k, v in result.values.items()}}))
        return
    click.echo(f"loss = {result.loss:.6g}")
    for name, g in result.grads.items():
        click.echo(f"d loss / d {name} = {fmt_result(g)}")
    if everything:
        click.echo("")
        for name, v in result.values.items():
            g = result.node_grads.get(name)
            tail = f"   grad {fmt_result(g)}" if g is not None else ""
            click.echo(f"{name} = {fmt_result(v)}{tail}")


@click.command()
@click.argument("spec", type=SPEC)
@click.option("--eps", type=FiniteFloat(min=0, min_open=True), default=1e-6,
              show_default=True, help="Central-difference step.")
@click.option("--tol", type=FiniteFloat(min=0), default=1e-5, show_default=True,
              help="Largest allowed rel error |a-n| / max(1e-8, |a|+|n|).")
@click.option("--atol", type=FiniteFloat(min=0),
              help="Abs error that passes whatever the rel error "
                   "[default: the central difference's rounding noise].")
@click.option("--sample", type=click.IntRange(min=1),
              help="Check at most N elements per leaf, a seeded random subset (large "
                   "models) [default: every element].")
@click.option("--batch-size", type=click.IntRange(min=1),
              help="Rows of train.data's first batch to feed [default: the spec's "
                   "batch_size].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--params", type=FILE,
              help="Load parameter values from a checkpoint .npz.")
@click.option("--inputs", type=FILE,
              help="Load input values from an .npz (arrays named like the inputs).")
@MODE
def gradcheck(spec, eps, tol, atol, sample, batch_size, as_json, params, inputs, mode):
    """Analytic vs central-difference gradients of every leaf, in float64 (exit 1 on failure)."""
    from .errors import CheckFailed
    from .gradcheck import check_json, check_model, check_table
    from .model import load_model
    from .checkpoint import load_params
    model = load_model(spec, mode=mode)
    if params:
        load_params(params, model)
    result = check_model(model, input_feeds(model, inputs, batch_size), eps=eps, tol=tol,
                         atol=atol, sample=sample)
    click.echo(json_text(check_json(result)) if as_json else check_table(result))
    if not result.ok:
        failed = ", ".join(c.leaf for c in result.leaves if not c.ok)
        raise CheckFailed(f"gradient check failed for {failed} (tol {tol:g})")


@click.command()
@click.argument("spec", type=SPEC)
@click.option("--wrt", required=True, metavar="LEAF",
              help="The leaf (or node) whose gradient to take apart.")
@click.option("--max-paths", type=click.IntRange(min=1), default=64, show_default=True,
              help="Print at most this many paths.")
@click.option("--params", type=FILE,
              help="Load parameter values from a checkpoint .npz.")
@click.option("--inputs", type=FILE,
              help="Load input values from an .npz (arrays named like the inputs).")
def explain(spec, wrt, max_paths, params, inputs):
    """The chain rule for d loss / d LEAF: local gradients multiplied along each path,
    added over paths, next to the gradient graphc computes."""
    from .explain import check_explanation, explain as run_explain, explanation_text
    from .model import load_model
    from .checkpoint import load_params
    model = load_model(spec)
    if params:
        load_params(params, model)
    e = run_explain(model, input_feeds(model, inputs), wrt, max_paths)
    click.echo(explanation_text(e))
    check_explanation(e)
