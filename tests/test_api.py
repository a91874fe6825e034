"""The Python API (graphc/api.py, docs/api.md) against the command line it stands for.

Oracles: docs/api.md's own code, run verbatim (and in float64); the CLI on the same
spec, seed and data (fit == train, predict == predict, grad == grad, bit for bit);
one SGD step worked out as params - lr * gradient.
"""
from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

import graphc
from graphc.errors import SpecError
from test_cli import REPO, SPECS, graphc as cli, load_npz, ok, one_json

MOONS = SPECS / "moons_logistic.yaml"
DOC = REPO / "docs" / "api.md"
DTYPE_LINE = 'dtype = "float32"            # or "float64": the same code trains in double precision'


def doc_blocks() -> list:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_docs_round_trip_runs_verbatim(tmp_path, monkeypatch, dtype):
    shutil.copytree(SPECS, tmp_path / "specs")
    monkeypatch.chdir(tmp_path)                      # the doc saves moons.ckpt.npz here
    code = "\n".join(doc_blocks())
    assert DTYPE_LINE in code and "m.fit(" in code and "m.save(" in code
    namespace: dict = {}
    exec(compile(code.replace(DTYPE_LINE, f'dtype = "{dtype}"'), str(DOC), "exec"), namespace)
    assert namespace["again"].dtype == dtype
    assert namespace["again"].params["W1"].dtype == np.dtype(dtype)
    saved = load_npz(tmp_path / "moons.ckpt.npz")
    assert saved["W1"].dtype == np.dtype(dtype) and "__graphc__/stats/x/mean" in saved


def test_fit_is_graphc_train_bit_for_bit(tmp_path):
    ok(cli("train", MOONS, "--epochs", "3", "--seed", "5", "--out", tmp_path / "c.npz"))
    m = graphc.load(MOONS, seed=5)
    result = m.fit(epochs=3)
    assert result.epochs == 3 and len(result.history) == 3
    trained = load_npz(tmp_path / "c.npz")
    for name, value in m.params.items():
        assert np.array_equal(value, trained[name]), name


def test_save_is_read_by_eval_and_predict_as_the_cli_writes_it(tmp_path):
    m = graphc.load(MOONS)
    result = m.fit(epochs=2)
    m.save(tmp_path / "m.npz")
    evaluated = one_json(ok(cli("eval", MOONS, "--params", tmp_path / "m.npz", "--json")))
    assert evaluated["loss"] == pytest.approx(result.loss, rel=1e-6)
    points = np.array([[-1.0, 0.5], [2.0, 0.0]], np.float32)
    np.savez(tmp_path / "p.npz", x=points)
    by_cli = one_json(ok(cli("predict", MOONS, "--params", tmp_path / "m.npz", "--inputs",
                             tmp_path / "p.npz", "--json")))["outputs"]["prob"]
    assert m.predict({"x": points})["prob"].tolist() == by_cli
    resumed = ok(cli("train", MOONS, "--resume", tmp_path / "m.npz", "--epochs", "3",
                     "--out", tmp_path / "r.npz"))
    assert "epoch    3/3" in resumed.stdout


def test_fit_on_arrays_is_fit_on_the_file_that_holds_them(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 2))
    y = (x[:, :1] - x[:, 1:] > 0).astype(np.float64)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    text = MOONS.read_text().replace(
        "data: {dataset: moons, samples: 400, noise: 0.1, validation: 0.2, normalize: standard,",
        "data: {npz: d.npz, validation: 0.2, normalize: standard,")
    (tmp_path / "s.yaml").write_text(text)
    from_file, from_arrays = graphc.load(tmp_path / "s.yaml"), graphc.load(tmp_path / "s.yaml")
    a = from_file.fit(epochs=2)
    b = from_arrays.fit({"x": x, "y": y}, epochs=2)
    assert a.loss == b.loss and a.metrics == b.metrics
    for name, value in from_file.params.items():
        assert np.array_equal(value, from_arrays.params[name]), name


def test_grad_is_graphc_grad(tmp_path):
    feeds = {"x": np.array([[0.5, -1.0], [2.0, 0.25]], np.float32),
             "y": np.array([[1.0], [0.0]], np.float32)}
    np.savez(tmp_path / "f.npz", **feeds)
    by_cli = one_json(ok(cli("grad", MOONS, "--inputs", tmp_path / "f.npz", "--json")))
    g = graphc.load(MOONS).grad(feeds)
    assert g.loss == by_cli["loss"]
    for leaf, grad in by_cli["grads"].items():
        assert g.grads[leaf].tolist() == grad, leaf


def test_one_sgd_step_is_params_minus_lr_times_the_gradient(tmp_path):
    (tmp_path / "s.yaml").write_text(
        "inputs: {x: [batch, 2], y: [batch, 1]}\nparams: {W: [2, 1], b: [1]}\n"
        "nodes:\n  s: x @ W + b\n  loss: mse(s, y)\ndtype: float64\n"
        "train: {optimizer: {sgd: {lr: 0.5}}}\n")
    m = graphc.load(tmp_path / "s.yaml")
    feeds = {"x": np.array([[1.0, 2.0], [3.0, -1.0]]), "y": np.array([[1.0], [0.0]])}
    before, g = m.params, m.grad(feeds)
    assert m.step(feeds) == g.loss
    for name in ("W", "b"):
        np.testing.assert_allclose(m.params[name], before[name] - 0.5 * g.grads[name],
                                   rtol=1e-15)


def test_step_feeds_only_the_fed_inputs(tmp_path):
    """A feed named after a param was copied over the param (W zeroed, no error); an
    unknown name was a raw KeyError."""
    (tmp_path / "s.yaml").write_text(
        "inputs: {x: [batch, 2], y: [batch, 1]}\nparams: {W: [2, 1], b: [1]}\n"
        "nodes:\n  s: x @ W + b\n  loss: mse(s, y)\n")
    m = graphc.load(tmp_path / "s.yaml")
    feeds = {"x": np.ones((2, 2), np.float32), "y": np.ones((2, 1), np.float32)}
    before = m.params["W"].copy()
    for bad in ({**feeds, "W": np.zeros((2, 1), np.float32)}, {**feeds, "z": feeds["y"]}):
        with pytest.raises(SpecError, match="step feeds exactly the fed inputs"):
            m.step(bad)
    np.testing.assert_array_equal(m.params["W"], before)
    with pytest.raises(SpecError, match="missing: y"):
        m.step({"x": feeds["x"]})


def test_unfed_and_unknown_inputs_are_errors_never_zeros():
    m = graphc.load(MOONS)
    m.fit(epochs=1)
    with pytest.raises(SpecError, match=r"moons_logistic.yaml:8:3: node 'x': output 'prob' "
                                        r"needs input 'x', which is not in the arrays given"):
        m.predict({})
    with pytest.raises(SpecError, match=r"'xs' is not a fed input .*did you mean 'x'"):
        m.predict({"xs": np.zeros((2, 2))})
    with pytest.raises(SpecError, match="needs input 'y'"):
        m.grad({"x": np.zeros((2, 2), np.float32)})
    with pytest.raises(SpecError, match="expects 2 features per sample"):
        m.predict({"x": np.zeros((2, 3))})
    with pytest.raises(SpecError, match="no normalization statistics"):
        graphc.load(MOONS).predict({"x": np.zeros((2, 2))})


def test_labels_out_of_range_are_errors_in_grad():
    m = graphc.load(SPECS / "spiral_mlp.yaml")
    x = np.zeros((2, 2), np.float32)
    with pytest.raises(SpecError, match=r"the array for 'y' at index 0: label 5 is out of "
                                        r"range for 3 classes"):
        m.grad({"x": x, "y": np.array([5, 0])})
    assert np.isfinite(m.grad({"x": x, "y": np.array([2, 0])}).loss)


def test_plan_is_graphc_plans():
    by_cli = one_json(ok(cli("plan", MOONS, "--batch-size", "16", "--json")))
    plan = graphc.load(MOONS).plan(batch=16)
    assert plan.arena_bytes == by_cli["arena_bytes"] and len(plan.steps) == len(by_cli["steps"])


def test_the_package_exports_only_the_api_lazily():
    assert graphc.load is graphc.api.load and graphc.Model is graphc.api.Model
    with pytest.raises(AttributeError):
        graphc.nothing_here


@pytest.mark.parametrize("labels,index", [([0, 1, 3, 2], 2), ([0, -1, 1, 2], 1),
                                          (np.array([2, 0, 5, 1], np.int32), 2),
                                          (np.array([0, 1, 2, 2**32 + 1]), 3)])
def test_step_checks_every_batch_of_labels_after_the_first(labels, index):
    """The step path checks labels per batch on its input buffer (one argmax of the
    buffer seen as unsigned); a batch after a good one, a negative label, int32 labels, and
    a label an int32 buffer would wrap are all errors before any update."""
    m = graphc.load(SPECS / "spiral_mlp.yaml")
    x = np.zeros((4, 2), np.float32)
    m.step({"x": x, "y": np.array([0, 1, 2, 0])})          # prepares the step path
    before = m.params
    with pytest.raises(SpecError, match=rf"node 'y': label -?\d+ at index \[{index}\] is out "
                                        r"of range for 3 classes"):
        m.step({"x": x, "y": np.asarray(labels)})
    for name, value in m.params.items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
