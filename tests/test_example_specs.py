"""The example specs (one per data source and per loss family), each trained through the CLI.

Each row of EXAMPLES is one specs/*.yaml and an outcome you can check by hand: held-out
accuracy far above chance (1/K), a final loss far below the loss of the best constant
prediction (log 2 for balanced 0/1 labels, 0.25 for a constant 0.5 under mse, 1 for a
zero hinge score, K-1 margins for equal multiclass scores), an rmse near the data's
noise, or regression weights near the ones that generated the data
(scripts/make_spec_data.py) and near the least-squares fit computed here by NumPy.
Every shipped spec also passes `graphc check` and `graphc gradcheck`.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from graphc.data import DATASETS
from graphc.model import load_model
from graphc.trainconfig import load_dataset, parse_train
from test_ops_grad import SAMPLED

REPO = Path(__file__).resolve().parents[1]
SPECS = REPO / "specs"
ENV = {**os.environ, "PYTHONPATH": str(REPO)}    # this checkout, whatever is installed
sys.path.insert(0, str(REPO / "scripts"))
import make_spec_data as M  # noqa: E402

LOSSES = ("mse", "l1", "huber", "softmax_cross_entropy", "binary_cross_entropy_with_logits",
          "hinge", "multiclass_hinge")
NEEDS_SKLEARN = {"digits_mlp.yaml",              # tests/test_digits.py covers it
                 "digits_cnn.yaml"}              # tests/test_conv_specs.py covers it
SEQUENCE = {"sort_transformer.yaml", "count_gru.yaml",    # tests/test_sequence_specs.py does
            "sort_transformer_layers.yaml", "count_gru_layers.yaml"}


def graphc(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graphc", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env=ENV)


def trained(spec: str, tmp_path: Path) -> tuple[dict, dict]:
    """`graphc train specs/SPEC --json --out CKPT`: the final JSON and the saved params."""
    ckpt = tmp_path / "run.npz"
    proc = graphc("train", SPECS / spec, "--json", "--out", ckpt)
    assert proc.returncode == 0, proc.stderr
    with np.load(ckpt, allow_pickle=False) as f:
        params = {k: f[k].astype(np.float64) for k in f.files if not k.startswith("__")}
    return json.loads(proc.stdout), params


def least_squares(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[w..., b] minimizing |x w + b - y|^2, by NumPy."""
    design = np.c_[np.asarray(x, np.float64), np.ones(len(x))]
    return np.linalg.lstsq(design, np.asarray(y, np.float64), rcond=None)[0]


def fitted(params: dict) -> np.ndarray:
    return np.r_[params["w"], params["b"]]


# --- outcomes: (final JSON, params) -> asserts ---------------------------------------------

def moons(result, params):
    assert result["metrics"]["accuracy"] >= 0.95            # chance: 0.5
    assert result["loss"] < math.log(2) / 4                   # constant 0.5: log 2


def circles(result, params):
    assert result["metrics"]["accuracy"] >= 0.95            # chance: 0.5
    assert result["loss"] < 0.1                               # score 0: hinge 1


def blobs(result, params):
    assert result["metrics"]["accuracy"] >= 0.95            # chance: 1/3
    assert result["loss"] < 0.2                               # equal scores: 2 margins


def xor(result, params):
    assert result["metrics"]["accuracy"] >= 0.9             # chance: 0.5; no line does it
    assert result["loss"] < 0.25 / 4                          # constant 0.5: 0.25


def linear(result, params):
    assert result["loss"] < 2 * 0.1 ** 2                      # the noise's variance: 0.01
    model = load_model(SPECS / "linear_mse.yaml")
    train = load_dataset(model, parse_train(model)).train
    assert np.abs(fitted(params) - least_squares(train["x"], train["y"])).max() < 0.02


def sine(result, params):
    assert result["metrics"]["rmse"] < 0.2                  # noise 0.1; constant: 0.71


def csv(result, params):
    table = np.loadtxt(SPECS / "data" / "regression.csv", delimiter=",", skiprows=1)
    assert np.abs(fitted(params) - least_squares(table[:, 1:], table[:, 0])).max() < 0.01
    assert np.abs(fitted(params) - np.r_[M.CSV_W, M.CSV_B]).max() < 0.05


def npz(result, params):
    truth = np.r_[M.NPZ_W, M.NPZ_B]
    assert np.abs(fitted(params) - truth).max() < 0.05
    with np.load(SPECS / "data" / "robust.npz") as f:
        squares = least_squares(f["features"], f["target"])
    assert np.abs(squares - truth).max() > 1.0, "the outliers should matter to mse"


def waveforms(result, params):
    assert result["metrics"]["accuracy"] >= 0.95            # chance: 1/3
    assert result["loss"] < math.log(3) / 4                   # equal scores: log 3


def npy(result, params):
    assert result["metrics"]["accuracy"] >= 0.9             # chance: 1/3
    assert result["loss"] < math.log(3) / 4                   # equal scores: log 3


def spiral_bn(result, params):
    assert result["metrics"]["accuracy"] >= 0.9             # chance: 1/3; held out
    assert np.all(params["running_var"] != 1.0)           # the state trained too


EXAMPLES = {
    "moons_logistic.yaml": moons,
    "circles_hinge.yaml": circles,
    "blobs_svm.yaml": blobs,
    "xor_mse.yaml": xor,
    "linear_mse.yaml": linear,
    "sine_huber.yaml": sine,
    "csv_regression.yaml": csv,
    "npz_robust_l1.yaml": npz,
    "npy_softmax.yaml": npy,
    "spiral_bn_dropout.yaml": spiral_bn,
    "waveforms_conv1d.yaml": waveforms,
}


@pytest.mark.parametrize("spec", sorted(EXAMPLES))
def test_example_trains_to_its_outcome(spec, tmp_path):
    result, params = trained(spec, tmp_path)
    EXAMPLES[spec](result, params)


@pytest.mark.parametrize("spec", sorted(p.name for p in SPECS.glob("*.yaml")
                                        if p.name not in NEEDS_SKLEARN))
def test_every_shipped_spec_checks_and_gradchecks(spec):
    sample, rows = SAMPLED.get(Path(spec).stem, (None, None))
    for command in ("check", "gradcheck"):
        extra = ["--sample", sample, "--batch-size", rows] if command == "gradcheck" and \
            sample else []
        proc = graphc(command, SPECS / spec, *extra)
        assert proc.returncode == 0, f"graphc {command} {spec}:\n{proc.stdout}{proc.stderr}"


def test_examples_cover_every_data_source_and_loss_family():
    sources, losses = set(), set()
    for path in SPECS.glob("*.yaml"):
        data = (yaml.safe_load(path.read_text()).get("train") or {}).get("data")
        if data:
            sources.add(data["dataset"] if "dataset" in data else
                        next(k for k in ("csv", "npz", "npy") if k in data))
        if path.name not in NEEDS_SKLEARN:
            losses |= {n.op for n in load_model(path).graph.nodes.values()} & set(LOSSES)
    assert sources >= set(DATASETS) | {"csv", "npz", "npy"}
    assert losses == set(LOSSES)
    assert set(EXAMPLES) | {"spiral_mlp.yaml"} | NEEDS_SKLEARN | SEQUENCE == \
        {p.name for p in SPECS.glob("*.yaml") if not p.name.startswith("lecture_")}, \
        "a new example spec needs an outcome in EXAMPLES"


def test_csv_example_takes_the_rest_of_the_columns():
    data = yaml.safe_load((SPECS / "csv_regression.yaml").read_text())["train"]["data"]
    assert "rest" in data["columns"].values()


def test_committed_data_files_match_their_script():
    for name, data in M.files().items():
        assert M.same(SPECS / "data" / name, data), "run python scripts/make_spec_data.py"
        assert len(data) < 50_000
