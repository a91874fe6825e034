"""User mistakes met by the sixth audit (budgets, CSV cells, the API's checkpoint paths,
`--classes` on a regression, and the commands earlier audits covered least): each gets
one `error:` line (exit 2) in the words of the thing the user gave, and nothing the user
owns is replaced. The API raises the same message as a SpecError.

Oracles: hand-sized specs and files, the messages' words, and the bytes of the files a
refused run must leave alone.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import graphc  # noqa: E402
from graphc.errors import SpecError  # noqa: E402
from test_cli import SPECS, graphc as run, ok  # noqa: E402
from test_cli_hardening import one_error  # noqa: E402
from test_misuse import CLASSES, CSV_SPEC, write  # noqa: E402

SPIRAL = SPECS / "spiral_mlp.yaml"     # its smallest arena is 52.8 KiB

# one regression output: pred = x @ w, trained by mse onto real targets
REGRESSION = """\
name: reg
inputs:
  x: [batch, 2]
  t: [batch]
params:
  w: [2]
nodes:
  pred: x @ w
  loss: mse(pred, t)
outputs: [pred]
train:
  data: {npz: data.npz}
  batch_size: 2
  epochs: 1
  optimizer: {sgd: {lr: 0.1}}
"""


# --- budgets: a byte is a byte, said once ----------------------------------------------------

@pytest.mark.parametrize("budget, says", [
    # before: "memory budget 1 bytes (1 bytes) is below every plan ..."
    ("1", "memory budget 1 byte is below every plan graphc finds"),
    ("1000", "memory budget 1000 bytes is below every plan graphc finds"),
    ("2000", "memory budget 2.0 KiB (2000 bytes) is below every plan graphc finds"),
])
def test_a_budget_below_every_plan_says_its_size_once(budget, says):
    line = one_error(run("plan", SPIRAL, "--memory-budget", budget))
    assert says in line
    assert "bytes (1 bytes)" not in line and "1 bytes" not in line


# --- CSV cells: what a spreadsheet writes, nothing float() adds -------------------------------

@pytest.mark.parametrize("cell, says", [
    # before: both read as numbers (1000.0 and 3.0), the run trained on them
    ("1_000", "data.csv line 3, column 'b': '1_000' is not a number (digit separators "
              "such as '_' are not read)"),
    ("\u0663", "data.csv line 3, column 'b': '\u0663' is not a number"),   # Arabic-Indic 3
])
def test_a_csv_cell_float_reads_but_a_spreadsheet_never_writes_is_refused(tmp_path, cell,
                                                                          says):
    spec = tmp_path / "spec.yaml"
    spec.write_text(CSV_SPEC)
    (tmp_path / "data.csv").write_text(f"a,b,label\n1,2,0\n3,{cell},1\n", encoding="utf-8")
    line = one_error(run("train", spec, "--out", "c.npz", cwd=tmp_path))
    assert f"spec.yaml:12:9: {says}; every data cell must be a number, written with ASCII " \
           "digits (1000 or 1e3)" in line
    assert not (tmp_path / "c.npz").exists()


def test_plain_csv_numbers_still_read(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(CSV_SPEC)
    (tmp_path / "data.csv").write_text("a,b,label\n1e3, -2.5 ,0\n+.5,3.,1\n")
    ok(run("train", spec, "--out", "c.npz", cwd=tmp_path))


# --- the API's checkpoint paths are checked as train --out is ---------------------------------

@pytest.fixture
def reg(tmp_path):
    """The regression spec and its training data (data.npz), with the data's bytes."""
    spec = write(tmp_path, REGRESSION, x=np.array([[1.0, 0.0], [0.0, 2.0]]),
                 t=np.array([1.0, 4.0]))
    return spec, (tmp_path / "data.npz").read_bytes()


def test_the_api_refuses_to_save_over_the_training_data(reg, tmp_path):
    # before: Model.save wrote its checkpoint over data.npz (the next fit failed)
    spec, data = reg
    model = graphc.load(spec)
    with pytest.raises(SpecError, match=r"path .*data\.npz is the file train\.data reads; "
                                        r"writing it would replace it"):
        model.save(tmp_path / "data.npz")
    with pytest.raises(SpecError, match=r"out .*data\.npz is the file train\.data reads"):
        model.fit(epochs=1, out=tmp_path / "data.npz")
    assert (tmp_path / "data.npz").read_bytes() == data


def test_the_api_refuses_data_fed_by_arrays_too(reg, tmp_path):
    """fit(data=arrays) reads no file, but data.npz is still the user's data."""
    spec, data = reg
    with pytest.raises(SpecError, match="is the file train.data reads"):
        graphc.load(spec).fit({"x": np.ones((2, 2)), "t": np.ones(2)}, epochs=1,
                              out=tmp_path / "data.npz")
    assert (tmp_path / "data.npz").read_bytes() == data


def test_train_out_onto_the_spec_file_is_refused(tmp_path):
    # before: a spec saved as net.npz was replaced by its own checkpoint (exit 0)
    spec = tmp_path / "net.npz"
    spec.write_text(REGRESSION)
    np.savez(tmp_path / "data.npz", x=np.ones((2, 2)), t=np.ones(2))
    line = one_error(run("train", spec, "--out", "net.npz", cwd=tmp_path))
    assert line == "error: --out net.npz is the spec file; writing it would replace it; " \
                   "name another file for --out"
    assert spec.read_text() == REGRESSION
    with pytest.raises(SpecError, match="path .*net.npz is the spec file"):
        graphc.load(spec).save(spec)
    assert spec.read_text() == REGRESSION


# --- --classes: only outputs that hold classes ------------------------------------------------

def test_classes_on_a_regression_output_is_refused(reg, tmp_path):
    # before: pred.class = pred > 0, classes made up for a quantity (exit 0)
    spec, _ = reg
    ok(run("train", spec, "--out", "c.npz", cwd=tmp_path))
    line = one_error(run("predict", spec, "--params", "c.npz", "--inputs", "data.npz",
                         "--classes", cwd=tmp_path))
    assert line.endswith("spec.yaml:8:9: node 'pred': output 'pred' is the prediction of "
                         "regression loss 'loss' (mse), not class scores: it has no classes "
                         "to give; leave out --classes (classes=True in the API); if 'pred' "
                         "is a classifier, say so with train.metrics: {accuracy: [pred, "
                         "TARGET]}")
    model = graphc.load(spec, tmp_path / "c.npz")
    with pytest.raises(SpecError, match="not class scores"):
        model.predict({"x": np.ones((1, 2))}, classes=True)


def test_classes_skip_a_regression_head_beside_a_classifier(tmp_path):
    """Two heads: class scores (softmax cross-entropy) and a regression r [batch, 2] (mse).
    Only scores get scores.class (before: r.class was the argmax of two quantities).
    W = 0: scores = x, so x = [2, 1] is class 0 and x = [0, 3] class 1."""
    text = CLASSES.replace("  W: [2, 2]\n", "  W: {shape: [2, 2], init: zeros}\n  "
                           "V: [2, 2]\n").replace(
        "  scores: x @ W\n  loss: softmax_cross_entropy(scores, y)\n",
        "  scores: x + x @ W\n  r: x @ V\n"
        "  loss: softmax_cross_entropy(scores, y) + mse(r, x)\n").replace(
        "outputs: [scores]", "outputs: [scores, r]")
    spec = write(tmp_path, text, x=np.eye(2), y=np.array([0, 1]))
    got = graphc.load(spec).predict({"x": np.array([[2.0, 1.0], [0.0, 3.0]])}, classes=True)
    assert sorted(got) == ["r", "scores", "scores.class"]
    assert got["scores.class"].tolist() == [0, 1]


def test_a_regression_declared_a_classifier_cuts_at_one_half(tmp_path):
    """An accuracy metric over the prediction makes it a 0/1 classifier: cut at 0.5, the
    threshold training's accuracy uses (before: at 0, every sample below was class 1).
    w = [0.4, 0.4]: x=[1,0] -> 0.4 (class 0), x=[0,2] -> 0.8 (class 1), x=[-1,0] -> -0.4
    (class 0)."""
    text = REGRESSION.replace("  epochs: 1\n", "  epochs: 1\n  metrics: {accuracy: [pred, t]}\n"
                              ).replace("  w: [2]\n", "  w: {shape: [2], init: {constant: "
                                                      "{value: 0.4}}}\n")
    spec = write(tmp_path, text, x=np.eye(2), t=np.array([0.0, 1.0]))
    got = graphc.load(spec).predict({"x": np.array([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]])},
                                    classes=True)
    assert got["pred.class"].tolist() == [0, 1, 0]


def test_classes_on_a_reshaped_sigmoid_cuts_at_one_half(tmp_path):
    """A probability stays one through a reshape: cut at 0.5, not at 0 (before: every
    sample was class 1, since a probability is never below 0). W = [[1], [1]]: x = [-3, 0]
    gives sigmoid(-3) = 0.047 (class 0), x = [3, 0] gives 0.953 (class 1)."""
    text = CLASSES.replace("  W: [2, 2]\n", "  W: {shape: [2, 1], init: {constant: "
                                              "{value: 1.0}}}\n").replace(
        "  scores: x @ W\n  loss: softmax_cross_entropy(scores, y)\n",
        "  p: sigmoid(x @ W)\n  scores: reshape(p, shape=[batch])\n"
        "  loss: mean(-(y * log(scores)))\n").replace(
        "y: {shape: [batch], dtype: int64}", "y: [batch]")
    spec = write(tmp_path, text, x=np.eye(2), y=np.array([0.0, 1.0]))
    got = graphc.load(spec).predict({"x": np.array([[-3.0, 0.0], [3.0, 0.0]])}, classes=True)
    assert got["scores.class"].tolist() == [0, 1]


# --- time, checkpoints and ONNX import ------------------------------------------------------

def test_time_with_more_steps_than_memory_holds_is_refused_before_timing():
    # before: "internal error (MemoryError: Unable to allocate 7.28 TiB ...)", exit 1
    line = one_error(run("time", SPIRAL, "--steps", "1000000000000", "--warmup", "0"))
    assert "error: timing 1000000000000 steps (a time per step and per kernel call) needs " \
           in line and "above the memory limit" in line


def test_a_checkpoint_holding_nan_says_nan_and_where(tmp_path):
    # before: "'W' holds .nan, but float32 needs a number from -3.40282e+38 to 3.40282e+38"
    spec = write(tmp_path, REGRESSION, x=np.ones((2, 2)), t=np.ones(2))
    ok(run("train", spec, "--out", "c.npz", cwd=tmp_path))
    arrays = dict(np.load(tmp_path / "c.npz"))
    arrays["w"] = np.array([1.0, np.nan], np.float32)
    np.savez(tmp_path / "nan.npz", **arrays)
    line = one_error(run("predict", spec, "--params", "nan.npz", "--inputs", "data.npz",
                         cwd=tmp_path))
    assert line == "error: checkpoint nan.npz: 'w' holds NaN at index [1]; the file was " \
                   "edited or damaged: use a checkpoint graphc wrote"


def _onnx_model(tmp_path, name: str, nodes, outputs, weights=()):
    """An ONNX model of `nodes` over input x [N, 2] (float32), written to NAME.onnx."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])
    graph = helper.make_graph(nodes, "g", [x], outputs,
                              [numpy_helper.from_array(w, n) for n, w in weights])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              tmp_path / f"{name}.onnx")


def test_import_of_a_model_without_outputs_says_so(tmp_path):
    # before: "internal error (IndexError: list index out of range)", exit 1
    _onnx_model(tmp_path, "none", [], [])
    line = one_error(run("import", "none.onnx", "--out", "none.yaml", cwd=tmp_path))
    assert line == "error: none.onnx: the model lists no outputs, so there is nothing to " \
                   "predict and no loss to add; export the model with its outputs"
    assert not (tmp_path / "none.yaml").exists()


def test_import_of_a_nan_weight_is_refused_naming_it(tmp_path):
    # before: imported (exit 0) into a checkpoint every command then refused as damaged
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    _onnx_model(tmp_path, "nan", [helper.make_node("MatMul", ["x", "W"], ["y"])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
                [("W", np.array([[1, 0], [0, np.nan]], np.float32))])
    line = one_error(run("import", "nan.onnx", "--out", "nan.yaml", cwd=tmp_path))
    assert line.endswith("nan.onnx: node 'y' (MatMul): weight 'W' holds NaN at index [1, 1]; "
                         "export the model from weights that are finite numbers")
    assert not (tmp_path / "nan.yaml").exists() and not (tmp_path / "nan.ckpt.npz").exists()


# --- the API's flags are booleans -----------------------------------------------------------

@pytest.mark.parametrize("call, says", [
    # before: "no" is truthy: classes were added, the plan reused memory (no error)
    (lambda m: m.predict({"x": np.ones((1, 2))}, classes="no"),
     "classes must be True or False, got 'no'; e.g. classes=True"),
    (lambda m: m.plan(4, reuse="no"), "reuse must be True or False, got 'no'; e.g. reuse=True"),
])
def test_an_api_flag_given_a_string_is_refused(reg, call, says):
    spec, _ = reg
    model = graphc.load(spec)
    with pytest.raises(SpecError) as err:
        call(model)
    assert str(err.value) == says


def test_an_api_flag_takes_numpy_bools(reg):
    spec, _ = reg
    plan = graphc.load(spec).plan(4, reuse=np.bool_(False))
    assert plan.reuse is False


def test_a_resume_with_nothing_left_to_train_claims_no_speed(reg, tmp_path):
    # before: "final: loss ... (2 samples)  (0 samples/s) -> c.npz"
    spec, _ = reg
    ok(run("train", spec, "--out", "c.npz", "--epochs", "2", cwd=tmp_path))
    proc = ok(run("train", spec, "--resume", "c.npz", "--epochs", "1", cwd=tmp_path))
    assert "c.npz is already at epoch 2 of 1: nothing left to train" in proc.stdout
    final = proc.stdout.splitlines()[-1]
    assert final.startswith("final: loss ") and final.endswith(
        " on the training set (2 samples) -> c.npz"), final
