"""`graphc train` and `graphc eval`: training with progress and plots; a checkpoint's metrics."""
from __future__ import annotations

import sys
from pathlib import Path

import click
from .cli_common import (FILE, FOLDER, MEMORY_BUDGET, SPEC, FiniteFloat, checkpoint_or_default,
                         default_checkpoint, json_text)


@click.command()
@click.argument("spec", type=SPEC)
@click.option("--out", type=FILE,
              help="Checkpoint path, named .npz (default <name>.ckpt.npz here).")
@click.option("--json", "as_json", is_flag=True, help="Print the final metrics as JSON.")
@click.option("--epochs", type=click.IntRange(min=1))
@click.option("--batch-size", type=click.IntRange(min=1))
@click.option("--lr", type=FiniteFloat(min=0, min_open=True))
@click.option("--seed", type=click.IntRange(min=0))
@click.option("--resume", type=FILE,
              help="Continue the run saved in this checkpoint (same spec and settings); "
                   "--out defaults to it.")
@click.option("--init-from", type=FILE,
              help="Start from this checkpoint's params that match by name and shape.")
@click.option("--save-every", type=click.IntRange(min=1),
              help="Save a checkpoint every N epochs [default: each epoch end, at most "
                   "once a second].")
@click.option("--plot", type=FOLDER,
              help="Write loss/metric curves per epoch (and a 2-D decision boundary) to DIR.")
@click.option("--force", is_flag=True,
              help="Replace the default checkpoint even when another spec file saved it.")
@MEMORY_BUDGET
def train(spec, out, as_json, epochs, batch_size, lr, seed, resume, init_from, save_every,
          plot, force, memory_budget):
    """Train SPEC on its train.data; save a checkpoint."""
    from .model import load_model
    from .checkpoint import check_same_spec_file, init_from as load_init
    from .datasources import check_not_inputs
    from .outfiles import NPZ, destination
    from .parallel import world
    from .plots import check_plot_folder
    from .train import train as run_train
    from .trainconfig import parse_train
    if resume and init_from:
        raise click.UsageError("--resume and --init-from exclude each other")

    def prepare() -> tuple:
        model = load_model(spec, seed)
        cfg = parse_train(model, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                          memory_budget=memory_budget)
        chosen = out or resume
        path = chosen or default_checkpoint(model)
        destination(path, "--out" if out else "checkpoint", NPZ)   # all checked before the work
        check_not_inputs(path, "--out" if out else "checkpoint", model.spec.path, cfg.data)
        if not (chosen or force):
            check_same_spec_file(path, model)
        if plot:
            check_plot_folder(plot)
        return model, cfg, path, load_init(init_from, model) if init_from else []
    # under mpiexec: one rank's bad input stops all, and rank 0 alone reports (scaling.md)
    model, cfg, out, notes = world().settle(prepare)
    quiet = world().rank > 0
    for note in [] if quiet else notes:
        click.echo(f"warning: --init-from: {note}", err=True)
    progress = _progress(cfg.epochs, as_json)
    with progress as log:
        result = run_train(model, cfg, out=out, log=log, resume=resume, save_every=save_every)
    if quiet:
        return
    progress.finish(result)
    for note in result.notes:
        click.echo(note, err=as_json)
    click.echo(_final_line(result, out), err=as_json)
    if plot:
        _write_plots(plot, model, cfg, result.history, as_json)
    if as_json:
        click.echo(json_text(result.json()))


def _write_plots(out_dir: Path, model, cfg, history, quiet_stdout: bool) -> None:
    from .plots import INSTALL, write_plots
    from .train import load_dataset
    written, with_mpl = write_plots(out_dir, model, history, load_dataset(model, cfg).train,
                                    cfg.metrics)
    if not with_mpl:
        click.echo(f"matplotlib is not installed, so no pictures were drawn; the numbers are "
                   f"in CSV instead. To draw them: {INSTALL}", err=True)
    click.echo("plots: " + ", ".join(str(p) for p in written), err=quiet_stdout)


def _final_line(result, out) -> str:
    """The final numbers, named as the epoch lines name them (val_ on the validation
    split), with the split, its size and the epoch of the params they measure."""
    valid = result.split == "validation"
    numbers = {"loss": result.loss, **result.metrics}
    summary = " ".join(f"{'val_' if valid else ''}{k} {v:.4f}" for k, v in numbers.items())
    where = "the validation split" if valid else "the training set"
    params = f", params of epoch {result.restored_epoch}" if result.restored_epoch else ""
    rate = f"  ({result.samples_per_s:.0f} samples/s)" if result.samples_per_s else ""
    return f"final: {summary} on {where} ({result.samples} samples{params}){rate} -> {out}"


class _progress:
    """A click progress bar on a terminal; plain per-epoch lines otherwise."""

    def __init__(self, epochs: int, quiet_stdout: bool):
        self.epochs, self.err = epochs, quiet_stdout
        self.every = max(1, epochs // 30)
        self.bar = None
        self.printed = None          # the epoch of the last line printed

    def __enter__(self):
        if sys.stderr.isatty() if self.err else sys.stdout.isatty():
            self.bar = click.progressbar(length=self.epochs, label="training",
                                         file=sys.stderr if self.err else None)
            self.bar.__enter__()
        return self.log

    def line(self, e) -> str:
        return f"epoch {e.epoch:>4}/{self.epochs}  loss {e.loss:.4f}  " + "  ".join(
            f"{k} {v:.4f}" for k, v in e.metrics.items()) + f"  lr {e.lr:.4g}"

    def log(self, e):
        if self.bar is not None:
            self.bar.label = self.line(e)
            self.bar.update(1)
        elif e.epoch % self.every == 0 or e.epoch in (1, self.epochs):
            click.echo(self.line(e), err=self.err)
            self.printed = e.epoch

    def finish(self, result) -> None:
        """After training: the last epoch's line where it was skipped (early stopping ends
        between printed epochs), then the line of the epoch whose params were restored."""
        last = result.history[-1] if result.history else None
        restored = next((e for e in result.history if e.epoch == result.restored_epoch), None)
        if last is not None and last.epoch != self.printed and last is not restored:
            click.echo(self.line(last), err=self.err)
        if restored is not None:
            click.echo(f"{self.line(restored)}  <- restored", err=self.err)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)


@click.command("eval")
@click.argument("spec", type=SPEC)
@click.option("--params", type=FILE,
              help="The checkpoint .npz to evaluate [default: <name>.ckpt.npz here].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def eval_(spec, params, as_json):
    """Loss and metrics of a checkpoint on SPEC's data (its validation split if it has one)."""
    from .model import load_model
    from .evaluation import evaluate_checkpoint
    model = load_model(spec)
    result = evaluate_checkpoint(model, checkpoint_or_default(model, params))
    if as_json:
        click.echo(json_text(result))
        return
    metrics = "".join(f"  {k} {v:.4f}" for k, v in result["metrics"].items())
    click.echo(f"loss {result['loss']:.4f}{metrics}  ({result['samples']} samples)")
