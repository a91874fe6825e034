"""A real dataset nobody here generated: scikit-learn's digits, trained by specs/digits_mlp.yaml.

Oracle: the issue's bar, >= 95% accuracy on the held-out 20% (the final numbers of
`graphc train --json` are on the validation split when there is one, docs/design.md),
and `graphc eval` of the saved checkpoint gives the same numbers. scikit-learn is an
optional dependency: without it these tests skip, and the dataset is a located error
that says how to install it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from graphc.data import load_data
from graphc.errors import SpecError

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "specs" / "digits_mlp.yaml"
ENV = {**os.environ, "PYTHONPATH": str(REPO)}    # this checkout, whatever is installed
NEEDS = "scikit-learn provides the digits data; pip install scikit-learn (the test extra)"


def graphc(*args) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "graphc", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == 0, f"graphc {' '.join(map(str, args))}:\n{proc.stderr}"
    return proc


def digits(**cfg):
    return load_data({"dataset": "digits", **cfg}, spec_dir=REPO,
                     inputs={"x": ("batch", 64), "y": ("batch",)},
                     input_dtypes={"x": "float64", "y": "int64"})


@pytest.mark.slow
def test_digits_mlp_reaches_95_percent_held_out_and_eval_agrees(tmp_path):
    pytest.importorskip("sklearn", reason=NEEDS)
    ckpt = tmp_path / "digits.npz"
    final = json.loads(graphc("train", SPEC, "--json", "--out", ckpt).stdout)
    assert final["metrics"]["accuracy"] >= 0.95, final
    again = json.loads(graphc("eval", SPEC, "--params", ckpt, "--json").stdout)
    assert again["samples"] == round(0.2 * 1797) == 359
    assert again["loss"] == pytest.approx(final["loss"], rel=1e-6)
    assert again["metrics"]["accuracy"] == pytest.approx(final["metrics"]["accuracy"])


@pytest.mark.slow
def test_predict_on_the_held_out_rows_agrees_with_eval(tmp_path):
    """The held-out 20% as a user would keep it (raw pixels, with or without labels), in
    .npz and .csv: `predict --classes` scores exactly `eval`'s accuracy."""
    pytest.importorskip("sklearn", reason=NEEDS)
    ckpt = tmp_path / "digits.npz"
    graphc("train", SPEC, "--out", ckpt, "--epochs", "3")
    acc = json.loads(graphc("eval", SPEC, "--params", ckpt, "--json").stdout)["metrics"]
    held = digits(validation=0.2).valid             # the split eval uses: the spec's seed 0
    x, y = held["x"], held["y"]
    np.savez(tmp_path / "held.npz", x=x)
    header = [f"pixel{i}" for i in range(64)] + ["y"]     # a column named like the input
    rows = [",".join(map(str, list(r.astype(int)) + [int(t)])) for r, t in zip(x, y)]
    (tmp_path / "held.csv").write_text("\n".join([",".join(header)] + rows) + "\n")
    for held_file in ("held.npz", "held.csv"):
        out = json.loads(graphc("predict", SPEC, "--params", ckpt, "--inputs",
                                tmp_path / held_file, "--classes", "--json").stdout)
        assert out["samples"] == 359
        assert np.mean(np.array(out["outputs"]["scores.class"]) == y) == \
            pytest.approx(acc["accuracy"], abs=1e-12), held_file


@pytest.mark.slow
def test_digits_spec_checks_and_gradchecks():
    pytest.importorskip("sklearn", reason=NEEDS)
    for command in ("check", "gradcheck"):
        graphc(command, SPEC)


def test_digits_are_sklearns_arrays():
    datasets = pytest.importorskip("sklearn.datasets", reason=NEEDS)
    bunch = datasets.load_digits()
    d = digits()
    x, y = d.train["x"], d.train["y"]
    assert x.shape == (1797, 64) and d.n_classes == 10
    assert x.min() == 0 and x.max() == 16 and np.bincount(y).sum() == 1797
    # the same rows, shuffled: sort both by their bytes and compare
    ours = np.c_[x, y][np.lexsort(np.c_[x, y].T)]
    theirs = np.c_[bunch.data, bunch.target][np.lexsort(np.c_[bunch.data, bunch.target].T)]
    assert np.array_equal(ours, theirs)
    assert len(digits(samples=100).train["x"]) == 100


def test_too_many_digits_is_an_error():
    pytest.importorskip("sklearn", reason=NEEDS)
    with pytest.raises(SpecError, match="at most 1797"):
        digits(samples=2000)


def test_without_sklearn_the_dataset_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)          # import sklearn -> ImportError
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(SpecError) as err:
        digits()
    assert "digits" in str(err.value) and "pip install scikit-learn" in str(err.value)
