"""The sequence specs train to their stated outcomes, run as a user runs them.

specs/sort_transformer.yaml: a causal transformer trained teacher-forced on 6-digit
sequences; here it sorts 2000 fresh sequences (another seed than its training data),
decoding greedily one digit at a time, each step reading the digits it produced before.
specs/count_gru.yaml: a GRU block shared over 8 steps counts the ones in 8 bits.
Their layer-form twins (sort_transformer_layers.yaml, count_gru_layers.yaml: the
transformer_block and gru_cell layers) reach the same outcomes.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import graphc
from graphc.datasets import sort_digits
from test_cli import SPECS, graphc as cli

LENGTH = 6


def greedy_sort(model, digits: np.ndarray) -> np.ndarray:
    """The model's sorted sequence for each row of `digits`: position 5 + i predicts the
    i-th sorted digit, which is fed back as token 6 + i (zeros before: causal attention
    never lets a position read the tokens after it)."""
    x = np.concatenate([digits, np.zeros((len(digits), LENGTH - 1), np.int64)], axis=1)
    out = np.zeros_like(digits)
    for i in range(LENGTH):
        out[:, i] = model.predict({"x": x})["scores"][:, i].argmax(axis=-1)
        if i < LENGTH - 1:
            x[:, LENGTH + i] = out[:, i]
    return out


def test_greedy_sort_feeds_back_its_own_digits():
    class Echo:        # scores that predict, at position 5 + i, token 5 + i plus one
        def predict(self, feeds):
            x = feeds["x"]
            return {"scores": np.eye(10)[(x[:, LENGTH - 1:] + 1) % 10]}
    # tokens 5.. are [3, ...]: out[0] = 4, fed back as token 6, so out[1] = 5, ...
    np.testing.assert_array_equal(greedy_sort(Echo(), np.array([[0, 0, 0, 0, 0, 3]])),
                                  [[4, 5, 6, 7, 8, 9]])


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["sort_transformer.yaml", "sort_transformer_layers.yaml"])
def test_sort_transformer_sorts_held_out_sequences(tmp_path, spec):
    ckpt = tmp_path / "sort.npz"
    proc = cli("train", SPECS / spec, "--json", "--out", ckpt, timeout=3600)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["metrics"]["accuracy"] >= 0.99     # per digit, forced
    x, _, _ = sort_digits(2000, np.random.default_rng(12345))
    digits = x[:, :LENGTH]
    model = graphc.load(SPECS / spec, params=ckpt)
    fully_correct = (greedy_sort(model, digits) == np.sort(digits, axis=1)).all(axis=1)
    assert fully_correct.mean() >= 0.99, f"{fully_correct.mean():.4f} of sequences sorted"


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["count_gru.yaml", "count_gru_layers.yaml"])
def test_count_gru_counts_the_ones(tmp_path, spec):
    proc = cli("train", SPECS / spec, "--json", "--out", tmp_path / "c.npz",
               timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["metrics"]["accuracy"] >= 0.99          # held-out 20%; chance ~ 0.27
