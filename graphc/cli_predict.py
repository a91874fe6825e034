"""`graphc predict`: a checkpoint's outputs on new samples, printed, as JSON, or to a file."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import click
import numpy as np
from .cli_common import FILE, SPEC, checkpoint_or_default, fmt_result, json_text, nested
from .errors import SpecError


@click.command()
@click.argument("spec", type=SPEC)
@click.option("--params", type=FILE,
              help="The checkpoint .npz [default: <name>.ckpt.npz here].")
@click.option("--inputs", required=True, type=FILE,
              help="New samples: .npz or .npy (arrays named like the inputs) or .csv "
                   "(columns as train.data's); labels may be there or not.")
@click.option("--out", type=FILE,
              help="Write the outputs to FILE.npz (one array per output) or FILE.csv "
                   "(one row per sample).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--classes", is_flag=True,
              help="Also give each sample's predicted class (argmax of a classifier's "
                   "scores), as NAME.class.")
@click.option("--batch-size", type=click.IntRange(min=1),
              help="Samples per forward pass [default: 1024, as eval's].")
def predict(spec, params, inputs, out, as_json, classes, batch_size):
    """The eval-mode forward pass of SPEC's outputs on new samples, with the checkpoint's
    params and normalization; no labels needed."""
    from .data import apply_stats, n_samples
    from .model import load_model
    from .outfiles import CSV, NPZ, check_outputs
    from .predict import CHUNK, Predictor, choose_outputs, class_outputs, normalization, \
        read_inputs
    from .evaluation import read_checkpoint
    check_outputs({"--out": out}, {"--out": NPZ + CSV},      # before the work
                  {"--inputs": inputs, "--params": params})
    model = load_model(spec)
    choose_outputs(model)       # a spec with no outputs says so before asking for a checkpoint
    ckpt = checkpoint_or_default(model, params)
    saved = read_checkpoint(model, ckpt)
    predictor = Predictor(model, chunk=batch_size or CHUNK)
    arrays = apply_stats(read_inputs(predictor, inputs), normalization(model, saved,
                                                                       f"checkpoint {ckpt}"))
    outputs = predictor(arrays)
    if classes:
        outputs.update(class_outputs(model, outputs))
    samples = n_samples(arrays) if arrays else 1
    if out is not None:
        write_outputs(out, outputs, samples, predictor.per_sample())
    if as_json:
        click.echo(json_text({"outputs": {k: nested(v) for k, v in outputs.items()},
                               "samples": samples}))
    elif out is None:
        click.echo(table(outputs) if predictor.per_sample() else
                   "\n".join(f"{k} = {fmt_result(v)}" for k, v in outputs.items()))


def table(outputs: dict) -> str:
    """One line per sample: its index, then each output's values."""
    n = len(next(iter(outputs.values())))
    lines = []
    for i in range(n):
        cells = [f"{k} {_cell(v[i])}" for k, v in outputs.items()]
        lines.append(f"{i:>{len(str(n - 1))}}  " + "  ".join(cells))
    return "\n".join(lines)


def _cell(row: np.ndarray) -> str:
    row = np.asarray(row)
    if row.ndim == 0:
        return str(row) if row.dtype.kind in "iu" else f"{float(row):.6g}"
    return np.array2string(row, separator=", ", max_line_width=1 << 30,
                           formatter={"float_kind": lambda v: f"{v:.4g}"})


def write_outputs(path: Path, outputs: dict, samples: int, per_sample: bool) -> None:
    """.npz: one array per output; .csv: one row per sample, a column per value
    (NAME, or NAME[j] for the j-th of an output's flattened values per sample)."""
    from .checkpoint import write
    from .outfiles import NPZ, write_text
    if path.suffix.lower() in NPZ:
        write(path, outputs, "--out")
    elif not per_sample:
        raise SpecError(f"--out {path}: the outputs are not one row per sample, so they "
                        "do not fit a CSV table", hint="write an .npz instead")
    else:
        write_text(path, csv_text(outputs), "--out")
    shapes = ", ".join(f"{k} {list(np.shape(v))}" for k, v in outputs.items())
    click.echo(f"wrote {path}: {samples} samples; {shapes}", err=True)


def csv_text(outputs: dict) -> str:
    """The outputs as CSV text with a header row; values in their shortest exact form."""
    flat = {k: np.asarray(v).reshape(len(v), -1) for k, v in outputs.items()}
    header = [k if a.shape[1] == 1 else f"{k}[{j}]" for k, a in flat.items()
              for j in range(a.shape[1])]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    n = len(next(iter(flat.values())))
    writer.writerows([str(x) for a in flat.values() for x in a[i]] for i in range(n))
    return buf.getvalue()
