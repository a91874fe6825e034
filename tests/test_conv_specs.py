"""The CNN specs and the conv layer forms: accuracy stated in the specs, the params a layer
creates and their init, the layer-stack sugar, and the errors of both forms."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from statistics import median

import numpy as np
import pytest

from bad_input_rows import assert_one_located_error
from graphc.model import load_model
from test_cli import REPO, graphc, ok

SPECS = REPO / "specs"
ONE_THREAD = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
              "MKL_NUM_THREADS": "1"}


def held_out_accuracy(spec: Path, seed: int, tmp_path: Path) -> float:
    """`graphc train SPEC --seed S --json`'s final accuracy: on the validation split."""
    proc = subprocess.run([sys.executable, "-m", "graphc", "train", spec, "--seed", str(seed),
                           "--json", "--out", tmp_path / f"{spec.stem}-{seed}.npz"],
                          capture_output=True, text=True, cwd=REPO, env=ONE_THREAD, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["metrics"]["accuracy"]


@pytest.mark.slow
def test_digits_cnn_reaches_98_5_percent_held_out_median_of_three_seeds(tmp_path):
    pytest.importorskip("sklearn", reason="the digits dataset needs scikit-learn")
    accuracies = [held_out_accuracy(SPECS / "digits_cnn.yaml", s, tmp_path) for s in (0, 1, 2)]
    assert median(accuracies) >= 0.985, accuracies


@pytest.mark.slow
def test_waveforms_conv1d_reaches_98_percent_median_and_95_each(tmp_path):
    accuracies = [held_out_accuracy(SPECS / "waveforms_conv1d.yaml", s, tmp_path)
                  for s in (0, 1, 2)]
    assert median(accuracies) >= 0.98 and min(accuracies) >= 0.95, accuracies


# --- layer forms ------------------------------------------------------------------------

LAYER_SPEC = """\
inputs:
  x: [batch, 3, 9, 9]
nodes:
  c: {layer}
  loss: sum(c)
train:
  seed: 0
"""


def layer_model(tmp_path: Path, layer: str):
    spec = tmp_path / "layer.yaml"
    spec.write_text(LAYER_SPEC.format(layer=layer))
    return load_model(spec)


def test_conv2d_with_x_alone_creates_w_and_b_and_he_init_before_relu(tmp_path):
    model = layer_model(tmp_path, "conv2d(x, out_channels=64, kernel=[3, 5], stride=2, "
                                  "padding=1, activation=relu)")
    assert model.graph["c.W"].shape == (64, 3, 3, 5) and model.graph["c.b"].shape == (64,)
    # out = floor((9 + 2 - 3) / 2) + 1 = 5 rows, floor((9 + 2 - 5) / 2) + 1 = 4 columns
    assert model.graph["c"].shape == ("batch", 64, 5, 4)
    assert model.graph["c"].op == "relu"
    w = model.store["c.W"]
    # He normal with PyTorch's fan_in = C * KH * KW = 45: std sqrt(2 / 45) = 0.2108
    assert w.std() == pytest.approx(np.sqrt(2 / 45), rel=0.1)
    assert not model.store["c.b"].any()


def test_conv1d_layer_without_activation_or_bias_is_glorot_uniform(tmp_path):
    spec = tmp_path / "seq.yaml"
    spec.write_text(LAYER_SPEC.replace("[batch, 3, 9, 9]", "[batch, 4, 20]").format(
        layer="conv1d(x, out_channels=6, kernel=3, bias=False)"))
    model = load_model(spec)
    assert "c.b" not in model.graph.nodes and model.graph["c"].op == "conv1d"
    # fan_in = 4 * 3, fan_out = 6 * 3: bound sqrt(6 / 30) = 0.447
    w = model.store["c.W"]
    assert np.abs(w).max() <= np.sqrt(6 / 30) and np.abs(w).max() > 0.8 * np.sqrt(6 / 30)


def test_the_explicit_node_form_takes_the_layer_attributes_too(tmp_path):
    model = layer_model(tmp_path, "{op: conv2d, inputs: [x], out_channels: 2, kernel: 3}")
    assert model.graph["c.W"].shape == (2, 3, 3, 3)


def test_a_layer_stack_chains_each_item_into_the_next(tmp_path):
    model = layer_model(tmp_path, "\n    - x\n    - conv2d(out_channels=4, kernel=3)"
                                  "\n    - max_pool2d(kernel=2)\n    - flatten"
                                  "\n    - dense(units=5)")
    g = model.graph
    assert g["c/conv2d.W"].shape == (4, 3, 3, 3)
    assert g["c/max_pool2d"].shape == ("batch", 4, 3, 3)
    assert g["c/flatten"].inputs == ("c/max_pool2d",)
    assert g["c.W"].shape == (36, 5) and g["c"].shape == ("batch", 5)


@pytest.mark.parametrize("layer,expect", [
    ("conv2d(x, out_channels=4, kernel=11)", "the kernel spans 11"),
    ("conv2d(x, kernel=3)", "conv2d with its input alone is a layer that creates its weights, "
                            "and needs out_channels; write conv2d(x, out_channels=16"),
    ("{op: conv1d, inputs: [x]}", "conv1d with its input alone is a layer that creates its "
                                  "weights, and needs out_channels and kernel"),
    # the layer forms' errors name the op as written, not conv2d_layer / batch_norm_layer
    ("conv2d(x, out_channels=0, kernel=3)", "attribute 'out_channels' of conv2d is 0, "
                                            "expected a positive integer"),
    ("conv2d(x, out_channels=4, kernel=3, bogus=2)", "op 'conv2d' has no attribute 'bogus' "
                                                     "(its attributes: out_channels, kernel"),
    ("conv1d(x, out_channels=4, kernel=3, stride=x + 1)", "attribute 'stride' of conv1d is "
                                                          "'x + 1', expected a constant"),
    ("batch_norm(x, bogus=1)", "op 'batch_norm' has no attribute 'bogus' (its attributes: "
                               "momentum, eps)"),
    ("batch_norm(x, momentum=2)", "attribute 'momentum' of batch_norm is 2, expected a number "
                                  "from 0 to 1"),
    ("{op: batch_norm, inputs: [x], bogus: 1}", "unknown key 'bogus' in the batch_norm node; "
                                                "allowed keys: op, inputs, momentum, eps"),
    ("{op: conv2d, inputs: [x], out_channels: 4, kernel: 3, bias: 2}",
     "attribute 'bias' of conv2d is 2, expected true or false"),
    ("[x, 'batch_norm(eps=0)']", "attribute 'eps' of batch_norm is 0, expected a number > 0"),
    # aliases too: before, "maximum takes 2 input(s)" for a spec that says max
    ("max(x)", "max takes 2 input(s), got 1"),
    ("{op: min, inputs: [x]}", "min takes 2 input(s), got 1"),
    # written as the layer itself, the layer's name is what the user wrote
    ("{op: batch_norm_layer, inputs: [x], bogus: 1}", "unknown key 'bogus' in the "
                                                      "batch_norm_layer node"),
    ("conv2d(x, out_channels=4, kernel=3, activation=rleu)", "conv2d has no activation 'rleu'"),
    ("[x, 'max_pool2d(c, kernel=2)']",
     "layer stack item 'max_pool2d(c, kernel=2)' must be an op call with keyword attributes"),
    ("[x, 'max_pol2d(kernel=2)']", "unknown op 'max_pol2d'"),
    ("[x]", "a layer stack is a list of strings"),
    ("[x, conv2d(out_channels=4, kernel=3)]", "syntax error in layer stack item "
     "'conv2d(out_channels=4': '(' was never closed (<unknown>, line 1); in YAML's inline "
     "list [x, f(a=1, b=2)] the commas inside a call split the items"),
])
def test_layer_and_stack_errors_are_located(tmp_path, layer, expect):
    spec = tmp_path / "bad.yaml"
    spec.write_text(LAYER_SPEC.format(layer=layer))
    assert_one_located_error(graphc("check", spec), {"exit": 2, "node": "c", "expect": expect},
                             f"error: {spec}:")


def test_a_stack_error_points_at_its_own_item(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(LAYER_SPEC.format(layer="\n    - x\n    - conv2d(out_channels=4, kernel=3)"
                                            "\n    - max_pol2d(kernel=2)"))
    r = graphc("check", spec)
    assert r.returncode == 2 and f"error: {spec}:7:7: node 'c': unknown op" in r.stderr, r.stderr


def test_cnn_specs_check(tmp_path):
    for spec in ("digits_cnn.yaml", "waveforms_conv1d.yaml"):
        ok(graphc("check", SPECS / spec))


# --- the data ---------------------------------------------------------------------------

def test_digits_images_are_the_flat_pixels_channels_first():
    pytest.importorskip("sklearn", reason="the digits dataset needs scikit-learn")
    from graphc.datasets import digits
    flat, y, k = digits(20, np.random.default_rng(1))
    images, y2, _ = digits(20, np.random.default_rng(1), images=True)
    assert images.shape == (20, 1, 8, 8) and k == 10 and np.array_equal(y, y2)
    assert np.array_equal(images.reshape(20, 64), flat)


def test_a_dataset_flag_must_be_true_or_false(tmp_path):
    spec = tmp_path / "flag.yaml"
    spec.write_text((SPECS / "digits_cnn.yaml").read_text().replace("images: true",
                                                                    "images: 1"))
    r = graphc("train", spec, "--epochs", "1", "--out", tmp_path / "c.npz")
    assert_one_located_error(r, {"exit": 2, "expect": "images of dataset 'digits' must be "
                                                      "true or false, got 1"}, f"error: {spec}:")


def test_waveforms_classes_differ_in_shape_not_in_scale():
    from graphc.datasets import waveforms
    x, y, k = waveforms(400, np.random.default_rng(0), noise=0.0)
    assert x.shape == (400, 1, 64) and k == 3 and np.bincount(y).tolist() == [134, 133, 133]
    # noiseless square waves take two values (±amplitude), a sine many
    square, sine = x[y == 1][0, 0], x[y == 0][0, 0]
    assert len(np.unique(np.round(np.abs(square), 9))) == 1
    assert len(np.unique(np.round(sine, 9))) > 20
