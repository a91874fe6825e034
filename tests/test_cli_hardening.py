"""Bad input on the newest features, as a user meets it: one `error:` line naming the flag or
the spec line and what was expected, exit 2, nothing written; the Python API raises the
same message as graphc's own SpecError.

Oracles: the file names a command was given (nothing appears under them), the messages'
words, and hand-sized specs whose node counts are counted by hand.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import graphc  # noqa: E402
from graphc.errors import SpecError  # noqa: E402
import test_cli  # noqa: E402
from test_cli import SPECS, SPIRAL, graphc as run, ok  # noqa: E402

LECTURE = SPECS / "lecture_cs231n_add_mul.yaml"


def one_error(proc) -> str:
    """The single `error:` line of a run that refused its input (exit 2, no traceback)."""
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


@pytest.mark.parametrize("args, says", [
    (["grad", LECTURE, "--out", "g.txt"], "--out g.txt: expected a .npz file; name it g.npz"),
    (["grad", LECTURE, "--dot", "g.png"], "--dot g.png: expected a .dot or .gv file; name it "
                                          "g.dot"),
    (["plan", LECTURE, "--memory", "m.png"], "--memory m.png: expected a .svg file"),
    (["plan", LECTURE, "--dot", "p.svg"], "--dot p.svg: expected a .dot or .gv file"),
    (["train", SPIRAL, "--epochs", "1", "--out", "z.txt"], "--out z.txt: expected a .npz"),
    (["train", SPIRAL, "--epochs", "1", "--out", "ckpt"], "--out ckpt: expected a .npz file; "
                                                         "name it ckpt.npz"),
    (["predict", SPIRAL, "--inputs", "x.npz", "--out", "o.txt"], "--out o.txt: expected a "
                                                                 ".npz or .csv file"),
    (["export", SPIRAL, "--out", "m.npz"], "--out m.npz: expected a .onnx file"),
])
def test_an_output_named_for_another_format_is_refused_before_the_work(tmp_path, args, says):
    """graphc writes each output in one format; a name saying another is refused, and
    nothing is written under any name."""
    assert says in one_error(run(*args, cwd=tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_the_formats_own_names_are_written_in_any_case(tmp_path):
    ok(run("grad", LECTURE, "--out", "g.NPZ", "--dot", "g.gv", cwd=tmp_path))
    with np.load(tmp_path / "g.NPZ") as grads:
        assert float(grads["x"]) == -4.0             # d (x + y) z / dx = z
    assert (tmp_path / "g.gv").read_text().startswith("digraph")


def test_the_api_refuses_a_checkpoint_named_for_another_format(tmp_path):
    m = graphc.load(SPECS / "lecture_cs221_linear_regression.yaml")
    with pytest.raises(SpecError, match=r"checkpoint .*m\.txt: expected a \.npz file"):
        m.save(tmp_path / "m.txt")
    assert list(tmp_path.iterdir()) == []


def test_the_cli_helper_stretches_its_timeout_under_load_but_not_forever(monkeypatch):
    cores = test_cli.os.cpu_count()
    monkeypatch.setattr(test_cli.os, "getloadavg", lambda: (0.5, 0.0, 0.0))
    assert test_cli.load_scaled(120) == 120
    monkeypatch.setattr(test_cli.os, "getloadavg", lambda: (3.0 * cores, 0.0, 0.0))
    assert test_cli.load_scaled(120) == 360
    monkeypatch.setattr(test_cli.os, "getloadavg", lambda: (100.0 * cores, 0.0, 0.0))
    assert test_cli.load_scaled(120) == 120 * test_cli.MAX_LOAD_SCALE


EMBEDDING = """\
inputs:
  ids: {ids}
  y: {{shape: [batch], dtype: int64}}
params:
  E: {{shape: [10, 4], init: {{normal: {{std: 0.1}}}}}}
  W: [4, 2]
nodes:
  e: embedding(ids, E)
  scores: sum(e, axis=1) @ W
  loss: softmax_cross_entropy(scores, y)
"""


def test_embedding_speaks_of_ids_not_class_labels(tmp_path):
    spec = tmp_path / "emb.yaml"
    spec.write_text(EMBEDDING.format(ids="[batch, 3]"))
    line = one_error(run("check", spec))
    assert "emb.yaml:8:6: node 'e': input 1 of embedding is 'ids' (float32), but must be " \
           "integer ids (row indices of the table); declare ids with dtype: int64" in line
    spec.write_text(EMBEDDING.format(ids="{shape: [batch, 3], dtype: int64}"))
    np.savez(tmp_path / "ids.npz", ids=np.array([[1, 2, 12]]), y=np.array([0]))
    line = one_error(run("grad", spec, "--inputs", tmp_path / "ids.npz"))
    assert "node 'ids': id 12 at index [0, 2] is out of range for 10 rows (expected 0..9): " \
           "'e' (embedding) reads it against the 10 rows of 'E'" in line
    assert "class" not in line


REPEATED = """\
inputs:
  x: [batch, 4]
blocks:
  cell:
    inputs: [h]
    params: {{W: [4, 4]}}
    nodes: {{out: tanh(h @ W)}}
nodes:
  a: {{block: cell, inputs: [x]{keys}}}
  loss: sum(a * a)
"""


@pytest.mark.parametrize("keys, nodes", [
    ("", 6),
    (", repeat: null", 6),
    (", repeat: null, chain: null, per_step: null, share: null, params: null", 6),
    (", repeat: 2, chain: null, per_step: null, share: null", 9),
])
def test_an_instance_key_given_null_is_as_if_absent(tmp_path, keys, nodes):
    """x, a.W, a/out/matmul, a (the tanh, the instance's output), loss/mul, loss: 6 nodes;
    a second repetition adds a/1.W, a/1/out/matmul and a/1."""
    spec = tmp_path / "rep.yaml"
    spec.write_text(REPEATED.format(keys=keys))
    assert f"ok: {nodes} nodes" in ok(run("check", spec)).stdout


@pytest.fixture(scope="module")
def spiral():
    return graphc.load(SPIRAL)


@pytest.mark.parametrize("call, says", [
    (lambda m: m.fit(epochs=1, lr=-1), "lr must be a finite number > 0, got -1"),
    (lambda m: m.fit(epochs=1, lr=float("nan")), "lr must be a finite number > 0, got .nan"),
    (lambda m: m.fit(np.ones((5, 2)), epochs=1), "the arrays are given as type ndarray, "
                                                 "expected a mapping {input name: array}"),
    (lambda m: m.predict([[0.1, 0.2]]), "given as type list, expected a mapping"),
    (lambda m: m.predict({"x": [[0.1, 0.2]]}, batch_size=0), "batch_size is 0, expected a "
                                                            "whole number >= 1"),
    (lambda m: m.step([[0.1, 0.2]]), "given as type list"),
    (lambda m: m.step({"x": [[0.1, 0.2]], "y": [0]}), "node 'x': step feeds 'x' a list, but "
                                                      "the input is float32"),
    (lambda m: m.step({"x": np.ones((4, 2)), "y": np.zeros(4)}),
     "node 'y': step feeds 'y' dtype float64, but the input is int64"),
])
def test_the_api_refuses_bad_arguments_with_graphcs_own_error(spiral, call, says):
    with pytest.raises(SpecError) as caught:
        call(spiral)
    assert says in str(caught.value)


def test_the_api_seed_must_be_a_whole_number():
    with pytest.raises(SpecError, match="^seed must be a non-negative integer, got 'a'"):
        graphc.load(SPIRAL, seed="a")


def test_the_api_predicts_one_output_named_by_a_string(spiral):
    x = {"x": [[0.1, 0.2]]}
    assert spiral.predict(x, outputs="scores").keys() == {"scores"}
    np.testing.assert_array_equal(spiral.predict(x, outputs="scores")["scores"],
                                  spiral.predict(x)["scores"])


def test_a_text_file_given_as_arrays_is_named_for_what_it_is_not(tmp_path):
    """NumPy calls any file that is neither .npy nor .npz 'pickled (object) data'."""
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    line = one_error(run("grad", SPIRAL, "--params", tmp_path / "x.csv"))
    assert "x.csv: it is neither an .npz archive nor an .npy array" in line
    assert "pickle" not in line


@pytest.mark.parametrize("keys, text, says", [
    (", share: a", "", "b.yaml:9:40: node 'a': share 'a' names the instance itself"),
    ("", "state:\n  - rm\n", "b.yaml:12:3: 'state' must be a mapping of name: value, got [rm]; "
                             "write one NAME: VALUE per line"),
])
def test_blocks_and_sections_written_wrong_are_located(tmp_path, keys, text, says):
    spec = tmp_path / "b.yaml"
    spec.write_text(REPEATED.format(keys=keys) + text)
    assert says in one_error(run("check", spec))


def test_predict_on_a_spec_without_outputs_says_so_first(tmp_path):
    """Not "train first": a lecture spec has no train.data to train on."""
    np.save(tmp_path / "x.npy", np.ones((2, 2)))
    line = one_error(run("predict", LECTURE, "--inputs", tmp_path / "x.npy"))
    assert "spec 'lecture_cs231n_add_mul' lists no outputs to predict" in line
