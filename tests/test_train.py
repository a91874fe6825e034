"""Training: metrics by hand, early stopping, eval against the trainer, the NaN guard.

Oracles: metric values worked out by hand; early stopping's patience arithmetic;
`graphc eval` of the final checkpoint equals the trainer's final numbers; a
spec that takes log of a negative number (forward) or the derivative of
sqrt at 0 (backward) must stop with exit 1 naming that node, the epoch and the batch.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from graphc.errors import CheckFailed, SpecError
from graphc.metrics import (EarlyStopping, EarlyStoppingConfig, Metric, accuracy, mae,
                            parse_early_stopping, rmse)
from graphc.model import load_model
from graphc.evaluation import evaluate, evaluate_checkpoint
from graphc.train import RESERVED, train
from graphc.trainconfig import parse_train


REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}    # this checkout, whatever is installed


def graphc(*args, cwd):
    return subprocess.run([sys.executable, "-m", "graphc", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120, env=ENV)


# --- metrics ---------------------------------------------------------------------------------

def test_accuracy_by_hand():
    scores = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.1, 0.0, 0.2], [1.0, 0.0, 0.0]])
    assert accuracy(scores, np.array([0, 1, 1, 2])) == 0.5          # rows 0 and 1 right
    assert accuracy(np.array([0.3, -2.0, 0.5]), np.array([1, -1, -1])) == pytest.approx(2 / 3)
    probs = np.array([[0.9], [0.2], [0.6], [0.4]])                    # threshold 0.5
    assert accuracy(probs, np.array([[1.0], [0.0], [0.0], [0.0]])) == 0.75
    logits = np.array([0.2, 0.3, -0.4, 0.1])                          # threshold 0
    assert accuracy(logits, np.array([1, 1, 0, 1]), threshold=0.0) == 1.0
    assert accuracy(logits, np.array([1, 1, 0, 1])) == 0.25         # all read as 0


def test_mae_and_rmse_by_hand():
    pred, target = np.array([[1.0], [2.0], [4.0]]), np.array([[1.0], [4.0], [0.0]])
    assert mae(pred, target) == pytest.approx((0 + 2 + 4) / 3)
    assert rmse(pred, target) == pytest.approx(math.sqrt((0 + 4 + 16) / 3))
    for shape in [(3, 2), (3, 1)]:          # metrics never broadcast, nor reshape [N, 1]
        with pytest.raises(SpecError, match="shaped like its target"):
            mae(np.zeros(shape), np.zeros(3))


def test_early_stopping_counts_epochs_without_improvement():
    es = EarlyStopping(EarlyStoppingConfig("accuracy", patience=2, mode="max", min_delta=0.01))
    seen = [(v, es.update(v, e), es.stop) for e, v in enumerate([0.5, 0.6, 0.605, 0.7, 0.69, 0.7],
                                                               start=1)]
    assert [s[1] for s in seen] == [True, True, False, True, False, False]
    assert [s[2] for s in seen] == [False, False, False, False, False, True]
    assert (es.best, es.best_epoch) == (0.7, 4)
    low = EarlyStopping(EarlyStoppingConfig("loss", patience=1, mode="min"))
    assert low.update(1.0, 1) and low.update(0.5, 2) and not low.update(0.5, 3) and low.stop


@pytest.mark.parametrize("raw, fragment", [
    ({"metric": "acuracy"}, "did you mean 'accuracy'"),
    ({"patience": 0}, "positive integer"),
    ({"mode": "maximum"}, "max or min"),
    ({"metric": "loss", "patiense": 3}, "did you mean 'patience'"),
])
def test_bad_early_stopping(raw, fragment):
    with pytest.raises(SpecError) as err:
        parse_early_stopping(raw, {"accuracy": ("scores", "y")})
    assert fragment in str(err.value)


def test_early_stopping_defaults_mode_from_the_metric():
    metrics = {"acc_a": Metric("acc_a", "accuracy", ("s", "y")),
               "ce": Metric("ce", "value", ("data_loss",))}
    assert parse_early_stopping({"metric": "acc_a"}, metrics).mode == "max"   # by its kind
    assert parse_early_stopping({"metric": "ce"}, metrics).mode == "min"
    assert parse_early_stopping({}, {}).metric == "loss"
    assert parse_early_stopping({}, {}).mode == "min"


# --- metrics per head, and scalar nodes logged as metrics ------------------------------------

TWO_HEADS = """\
name: two_heads
inputs:
  x: [batch, 2]
  y1: {shape: [batch], dtype: int64}
  y2: {shape: [batch], dtype: int64}
params:
  W1: {value: [[1, 0], [0, 1]]}
  W2: {value: [[1, 0, 0], [0, 1, 0]]}
nodes:
  s1: x @ W1
  s2: x @ W2
  ce1: softmax_cross_entropy(s1, y1)
  ce2: softmax_cross_entropy(s2, y2)
  loss: ce1 + ce2
train:
  data: {npz: heads.npz}
  batch_size: 2
  epochs: 1
  metrics: {acc_a: {accuracy: [s1, y1]}, acc_b: {accuracy: [s2, y2]}, ce1: ce1, ce2: ce2}
"""


def two_heads(tmp_path):
    spec = tmp_path / "heads.yaml"
    spec.write_text(TWO_HEADS)
    # s1 = x: argmax 1, 0, 1; s2 = [x, 0]: argmax 1, 0, 1 (x's larger column)
    np.savez(tmp_path / "heads.npz", x=np.array([[0.0, 2.0], [3.0, 1.0], [1.0, 2.0]]),
             y1=np.array([1, 0, 0]), y2=np.array([1, 2, 2]))
    return spec


def test_two_accuracies_and_two_loss_terms_by_hand(tmp_path):
    model = load_model(two_heads(tmp_path))
    cfg = parse_train(model)
    x = np.array([[0.0, 2.0], [3.0, 1.0], [1.0, 2.0]], np.float32)
    arrays = {"x": x, "y1": np.array([1, 0, 0]), "y2": np.array([1, 2, 2])}
    loss, metrics = evaluate(model, arrays, cfg.metrics, batch_size=2)   # batches of 2 and 1

    def ce(s, y):
        return np.log(np.exp(s).sum(axis=1)) - s[np.arange(len(y)), y]
    ce1 = ce(x.astype(np.float64), arrays["y1"])
    ce2 = ce(np.hstack([x, np.zeros((3, 1))]), arrays["y2"])
    assert metrics["acc_a"] == pytest.approx(2 / 3) and metrics["acc_b"] == pytest.approx(1 / 3)
    assert metrics["ce1"] == pytest.approx(ce1.mean(), rel=1e-6)    # batch-weighted mean
    assert metrics["ce2"] == pytest.approx(ce2.mean(), rel=1e-6)
    assert loss == pytest.approx(metrics["ce1"] + metrics["ce2"], rel=1e-6)


def test_metrics_per_head_in_the_cli(tmp_path):
    spec = two_heads(tmp_path)
    proc = graphc("train", spec, "--json", "--out", tmp_path / "c.npz", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    final = json.loads(proc.stdout)
    assert list(final["metrics"]) == ["acc_a", "acc_b", "ce1", "ce2"]
    assert final["metrics"]["ce1"] + final["metrics"]["ce2"] == pytest.approx(final["loss"],
                                                                              rel=1e-5)
    assert "acc_a " in proc.stderr and "ce2 " in proc.stderr        # the epoch lines


@pytest.mark.parametrize("metrics, words", [
    ("{h: s1}", ["metric 'h' logs node 's1' of shape [batch, 2]", "must be a scalar"]),
    ("{acc: {accuracy: [s1, y1], mae: [s1, y1]}}", ["must name one metric kind",
                                                     "accuracy, mae"]),
    ("{acc: {acuracy: [s1, y1]}}", ["unknown metric 'acuracy'", "did you mean 'accuracy'"]),
    ("{e: {mae: [s1, y1], threshold: 0}}", ["only accuracy takes one"]),
    ("{loss: ce1}", ["metric name 'loss' is taken"]),
    ("{ce: ce3}", ["names unknown node 'ce3'", "did you mean 'ce"]),
])
def test_bad_metric_forms_are_located_errors(tmp_path, metrics, words):
    spec = two_heads(tmp_path)
    spec.write_text(TWO_HEADS.replace(TWO_HEADS.splitlines()[-1], f"  metrics: {metrics}"))
    proc = graphc("check", spec.name, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: heads.yaml:19:"), proc.stderr
    for w in words:
        assert w in proc.stderr, proc.stderr


# --- training end to end -----------------------------------------------------------------------

SPIRAL = """\
name: small_spiral
inputs:
  x: [batch, 2]
  y: {shape: [batch], dtype: int64}
params:
  W1: {shape: [2, 32], init: he_normal}
  b1: [32]
  W2: {shape: [32, 3], init: {normal: {std: 0.01}}}
  b2: [3]
nodes:
  h: relu(x @ W1 + b1)
  scores: h @ W2 + b2
  loss: softmax_cross_entropy(scores, y)
train:
  data: {dataset: spiral, samples: 150, validation: 0.2, normalize: standard}
  batch_size: 16
  epochs: 200
  optimizer: {adam: {lr: 0.02}}
  schedule: {cosine: {}, warmup: {epochs: 3}}
  clip_grad_norm: 5.0
  metrics: {accuracy: [scores, y]}
  early_stopping: {metric: accuracy, patience: 8}
"""


@pytest.fixture
def spiral(tmp_path):
    path = tmp_path / "spiral.yaml"
    path.write_text(SPIRAL)
    return path


def test_early_stopping_restores_the_best_epoch_and_eval_agrees(spiral):
    model = load_model(spiral)
    cfg = parse_train(model)
    out = spiral.parent / "es.npz"
    result = train(model, cfg, out=out)
    val = [e.metrics["val_accuracy"] for e in result.history]
    best = int(np.argmax(val))                                 # first epoch with the max
    assert result.epochs == best + 1 + 8 < 200, "stopped `patience` epochs after the best"
    assert result.metrics["accuracy"] == val[best] and result.notes
    assert f"epoch {best + 1}" in result.notes[0]
    again = evaluate_checkpoint(load_model(spiral), out)
    assert again == {"loss": result.loss, "metrics": result.metrics, "samples": 30}
    lrs = [e.lr for e in result.history]
    assert lrs[:3] == pytest.approx([0.02 * (e + 1) / 3 * (1 + math.cos(math.pi * e / 200)) / 2
                                     for e in range(3)])


def test_eval_cli_json_and_stats_come_from_the_checkpoint(spiral):
    out = spiral.parent / "c.npz"
    proc = graphc("train", spiral, "--epochs", "3", "--out", out, "--json", cwd=spiral.parent)
    assert proc.returncode == 0, proc.stderr
    final = json.loads(proc.stdout)
    assert "val_loss" in proc.stderr and "lr " in proc.stderr
    proc = graphc("eval", spiral, "--params", out, "--json", cwd=spiral.parent)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert set(got) == {"loss", "metrics", "samples"} and got["samples"] == 30
    assert got["loss"] == pytest.approx(final["loss"], rel=1e-6)
    # the stats in the checkpoint are what eval applies: shift them and the loss moves
    arrays = dict(np.load(out, allow_pickle=False))
    arrays[RESERVED + "stats/x/mean"] = arrays[RESERVED + "stats/x/mean"] + 1.0
    np.savez(out, **arrays)
    moved = json.loads(graphc("eval", spiral, "--params", out, "--json", cwd=spiral.parent).stdout)
    assert moved["loss"] != pytest.approx(got["loss"], rel=1e-3)


EPOCH_LINE = re.compile(r"^epoch +(\d+)/200 .* val_loss (\S+) +val_accuracy (\S+) +lr \S+(  <- restored)?$")


def test_progress_shows_the_restored_epoch_and_the_final_line_names_its_split(spiral):
    proc = graphc("train", spiral, "--out", "es.npz", "--json", cwd=spiral.parent)
    assert proc.returncode == 0, proc.stderr
    stopped = json.loads(proc.stdout)["epochs"]
    best = stopped - 8                                  # patience 8: the last improvement
    lines = proc.stderr.splitlines()
    epochs = [EPOCH_LINE.match(line) for line in lines if line.startswith("epoch")]
    assert all(epochs), lines
    assert [int(m[1]) for m in epochs[-2:]] == [stopped, best], "the stop, then the restored"
    restored = epochs[-1]
    assert restored[4] and not any(m[4] for m in epochs[:-1])
    final = next(line for line in lines if line.startswith("final:"))
    assert final.startswith(f"final: val_loss {restored[2]} val_accuracy {restored[3]} on the "
                            f"validation split (30 samples, params of epoch {best})"), final


def test_the_final_line_says_when_it_measures_the_training_set(spiral):
    spiral.write_text(SPIRAL.replace("validation: 0.2, ", "").replace("  early_stopping", "#"))
    proc = graphc("train", spiral, "--out", "c.npz", "--epochs", "4", cwd=spiral.parent)
    assert proc.returncode == 0, proc.stderr
    final = proc.stdout.splitlines()[-1]
    assert re.match(r"final: loss \S+ accuracy \S+ on the training set \(150 samples\) ", final)
    assert "restored" not in proc.stdout and "val_" not in proc.stdout


def test_eval_names_a_missing_param(spiral):
    np.savez(spiral.parent / "bad.npz", W1=np.zeros((2, 32), np.float32))
    with pytest.raises(SpecError, match="no parameter 'b1'"):
        evaluate_checkpoint(load_model(spiral), spiral.parent / "bad.npz")


# --- the NaN guard -----------------------------------------------------------------------------

LINEAR = """\
name: lin
inputs:
  x: [batch, 1]
  y: [batch, 1]
params:
  w: {value: [[0.5]]}
nodes:
  pred: %s
  loss: %s
train:
  data: {dataset: linear, samples: 40}
  batch_size: 10
  epochs: 30
  optimizer: {sgd: {lr: %s}}
"""


def write(tmp_path, pred="x @ w", loss="mse(pred, y)", lr=0.1):
    path = tmp_path / "lin.yaml"
    path.write_text(LINEAR % (pred, loss, lr))
    return path


def test_forward_nan_names_the_node_epoch_and_batch(tmp_path):
    spec = write(tmp_path, loss="mean(log(pred))")          # x ~ N(0, 1): some pred < 0
    proc = graphc("train", spec.name, "--out", "c.npz", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.strip().splitlines()          # line 9, column 14: the log( call
    assert err[0].startswith("error: lin.yaml:9:14: node 'loss': non-finite value (NaN) from log")
    assert "forward pass at epoch 1, batch 0 (step 1)" in err[0]
    assert "Traceback" not in proc.stderr and not (tmp_path / "c.npz").exists()


def test_backward_inf_names_the_gradient(tmp_path):
    """d sqrt(w) / dw at w = 0 is infinite while the loss is finite."""
    spec = write(tmp_path, pred="x @ pow(w, exponent=0.5)")
    spec.write_text(spec.read_text().replace("[[0.5]]", "[[0.0]]"))
    model = load_model(spec)
    with pytest.raises(CheckFailed) as err:
        train(model, parse_train(model), out=tmp_path / "c.npz")
    text = str(err.value)
    assert "node 'pred': non-finite gradient" in text and "pow_grad in the backward pass" in text
    assert "epoch 1, batch 0" in text and model.store["w"].tolist() == [[0.0]]


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    spec = write(tmp_path, lr=5.0)                          # |1 - 2 lr x^2| > 1: blows up
    out = tmp_path / "c.npz"
    proc = graphc("train", spec, "--out", out, "--save-every", "1", cwd=tmp_path)
    diverged = "non-finite" in proc.stderr or "gradient norm overflowed" in proc.stderr
    assert proc.returncode == 1 and diverged, proc.stderr
    failed = int(proc.stderr.split("at epoch ")[1].split(",")[0])
    assert failed > 1 and f"keeps the last good state (after epoch {failed - 1})" in proc.stderr
    arrays = np.load(out, allow_pickle=False)
    assert int(arrays[RESERVED + "epoch"]) == failed - 1
    assert np.all(np.isfinite(arrays["w"])) and np.abs(arrays["w"]).max() > 1e3


def test_a_missing_output_folder_fails_before_training(tmp_path):
    proc = graphc("train", write(tmp_path), "--out", tmp_path / "no" / "c.npz", cwd=tmp_path)
    assert proc.returncode == 2 and "no folder" in proc.stderr and "epoch" not in proc.stdout
