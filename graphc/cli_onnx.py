"""`graphc export` and `graphc import`: a model to and from ONNX (the extra graphc[onnx])."""
from __future__ import annotations

from pathlib import Path

import click
from .cli_common import FILE, SPEC, checkpoint_or_default
from .onnx import DEFAULT_OPSET


@click.command("export")
@click.argument("spec", type=SPEC)
@click.option("--params", type=FILE,
              help="The checkpoint .npz [default: <name>.ckpt.npz here; a spec without "
                   "train.data may go without: its values and initializers].")
@click.option("--out", required=True, type=FILE,
              help="The ONNX model file to write (MODEL.onnx).")
@click.option("--opset", type=int, default=DEFAULT_OPSET, show_default=True,
              help="The ONNX opset to write (13 up to the newest the onnx package knows).")
@click.option("--with-grad", is_flag=True,
              help="Also the training step's loss and gradients, as outputs LOSS and d:LEAF "
                   "(the labels become inputs).")
def export(spec, params, out, opset, with_grad):
    """SPEC's eval-mode forward graph, with the checkpoint's params, as an ONNX model whose
    inputs and outputs carry the spec's names (batch dims symbolic)."""
    from .onnx import require_onnx
    from .outfiles import ONNX, atomic_write, check_outputs
    require_onnx("export")
    from .onnx.export import onnx_model
    check_outputs({"--out": out}, {"--out": ONNX})      # before the work
    model, stats = _trained_model(spec, params)
    outputs = _export_outputs(model, with_grad)
    proto = onnx_model(model, stats, outputs, opset, with_grad)
    atomic_write(out, lambda f: f.write(proto.SerializeToString()), "--out")
    names = ", ".join(o.name for o in proto.graph.output)
    click.echo(f"wrote {out}: opset {opset}, outputs {names}", err=True)


def _trained_model(spec, params) -> tuple:
    """The model with the checkpoint's params, and its normalization statistics; a spec
    with no train.data and no --params keeps its values and initializers."""
    from .model import load_model
    from .predict import normalization
    from .evaluation import read_checkpoint
    model = load_model(spec)
    if params is None and "data" not in model.spec.train:
        return model, {}
    ckpt = checkpoint_or_default(model, params)
    return model, normalization(model, read_checkpoint(model, ckpt), f"checkpoint {ckpt}")


def _export_outputs(model, with_grad: bool) -> tuple:
    """The spec's outputs; a spec without any exports only its loss and gradients, and
    only with --with-grad (a model of no outputs computes nothing)."""
    from .errors import SpecError
    from .predict import choose_outputs
    if not model.graph.outputs:
        if with_grad:
            return ()
        raise SpecError(f"spec '{model.spec.name}' lists no outputs to export",
                        hint="add outputs: [NODE, ...] to the spec, or export the loss and "
                             "its gradients with --with-grad")
    return choose_outputs(model)


@click.command("import")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=FILE,
              help="The spec to write (SPEC.yaml); its params go to <stem>.ckpt.npz beside "
                   "it, the checkpoint `predict`, `export` and `train --init-from` read.")
@click.option("--force", is_flag=True,
              help="Replace <stem>.ckpt.npz even when a training run wrote it.")
def import_(model, out, force):
    """An ONNX model (the MLP and CNN subset PyTorch exports) as a graphc spec and its
    params."""
    from .onnx import require_onnx
    from .checkpoint import check_not_a_run, write
    from .outfiles import YAML, check_outputs, write_text
    require_onnx("import")
    from .onnx.importer import read_onnx, spec_text
    params_out = out.with_name(f"{out.stem}.ckpt.npz")
    check_outputs({"--out": out, "params": params_out}, {"--out": YAML})  # before the work
    if not force:
        check_not_a_run(params_out, "import")
    spec, params = read_onnx(model, str(model), out.stem)
    write(params_out, params, "params")
    write_text(out, spec_text(spec, model.name), "--out")
    click.echo(f"wrote {out} ({len(spec['nodes'])} nodes, {len(params)} params) and "
               f"{params_out}", err=True)
