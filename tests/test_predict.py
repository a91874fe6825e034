"""`graphc predict` as a user types it, and `graphc eval`'s default checkpoint.

Oracles: a two-weight linear model whose outputs are worked out by hand
(s = x @ W + b with W = [[1], [2]], b = [0.5]); a trained checkpoint's outputs
recomputed with NumPy from its own arrays ((x - mean) / std, then the matmuls);
argmax and thresholds read off small hand-written scores.
"""
from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

from graphc.model import load_model
from test_cli import graphc, load_npz, ok, one_json

LINEAR = """\
name: lin
inputs:
  x: [batch, 2]
  z: [batch, 1]
  y: [batch, 1]
params:
  W: [2, 1]
  b: [1]
nodes:
  s: x @ W + b
  t: s + z
  p: sigmoid(s)
  loss: mse(s, y)
outputs: [s]
train:
  data: {csv: data.csv, columns: {y: target, x: [a, c]}}
"""
X = np.array([[1.0, 1.0], [0.0, -1.0], [2.0, 0.0]], dtype=np.float32)
S = [[3.5], [-1.5], [2.5]]                 # x @ [[1], [2]] + 0.5, row by row


@pytest.fixture
def lin(tmp_path):
    (tmp_path / "lin.yaml").write_text(LINEAR)
    np.savez(tmp_path / "p.npz", W=np.array([[1.0], [2.0]], np.float32),
             b=np.array([0.5], np.float32))
    np.savez(tmp_path / "x.npz", x=X)
    return tmp_path


def predict(folder, *args):
    return graphc("predict", "lin.yaml", "--params", "p.npz", *args, cwd=folder)


def error_line(proc) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    return lines[0]


def test_predict_json_gives_the_outputs_by_hand(lin):
    out = one_json(ok(predict(lin, "--inputs", "x.npz", "--json")))
    assert out == {"outputs": {"s": S}, "samples": 3}


def test_predict_prints_one_line_per_sample(lin):
    lines = ok(predict(lin, "--inputs", "x.npz")).stdout.splitlines()
    assert lines == ["0  s [3.5]", "1  s [-1.5]", "2  s [2.5]"]


def test_predict_from_npy_csv_and_in_chunks_agree(lin):
    np.save(lin / "x.npy", X)
    # the label column 'target' may be there or not; x's columns are named in the spec
    (lin / "x.csv").write_text("c,a,target\n1,1,9\n-1,0,9\n0,2,9\n")
    (lin / "nolabel.csv").write_text("a,c\n1,1\n0,-1\n2,0\n")
    for args in (["--inputs", "x.npy"], ["--inputs", "x.csv"], ["--inputs", "nolabel.csv"],
                 ["--inputs", "x.npz", "--batch-size", "2"]):
        assert one_json(ok(predict(lin, *args, "--json")))["outputs"] == {"s": S}, args


@pytest.mark.parametrize("header, rows", [("c,target,a", ["1,9,1", "-1,9,0", "0,9,2"]),
                                          ("c,a", ["1,1", "-1,0", "0,2"])])
def test_csv_rest_takes_the_columns_no_input_claims(tmp_path, header, rows):
    (tmp_path / "lin.yaml").write_text(LINEAR.replace("x: [a, c]", "x: rest"))
    np.savez(tmp_path / "p.npz", W=np.array([[1.0], [2.0]], np.float32),
             b=np.array([0.5], np.float32))
    (tmp_path / "x.csv").write_text("\n".join([header] + rows) + "\n")
    # x takes the columns left, in file order: [c, a]; 'target' is y's, there or not
    got = one_json(ok(predict(tmp_path, "--inputs", "x.csv", "--json")))["outputs"]["s"]
    assert got == [[1 + 2 * 1 + 0.5], [-1 + 0 + 0.5], [0 + 2 * 2 + 0.5]]


def test_a_spec_without_outputs_says_what_to_add(lin):
    (lin / "lin.yaml").write_text(LINEAR.replace("outputs: [s]\n", ""))
    line = error_line(predict(lin, "--inputs", "x.npz"))
    assert "spec 'lin' lists no outputs to predict; add outputs: [NODE, ...]" in line


def test_predict_writes_npz_and_csv(lin):
    ok(predict(lin, "--inputs", "x.npz", "--out", "o.npz"))
    got = load_npz(lin / "o.npz")
    assert list(got) == ["s"] and got["s"].dtype == np.float32
    np.testing.assert_array_equal(got["s"], np.array(S, np.float32))
    proc = ok(predict(lin, "--inputs", "x.npz", "--out", "o.csv"))
    assert proc.stdout == "" and "wrote o.csv: 3 samples" in proc.stderr
    rows = list(csv.reader((lin / "o.csv").read_text().splitlines()))
    assert rows == [["s"], ["3.5"], ["-1.5"], ["2.5"]]


def test_classes_are_the_argmax_or_the_threshold(tmp_path):
    spec = LINEAR.replace("outputs: [s]", "outputs: [s, p, q]").replace(
        # s trained as a logit (an mse prediction would be a quantity: no classes)
        "  loss: mse(s, y)", "  q: x * 1.0\n  loss: binary_cross_entropy_with_logits(s, y)")
    (tmp_path / "lin.yaml").write_text(spec)
    np.savez(tmp_path / "p.npz", W=np.array([[1.0], [2.0]], np.float32),
             b=np.array([-0.5], np.float32))
    np.savez(tmp_path / "x.npz", x=np.array([[1, 1], [0, -1], [0, 0.4]], np.float32))
    out = one_json(ok(predict(tmp_path, "--inputs", "x.npz", "--classes", "--json")))
    # s = 2.5, -2.5, 0.3: a logit, so class 1 above 0; p = sigmoid(s), class 1 above 0.5
    assert out["outputs"]["s.class"] == [1, 0, 1]
    assert out["outputs"]["p.class"] == [1, 0, 1]
    assert out["outputs"]["q.class"] == [0, 0, 1]     # argmax of [1, 1], [0, -1], [0, 0.4]


def test_the_forward_plan_is_pruned_to_the_outputs(lin):
    from graphc.predict import forward_graph
    graph = forward_graph(load_model(lin / "lin.yaml").graph, ["s"])
    assert "loss" not in graph.nodes and "y" not in graph.nodes and "t" not in graph.nodes
    assert {"x", "W", "b", "s"} <= set(graph.nodes)


def test_an_input_the_outputs_need_and_the_file_lacks_is_a_located_error(lin):
    (lin / "lin.yaml").write_text(LINEAR.replace("outputs: [s]", "outputs: [t]"))
    line = error_line(predict(lin, "--inputs", "x.npz"))
    assert re.match(r"error: lin\.yaml:4:3: node 'z': output 't' needs input 'z', which is "
                    r"not in x\.npz \(found: x\)", line), line
    (lin / "x.csv").write_text("a,c\n1,1\n")
    assert "needs input 'z', which is not in x.csv" in error_line(
        predict(lin, "--inputs", "x.csv"))


@pytest.mark.parametrize("setup, args, says", [
    (None, ["--inputs", "missing.npz"], "data file not found: missing.npz"),
    ("bad.npz", ["--inputs", "bad.npz"], "cannot read bad.npz"),
    (None, ["--inputs", "x.txt"], "expected a .npz, .npy or .csv file"),
    (None, ["--inputs", "x.npz", "--out", "o.txt"], "--out o.txt: expected a .npz or .csv"),
    ("ragged.csv", ["--inputs", "ragged.csv"], "ragged.csv line 3: 1 fields"),
    ("text.csv", ["--inputs", "text.csv"], "text.csv line 2, column 'c': 'one' is not a num"),
    (None, ["--inputs", "x.npz", "--out", "nofolder/o.npz"], "cannot write --out nofolder/o.npz"),
])
def test_bad_files_are_one_error_line(lin, setup, args, says):
    contents = {"bad.npz": "not a zip", "ragged.csv": "a,c\n1,2\n3\n",
                "text.csv": "a,c\n1,one\n"}
    if setup:
        (lin / setup).write_text(contents[setup])
    assert says in error_line(predict(lin, *args))


def test_a_checkpoints_normalization_is_applied(tmp_path):
    (tmp_path / "lin.yaml").write_text(LINEAR.replace(
        "columns: {y: target, x: [a, c]}}", "columns: {y: target, x: [a, c]}, "
        "normalize: standard}\n  epochs: 3\n  batch_size: 2"))
    (tmp_path / "data.csv").write_text("a,c,target,z\n1,2,3,0\n2,0,1,0\n4,1,2,0\n0,3,1,0\n")
    ok(graphc("train", "lin.yaml", "--out", "p.npz", cwd=tmp_path))
    ckpt = load_npz(tmp_path / "p.npz")
    mean, std = ckpt["__graphc__/stats/x/mean"], ckpt["__graphc__/stats/x/std"]
    assert not np.allclose(mean, 0)
    np.savez(tmp_path / "x.npz", x=X)
    got = one_json(ok(predict(tmp_path, "--inputs", "x.npz", "--json")))["outputs"]["s"]
    want = ((X - mean) / std).astype(np.float32) @ ckpt["W"] + ckpt["b"]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.savez(tmp_path / "plain.npz", W=ckpt["W"], b=ckpt["b"])   # params without the stats
    line = error_line(graphc("predict", "lin.yaml", "--params", "plain.npz", "--inputs",
                             "x.npz", cwd=tmp_path))
    assert "checkpoint plain.npz has no normalization statistics" in line


def test_predict_and_eval_default_to_the_specs_checkpoint(tmp_path):
    (tmp_path / "lin.yaml").write_text(LINEAR)
    (tmp_path / "data.csv").write_text("a,c,target,z\n1,2,3,0\n2,0,1,0\n")
    for command in (["eval", "lin.yaml"], ["predict", "lin.yaml", "--inputs", "x.npz"]):
        line = error_line(graphc(*command, cwd=tmp_path))
        assert "no --params given, and there is no lin.ckpt.npz here" in line
        assert "graphc train lin.yaml" in line
    ok(graphc("train", "lin.yaml", "--epochs", "1", cwd=tmp_path))
    assert (tmp_path / "lin.ckpt.npz").is_file()
    assert one_json(ok(graphc("eval", "lin.yaml", "--json", cwd=tmp_path)))["samples"] == 2
    np.savez(tmp_path / "x.npz", x=X)
    assert one_json(ok(graphc("predict", "lin.yaml", "--inputs", "x.npz", "--json",
                              cwd=tmp_path)))["samples"] == 3


def test_predict_is_in_the_help(lin):
    assert "predict" in ok(graphc("--help")).stdout
    assert json.loads(ok(predict(lin, "--inputs", "x.npz", "--json")).stdout)["samples"] == 3


CENTERED = """\
name: centered
inputs:
  x: [batch, 1]
  y: [batch, 1]
params:
  w: [1]
nodes:
  c: x - mean(x, axis=0)
  {soft}
  loss: mse(c * w, y)
outputs: [c{extra}]
"""


@pytest.mark.parametrize("soft,extra", [("", ""), ("q: softmax(x * w, axis=0)", ", q")],
                         ids=["mean-axis-0", "softmax-axis-0"])
def test_rows_that_mix_across_the_batch_are_predicted_in_one_pass(tmp_path, soft, extra):
    """Chunks of --batch-size rows gave x - mean(chunk): [-1, 1, -1, 1] for x = 0, 2, 4, 6
    with --batch-size 2 (the review's repro); the mean is over every row: -3, -1, 1, 3."""
    (tmp_path / "centered.yaml").write_text(CENTERED.format(soft=soft, extra=extra))
    np.savez(tmp_path / "p.npz", w=np.ones(1, np.float32))
    np.savez(tmp_path / "x.npz", x=np.array([[0.0], [2.0], [4.0], [6.0]], np.float32))
    out = one_json(ok(graphc("predict", "centered.yaml", "--params", "p.npz", "--inputs",
                             "x.npz", "--batch-size", "2", "--json", cwd=tmp_path)))
    assert out["outputs"]["c"] == [[-3.0], [-1.0], [1.0], [3.0]]
    if extra:
        q = np.array(out["outputs"]["q"])[:, 0]
        assert q.sum() == pytest.approx(1.0, abs=1e-6)      # one softmax over all 4 rows


def test_rest_columns_are_taken_by_name_as_in_training(tmp_path):
    """`x: rest` took the new file's columns in its own order: x3,x2,x1 predicted 1.52
    where x1,x2,x3 gave -1.46, without a word."""
    import shutil
    from test_cli import SPECS
    shutil.copytree(SPECS, tmp_path / "specs")
    spec = tmp_path / "specs" / "csv_regression.yaml"
    ok(graphc("train", spec, "--epochs", "2", "--out", "c.npz", cwd=tmp_path))
    rows = [[0.5, -1.0, 2.0], [1.0, 0.0, -0.5]]
    (tmp_path / "a.csv").write_text("x1,x2,x3\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    (tmp_path / "b.csv").write_text("x3,y,x2,x1\n" + "".join(f"{c},9,{b},{a}\n"
                                                            for a, b, c in rows))
    (tmp_path / "c.csv").write_text("x3,x1\n" + "".join(f"{c},{a}\n" for a, b, c in rows))
    out = {}
    for name in ("a", "b"):
        out[name] = one_json(ok(graphc("predict", spec, "--params", "c.npz", "--inputs",
                                       f"{name}.csv", "--json", cwd=tmp_path)))["outputs"]
    assert out["a"] == out["b"]
    line = error_line(graphc("predict", spec, "--params", "c.npz", "--inputs", "c.csv",
                             cwd=tmp_path))
    assert "has no column 'x2', which the model was trained on" in line
