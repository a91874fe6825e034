"""The `graphc` command line (click): the group, `check`, `ops`, and the other commands
registered from cli_grad (grad, gradcheck, explain), cli_train (train, eval),
cli_predict (predict) and cli_plan (plan, time).

Every GraphcError becomes one `error:` line on stderr and its exit code
(2 bad input, 1 failed check); nothing here computes, it only calls the
stages and prints.
"""
from __future__ import annotations

import importlib
import os
import signal
import sys

import click

from .errors import GraphcError
from .limits import paused_gc, set_memory_limit
from .parallel import current as current_world
from .interrupts import exit_code, signal_name, stop_on_signals
from .cli_common import SPEC


# family module -> the click names of its commands; a family is imported when one of its
# commands runs (or --help lists them all), so `graphc plan` never imports what train,
# predict or export need
FAMILIES = {"cli_grad": ("explain", "grad", "gradcheck"), "cli_onnx": ("export", "import"),
            "cli_plan": ("plan", "time"), "cli_predict": ("predict",),
            "cli_train": ("eval", "train")}
LAZY_COMMANDS = {name: module for module, names in FAMILIES.items() for name in names}


def family_commands(module: str) -> list:
    """The click commands FAMILIES names in `module`, which is imported here."""
    family = importlib.import_module(f".{module}", __package__)
    return [c for c in vars(family).values()
            if isinstance(c, click.Command) and c.name in FAMILIES[module]]


class Group(click.Group):
    """Turns errors into `error: ...` lines with the right exit code, never a traceback.
    The commands of LAZY_COMMANDS are registered on first lookup, their family at once."""

    def list_commands(self, ctx):
        return sorted(set(self.commands) | set(LAZY_COMMANDS))

    def get_command(self, ctx, cmd_name):
        if cmd_name not in self.commands and cmd_name in LAZY_COMMANDS:
            for command in family_commands(LAZY_COMMANDS[cmd_name]):
                self.add_command(command)
        return super().get_command(ctx, cmd_name)

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        stop_on_signals()
        try:
            rv = super().main(*args, **kwargs)
            sys.exit(rv if isinstance(rv, int) else 0)
        except GraphcError as exc:
            _fail(str(exc), exc.exit_code, getattr(exc, "everywhere", False))
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.Abort as exc:              # click's wrapper of KeyboardInterrupt
            _stopped(exc.__cause__)
        except click.UsageError as exc:
            hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
            click.echo(f"error: {exc.format_message()}{hint}", err=True)
            sys.exit(2)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(2)
        except KeyboardInterrupt as exc:
            _stopped(exc)
        except Exception as exc:    # a bug in graphc, not in the user's input
            if os.environ.get("GRAPHC_DEBUG"):
                raise
            _fail(f"internal error ({type(exc).__name__}: {exc}); this is a graphc bug: "
                  "rerun with GRAPHC_DEBUG=1 for the traceback", 1)


def _stopped(exc) -> None:
    """Exit for Ctrl-C, or SIGTERM/SIGHUP (interrupts.Stopped): 128 + the signal's number."""
    signum = getattr(exc, "signum", signal.SIGINT)
    _fail(f"interrupted ({signal_name(signum)})", exit_code(signum))


def _fail(message: str, code: int, everywhere: bool = False) -> None:
    """Print `error: message` and exit `code`. In a data-parallel run (parallel.py) an error
    every rank raised alike is printed by rank 0 alone; one rank's own error is printed
    with its rank and ends every rank (MPI abort): the others would wait for it forever."""
    world = current_world()
    if world is None or world.size == 1:
        click.echo(f"error: {message}", err=True)
        sys.exit(code)
    if not everywhere:
        click.echo(f"error: rank {world.rank} of {world.size}: {message}", err=True)
        sys.stderr.flush()
        world.abort(code)
    if world.rank == 0:
        click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.group(cls=Group)
@click.version_option(package_name="graphc")
@click.option("--max-memory", metavar="SIZE", envvar="GRAPHC_MAX_MEMORY", expose_value=False,
              callback=lambda ctx, param, size: set_memory_limit(size),
              help="Refuse any step needing more than SIZE (512M, 4G): the spec's parse, a data "
                   "file, a checkpoint, a parameter and its initializer, a plan arena "
                   "[default: half of RAM].")
def main():
    """graphc: a graph-definition compiler with static execution plans."""


@main.command()
@click.argument("spec", type=SPEC)
@paused_gc
def check(spec):
    """Validate SPEC; print nodes, shapes, the parameter and state counts, and what the
    eval-mode plan computes differently."""
    import numpy as np
    from .autodiff import check_params_reach_loss, grad_graph, trained_params
    from .model import load_model
    model = load_model(spec)
    gg = grad_graph(model.graph, trained_params(model.graph))
    check_params_reach_loss(model.graph, gg.grads)
    metrics = {}
    if "data" in model.spec.train:    # the training settings too, so typos surface here
        from .trainconfig import parse_train
        metrics = parse_train(model).metrics
    click.echo(model.graph.dump())
    from .blocks import instance_lines
    for line in instance_lines(model.graph):
        click.echo(line)
    for m in metrics.values():
        click.echo(f"metric {m.describe()}")
    for name, node in model.in_mode("eval").graph.nodes.items():
        if node.op != model.graph[name].op:
            click.echo(f"mode eval: {name} is {node.op} ({model.graph[name].op} in train)")
    count = sum(int(np.prod(model.store[p].shape)) for p in trained_params(model.graph))
    state = [n.name for n in model.graph.leaves("state")]
    values = sum(int(np.prod(model.store[s].shape)) for s in state)
    click.echo(f"ok: {len(model.graph.nodes)} nodes, {len(trained_params(model.graph))} "
               f"params ({count} values), " +
               (f"{len(state)} state ({values} values), " if state else "") +
               f"loss '{model.graph.loss}'")


@main.command()
def ops():
    """List the op catalog with signatures."""
    from .ops import OPS, ops_in
    groups = {"forward": "ops to write in expressions and {op:} nodes; docs/ops.md has each "
                         "one's math and gradient",
              "layer": "expand into their own params and forward ops",
              "saved": "added beside an op: a value its gradient reads",
              "backward": "added by autodiff", "update": "added by the optimizer"}
    for group, what in groups.items():
        click.echo(f"[{group}] {what}")
        for name in ops_in(group):
            click.echo(f"  {OPS[name].doc}")
    from .expr import ALIASES
    click.echo("[aliases] " + ", ".join(f"{a} = {op}" for a, op in ALIASES.items()))
