"""`graphc export` as a user types it, checked by onnx's checker and by onnxruntime.

Oracles: `graphc predict` (the forward outputs) and `graphc grad --mode eval` (the loss
and every gradient: export is the eval-mode graph) on the same held-out inputs, for every
spec in specs/, trained one epoch.
Agreement means |onnx - graphc| <= 1e-5 |graphc| + 1e-5 max|graphc| elementwise
(float32; the second term covers entries near zero in sums that cancel), the rule
docs/onnx.md states.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the ONNX tests need the extra: "
                                          "pip install 'graphc[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="the ONNX tests need the extra: "
                                                "pip install 'graphc[onnx]'")

from graphc.checkpoint import read, saved_stats                       # noqa: E402
from graphc.data import apply_stats                                   # noqa: E402
from graphc.model import label_classes, load_model                    # noqa: E402
from graphc.evaluation import STATS                                   # noqa: E402
from test_cli import ALL_SPECS, REPO, SPECS, graphc, ok, one_json     # noqa: E402

ROWS = 7                     # held-out samples: a batch size no spec trains with
TRAINED = [s for s in ALL_SPECS if "data" in load_model(SPECS / s).spec.train]
LECTURES = [s for s in ALL_SPECS if s not in TRAINED]


def assert_close(got, want, what: str) -> None:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, graphc's {want.shape}"
    scale = float(np.abs(want).max()) if want.size else 0.0
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale, err_msg=what)


def held_out(session, spec) -> dict:
    """Random inputs for every graph input: normal floats, labels in range."""
    classes = label_classes(load_model(SPECS / spec).graph)
    rng = np.random.default_rng(16)
    feeds = {}
    for i in session.get_inputs():
        shape = [ROWS if not isinstance(d, int) else d for d in i.shape]
        if "int64" in i.type:
            feeds[i.name] = rng.integers(0, classes[i.name][0], shape)
        else:
            feeds[i.name] = rng.normal(size=shape).astype(np.float32)
    return feeds


def run_onnx(path, feeds=None, spec=None) -> tuple:
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = held_out(session, spec) if feeds is None else feeds
    names = [o.name for o in session.get_outputs()]
    return feeds, dict(zip(names, session.run(None, feeds)))


def check_grads(tmp_path, spec, params, feeds, outs) -> None:
    """The loss and d:LEAF outputs equal `graphc grad --mode eval` (export is the eval-mode
    graph: running statistics, no dropout) on the inputs the training step sees (normalized with the checkpoint's statistics)."""
    if params:
        feeds = apply_stats(feeds, saved_stats(read(params[1]), params[1], STATS))
    np.savez(tmp_path / "seen.npz", **feeds)
    inputs = ["--inputs", tmp_path / "seen.npz"] if feeds else []
    result = one_json(ok(graphc("grad", SPECS / spec, *params, *inputs, "--mode", "eval",
                                "--json")))
    loss = load_model(SPECS / spec).graph.loss
    assert_close(outs[loss], result["loss"], f"{spec}: loss")
    leaves = {k for k in outs if k.startswith("d:")}
    assert leaves == {"d:" + k for k in result["grads"]}
    for name, g in result["grads"].items():
        assert_close(outs["d:" + name], g, f"{spec}: d loss / d {name}")


@pytest.mark.slow
@pytest.mark.parametrize("spec", TRAINED)
def test_export_equals_predict_and_grad(spec, tmp_path):
    ckpt = tmp_path / "ckpt.npz"
    ok(graphc("train", SPECS / spec, "--epochs", 1, "--out", ckpt, timeout=300))
    params = ["--params", ckpt]
    ok(graphc("export", SPECS / spec, *params, "--out", tmp_path / "m.onnx"))
    feeds, outs = run_onnx(tmp_path / "m.onnx", spec=spec)
    model = onnx.load(str(tmp_path / "m.onnx"))
    assert [i.name for i in model.graph.input] == list(feeds)
    assert all(i.type.tensor_type.shape.dim[0].dim_param for i in model.graph.input)
    np.savez(tmp_path / "new.npz", **feeds)
    predicted = one_json(ok(graphc("predict", SPECS / spec, *params, "--inputs",
                                   tmp_path / "new.npz", "--json")))["outputs"]
    assert list(outs) == list(predicted)
    for name, values in predicted.items():
        assert_close(outs[name], values, f"{spec}: output {name}")
    ok(graphc("export", SPECS / spec, *params, "--out", tmp_path / "g.onnx", "--with-grad"))
    feeds, outs = run_onnx(tmp_path / "g.onnx", spec=spec)
    check_grads(tmp_path, spec, params, feeds, outs)


@pytest.mark.parametrize("spec", LECTURES)
def test_lecture_specs_export_their_loss_and_gradients(spec, tmp_path):
    """A lecture spec has no outputs and no data: --with-grad exports its loss and
    gradients at the spec's values, the numbers `graphc grad` prints."""
    ok(graphc("export", SPECS / spec, "--out", tmp_path / "g.onnx", "--with-grad"))
    feeds, outs = run_onnx(tmp_path / "g.onnx", spec=spec)
    assert feeds == {}
    check_grads(tmp_path, spec, [], feeds, outs)


def test_a_spec_without_outputs_needs_with_grad(tmp_path):
    proc = graphc("export", SPECS / LECTURES[0], "--out", tmp_path / "m.onnx")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1
    assert "no outputs to export" in proc.stderr and "--with-grad" in proc.stderr
    assert not (tmp_path / "m.onnx").exists()


@pytest.fixture(scope="module")
def spiral_ckpt(tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("spiral") / "spiral.npz"
    ok(graphc("train", SPECS / "spiral_mlp.yaml", "--epochs", 2, "--out", ckpt))
    return ckpt


@pytest.mark.xdist_group("onnx_spiral")
@pytest.mark.parametrize("opset", [13, 18, 21])
def test_the_opset_asked_for_is_written_and_runs(opset, spiral_ckpt, tmp_path):
    out = tmp_path / "m.onnx"
    ok(graphc("export", SPECS / "spiral_mlp.yaml", "--params", spiral_ckpt, "--out", out,
              "--opset", opset, "--with-grad"))
    assert onnx.load(str(out)).opset_import[0].version == opset
    feeds, outs = run_onnx(out, spec="spiral_mlp.yaml")
    check_grads(tmp_path, "spiral_mlp.yaml", ["--params", spiral_ckpt], feeds, outs)


@pytest.mark.xdist_group("onnx_spiral")
@pytest.mark.parametrize("opset", [11, 999])
def test_an_opset_outside_the_range_is_one_error(opset, spiral_ckpt, tmp_path):
    proc = graphc("export", SPECS / "spiral_mlp.yaml", "--params", spiral_ckpt,
                  "--out", tmp_path / "m.onnx", "--opset", opset)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert f"--opset {opset} is outside the opsets graphc exports (13.." in proc.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_an_op_without_a_mapping_is_an_error_naming_op_and_node(monkeypatch):
    from graphc.errors import SpecError
    from graphc.onnx.export import onnx_model
    from graphc.ops import OPS
    monkeypatch.setitem(OPS, "relu", dataclasses.replace(OPS["relu"], onnx=None))
    model = load_model(SPECS / "spiral_mlp.yaml")
    with pytest.raises(SpecError) as err:
        onnx_model(model, {}, ("scores",), 17)
    assert "op 'relu' has no ONNX mapping" in str(err.value)
    assert "node 'h'" in str(err.value) and "spiral_mlp.yaml:" in str(err.value)


@pytest.mark.parametrize("command", ["export", "import"])
def test_without_the_extra_the_commands_say_what_to_install(command, tmp_path):
    """An `onnx` that fails to import stands in for a missing extra."""
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "__init__.py").write_text("raise ImportError('not installed')\n")
    (tmp_path / "m.onnx").write_bytes(b"")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    source = SPECS / "lecture_ng_j_3v.yaml" if command == "export" else tmp_path / "m.onnx"
    proc = subprocess.run([sys.executable, "-m", "graphc", command, source, "--out",
                           tmp_path / "out.file"], capture_output=True, text=True, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (f"error: graphc {command} needs the onnx package, which "
                                   "is not installed; install it with: pip install "
                                   "'graphc[onnx]'")
    assert not (tmp_path / "out.file").exists()
