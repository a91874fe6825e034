"""`graphc plan` and `graphc time`: the compiled training step, its memory and its speed."""
from __future__ import annotations

import json

import click
from .limits import paused_gc
from .cli_common import (FILE, MEMORY_BUDGET, SPEC, dot_outputs, limit_threads, training_step,
                         write_dot)


def _parse_dims(ctx, param, values) -> dict:
    """('T=16', 'N=64') -> {'T': 16, 'N': 64}."""
    dims = {}
    for text in values:
        name, _, size = text.partition("=")
        if not (name.isidentifier() and size.isascii() and size.isdigit() and int(size) >= 1):
            raise click.BadParameter(f"'{text}' is not NAME=SIZE with a size from 1 up, "
                                     f"such as T=16")
        if name in dims:
            raise click.BadParameter(f"dim '{name}' is given twice")
        dims[name] = int(size)
    return dims


BATCH_SIZE = click.option("--batch-size", type=click.IntRange(min=1),
                          help="Size the batch dim, the inputs' first dim [default: "
                               "train.batch_size, else 32].")
STEP_CODE = click.option("--step-code", type=click.Choice(["reference", "generated", "fused",
                                                            "numpy"]),
                          help="How the step runs: the reference loop of bound kernels, "
                               "generated straight-line code (a CNN's window steps on numba "
                               "where it imports), generated code with fused kernels (needs "
                               "graphc[numba]), or generated code on NumPy alone "
                               "[default: $GRAPHC_STEP_CODE, else generated].")
DIM = click.option("--dim", "dims", multiple=True, metavar="NAME=SIZE", callback=_parse_dims,
                   help="Size a symbolic dim, such as --dim T=16 (repeatable).")


@click.command()
@click.argument("spec", type=SPEC)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON (contract §2).")
@click.option("--dot", type=FILE,
              help="Write the plan as Graphviz DOT (FILE.dot or FILE.gv).")
@BATCH_SIZE
@DIM
@click.option("--memory", type=FILE,
              help="Write the arena over time as SVG (FILE.svg): one bar per buffer.")
@click.option("--only", metavar="FIRST..LAST",
              help="With --dot: draw only these steps (node names or step numbers).")
@click.option("--render", is_flag=True, help="Also render the DOT to SVG with Graphviz.")
@click.option("--no-reuse", is_flag=True,
              help="Give every value its own bytes (no arena reuse, no in-place), to compare.")
@MEMORY_BUDGET
@click.option("--saved", is_flag=True,
              help="List the values the backward pass reads: kept (bytes, producer) or "
                   "recomputed (flops).")
@click.option("--emit", type=click.Choice(["python"]),
              help="Print the step as the Python source that runs it (see --step-code).")
@STEP_CODE
@paused_gc
def plan(spec, as_json, dot, batch_size, dims, memory, only, render, no_reuse, memory_budget,
         saved, emit, step_code):
    """Compile the training step; print its schedule, buffers and memory summary."""
    from .model import load_model
    from .outfiles import DOT, SVG, check_outputs, write_text
    from .plan import plan_json, plan_table
    from .remat_report import memory_json, saved_table
    from .trainconfig import training_remat
    if only and not dot:
        raise click.UsageError("--only selects the steps --dot draws: give --dot FILE too")
    if emit and as_json:
        raise click.UsageError("--emit python prints source, --json a plan: give one")
    if step_code and not emit:
        raise click.UsageError("--step-code chooses the code --emit prints: give --emit "
                               "python too")
    check_outputs({"--memory": memory, **dot_outputs(dot, render)},   # before the work
                  {"--memory": SVG, "--dot": DOT})
    model = load_model(spec)
    step, remat = training_remat(model, batch_size, not no_reuse, dims, memory_budget)
    compiled, remat_on = remat.plan, remat.policy.kind != "none"
    if dot:
        from .dot import plan_dot
        write_dot(dot, plan_dot(step.graph, compiled, only), render)
    if memory:
        from .memsvg import memory_svg
        write_text(memory, memory_svg(compiled, f"{model.spec.name}: the arena over one "
                                                f"training step", remat.kept,
                                      remat.clones.values()), "--memory")
        click.echo(f"wrote {memory}", err=True)
    if emit:
        click.echo(_emitted(model, step, compiled, step_code), nl=False)
    elif as_json:
        extra = {"memory": memory_json(remat)} if saved or remat_on else {}
        click.echo(json.dumps({**plan_json(compiled), **extra}))
    elif saved:
        click.echo(saved_table(remat))
    else:
        click.echo(plan_table(compiled) + ("\n\n" + saved_table(remat) if remat_on else ""))


def _emitted(model, step, compiled, step_code) -> str:
    """The generated source of the training step (executor.py's step code), headed by what
    it is."""
    from .executor import Executor, using_step_code
    from .timing import seed_store
    with using_step_code(step_code) as chosen:
        if chosen == "reference":
            raise click.UsageError("the reference step code runs bound kernels in a loop: "
                                   "it has no source to emit; use --step-code generated")
        seed_store(model, step)
        ex = Executor(compiled, model.store)
    dims = ", ".join(f"{k}={v}" for k, v in sorted(compiled.dims.items()))
    return (f"# {model.spec.name}: the training step ({dims}) as {chosen} step code: "
            f"{len(compiled.steps)} plan steps, {ex.kernel_calls} kernel calls\n"
            f"# every name is an array bound at compile time (arena views, params, "
            f"scratch, constants)\n{ex.program.source}")


@click.command(name="time")
@click.argument("spec", type=SPEC)
@BATCH_SIZE
@DIM
@click.option("--steps", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=20, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), help="BLAS threads (default: as is).")
@click.option("--no-reuse", is_flag=True, help="Time the plan without arena reuse.")
@MEMORY_BUDGET
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@STEP_CODE
def time_(spec, batch_size, dims, steps, warmup, threads, no_reuse, memory_budget, as_json,
          step_code):
    """Time the compiled training step on synthetic data: median per step, per-op table."""
    from .executor import using_step_code
    from .timing import time_step
    from .trainconfig import memory_policy
    limit_threads(threads)
    model, step, bs, dims = training_step(spec, batch_size, dims)
    with using_step_code(step_code):
        result = time_step(model, step, bs, dims, steps, warmup, reuse=not no_reuse,
                           memory=memory_policy(model, memory_budget))
    path = (f"step code: {result.step_code}, {result.plan_steps} plan steps, "
            f"{result.kernel_calls} kernel calls per step")
    if result.step_code == "generated" and result.numba_steps:
        path += f" ({result.numba_steps} steps in numba kernels)"
    if as_json:         # stdout: exactly the contract's object; the path goes to stderr
        click.echo(path, err=True)
        click.echo(json.dumps(result.json()))
        return
    click.echo(f"{model.spec.name}: batch {bs}, {steps} steps: median "
               f"{result.step_us_median:.1f} us/step, p10 {result.step_us_p10:.1f} us")
    click.echo(path)
    click.echo(f"{'op':<28} {'phase':<9} {'us/step':>9}")
    for row in result.per_op:
        click.echo(f"{row['op']:<28} {row['phase']:<9} {row['us']:>9.1f}")
