"""Goldens: the lectures' worked examples (../shared/seeds/), run through the CLI as a user types it.

Each row of GOLDENS is one specs/lecture_*.yaml and the numbers its header comment cites:
the lecture's own where it states them, else ours, worked by hand in that comment. The
tolerance follows the lecture's precision: 2 digits (0.73, -0.53) -> abs=0.01; small
integers and halves -> exact up to float64 rounding. docs/lectures.md is the same table
for people.
"""
from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SPECS = REPO / "specs"

EXACT = 1e-9
TWO_DIGITS = 0.01


@dataclass(frozen=True)
class Golden:
    """One lecture example: d loss / d every leaf, and (with --all) forward values and
    d loss / d node for the nodes the lecture names."""
    spec: str
    loss: float
    grads: dict
    values: dict = field(default_factory=dict)
    node_grads: dict = field(default_factory=dict)
    tol: float = EXACT


GOLDENS = [
    # seeds/001 lines 302-353: f = (x + y) z at x=-2, y=5, z=-4; f = -12 is ours.
    Golden("lecture_cs231n_add_mul.yaml", loss=-12.0,
           grads={"x": -4.0, "y": -4.0, "z": 3.0},
           values={"q": 3.0, "f": -12.0},
           node_grads={"f": 1.0, "q": -4.0}),
    # seeds/001 lines 376-416: sigmoid neuron gate by gate; -0.53, -0.2, 0.2 are the
    # lecture's, the leaf grads and 0.73 are ours (2 digits, like the lecture).
    Golden("lecture_cs231n_sigmoid_neuron.yaml", loss=0.73,
           grads={"w0": -0.20, "x0": 0.39, "w1": -0.39, "x1": -0.59, "w2": 0.20},
           values={"z": 1.0, "minus_z": -1.0, "e": 0.37, "den": 1.37, "f": 0.73},
           node_grads={"f": 1.0, "den": -0.53, "e": -0.53, "minus_z": -0.20, "z": 0.20},
           tol=TWO_DIGITS),
    # seeds/001 lines 420-428: the same neuron with one sigmoid gate; 0.2 at line 427.
    Golden("lecture_cs231n_sigmoid_gate.yaml", loss=0.73,
           grads={"w0": -0.20, "x0": 0.39, "w1": -0.39, "x1": -0.59, "w2": 0.20},
           values={"z": 1.0, "f": 0.73},
           node_grads={"z": 0.20},
           tol=TWO_DIGITS),
    # seeds/001 lines 485-494: relu on a vector; the numbers are ours.
    Golden("lecture_cs231n_relu_vector.yaml", loss=19.0,
           grads={"x": [4.0, 0.0, 5.0, 0.0], "upstream": [1.0, 0.0, 3.0, 0.0]},
           values={"y": [1.0, 0.0, 3.0, 0.0]},
           node_grads={"y": [4.0, -1.0, 5.0, 9.0]}),
    # seeds/001 lines 506-534: y = x W, dx = dy W^T, dW = x^T dy; the numbers are ours.
    Golden("lecture_cs231n_matmul.yaml", loss=-4.0,
           grads={"x": [[-1.0, 2.0], [-1.0, -1.0]],
                  "W": [[1.0, -3.0, 5.0], [2.0, -4.0, 8.0]],
                  "upstream": [[5.0, 2.0, -1.0], [11.0, 4.0, -3.0]]},
           values={"y": [[5.0, 2.0, -1.0], [11.0, 4.0, -3.0]]},
           node_grads={"y": [[1.0, 0.0, 2.0], [0.0, -1.0, 1.0]]}),
    # seeds/000 lines 192-216: b = a^2, c = b^2, dc/da = 4a^3; a = 3 is ours.
    Golden("lecture_cs221_chain_square.yaml", loss=81.0,
           grads={"a": 108.0},
           values={"b": 9.0, "c": 81.0},
           node_grads={"c": 1.0, "b": 18.0}),
    # seeds/000 lines 231-354: hinge loss max(1 - (w . phi) y, 0); the numbers are ours.
    Golden("lecture_cs221_hinge.yaml", loss=2.5,
           grads={"w": [1.0, 2.0], "phi": [0.5, 0.5], "y": -1.5},
           values={"score": 1.5, "margin": -1.5},
           node_grads={"score": 1.0, "margin": -1.0}),
    # seeds/000 lines 591-729: (w . phi - y)^2 at w=[3,1], phi=[1,2]; 5, 3, 9, 6, 6,
    # [6, 12] are the lecture's; dphi and dy are ours.
    Golden("lecture_cs221_linear_regression.yaml", loss=9.0,
           grads={"w": [6.0, 12.0], "phi": [18.0, 6.0], "y": -6.0},
           values={"score": 5.0, "residual": 3.0, "loss": 9.0},
           node_grads={"loss": 1.0, "residual": 6.0, "score": 6.0}),
    # seeds/000 lines 381-570: h = sigma(V phi), (w . h - y)^2; the numbers are ours.
    Golden("lecture_cs221_two_layer.yaml", loss=1.0,
           grads={"V": [[0.5, 1.0], [1.5, 3.0]], "w": [1.0, 1.0],
                  "phi": [-2.0, 1.0], "y": -2.0},
           values={"h": [0.5, 0.5], "score": 2.0, "residual": 1.0},
           node_grads={"h": [2.0, 6.0], "score": 2.0, "residual": 2.0}),
    # seeds/003 lines 49-79: J = 3(a + bc) at a=5, b=3, c=2; all the lecture's.
    Golden("lecture_ng_j_3v.yaml", loss=33.0,
           grads={"a": 3.0, "b": 6.0, "c": 9.0},
           values={"u": 6.0, "v": 11.0, "J": 33.0},
           node_grads={"v": 3.0, "u": 3.0}),
    # seeds/004 lines 8-58: J = 1/2 (wx + b - y)^2 at x=-2, y=2, w=2, b=8; dx, dy are ours.
    Golden("lecture_ng_linear_unit.yaml", loss=2.0,
           grads={"w": -4.0, "b": 2.0, "x": 4.0, "y": -2.0},
           values={"c": -4.0, "a": 4.0, "d": 2.0, "J": 2.0},
           node_grads={"d": 2.0, "a": 2.0, "c": 2.0}),
]

BY_SPEC = pytest.mark.parametrize("golden", GOLDENS, ids=[g.spec[:-5] for g in GOLDENS])


@functools.lru_cache(maxsize=None)
def graphc_grad(spec: str, *flags: str) -> dict:
    """`graphc grad specs/SPEC --json [flags]`, as a user runs it; the parsed JSON object."""
    cmd = [sys.executable, "-m", "graphc", "grad", str(SPECS / spec), "--json", *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, f"{' '.join(cmd[1:])} exited {proc.returncode}:\n{proc.stderr}"
    return json.loads(proc.stdout)


def assert_close(got, want, tol: float, what: str) -> None:
    """`got` (JSON nested list or number) has `want`'s shape and values within abs=tol."""
    assert np.shape(got) == np.shape(want), (
        f"{what}: shape {np.shape(got)}, expected {np.shape(want)}")
    flat = np.asarray(got, dtype=float).ravel().tolist()
    expected = np.asarray(want, dtype=float).ravel().tolist()
    assert flat == pytest.approx(expected, abs=tol), what


@BY_SPEC
def test_loss_and_leaf_grads(golden: Golden):
    out = graphc_grad(golden.spec)
    assert isinstance(out["loss"], float)
    assert_close(out["loss"], golden.loss, golden.tol, f"{golden.spec}: loss")
    assert set(out["grads"]) == set(golden.grads), (
        f"{golden.spec}: without --all, grads are exactly d loss / d every leaf")
    for leaf, want in golden.grads.items():
        assert_close(out["grads"][leaf], want, golden.tol, f"{golden.spec}: d loss/d {leaf}")


@BY_SPEC
def test_intermediate_values_and_grads(golden: Golden):
    out = graphc_grad(golden.spec, "--all")
    assert_close(out["loss"], golden.loss, golden.tol, f"{golden.spec}: loss with --all")
    for node, want in golden.values.items():
        assert node in out["values"], f"{golden.spec}: --all has no value for node {node!r}"
        assert_close(out["values"][node], want, golden.tol, f"{golden.spec}: value of {node}")
    for name, want in {**golden.grads, **golden.node_grads}.items():
        assert name in out["grads"], f"{golden.spec}: --all has no grad for {name!r}"
        assert_close(out["grads"][name], want, golden.tol, f"{golden.spec}: d loss/d {name}")


def test_ng_nudge_w_with_params(tmp_path):
    """seeds/004 lines 56-58: with w nudged from 2 to 2.001, J drops from 2 to ~1.996."""
    ckpt = tmp_path / "nudged.npz"
    np.savez(ckpt, w=np.float64(2.001), b=np.float64(8.0))
    out = graphc_grad("lecture_ng_linear_unit.yaml", "--params", str(ckpt))
    assert out["loss"] == pytest.approx(1.996, abs=0.001)


def test_every_lecture_spec_has_goldens():
    on_disk = {p.name for p in SPECS.glob("lecture_*.yaml")}
    in_table = [g.spec for g in GOLDENS]
    assert len(in_table) == len(set(in_table)), "a spec appears twice in GOLDENS"
    assert on_disk - set(in_table) == set(), "lecture specs without goldens in GOLDENS"
    assert set(in_table) - on_disk == set(), "GOLDENS rows whose spec file is missing"


@pytest.mark.parametrize("spec", sorted(p.name for p in SPECS.glob("lecture_*.yaml")))
def test_lecture_spec_cites_its_seed_and_ships_float64(spec):
    text = (SPECS / spec).read_text()
    first = text.splitlines()[0]
    assert re.match(r"# Lecture: shared/seeds/\S+\.txt lines? \d+", first), (
        f"{spec}: first line must cite the seed file and line, got {first!r}")
    assert re.search(r"^dtype: float64$", text, re.MULTILINE), f"{spec}: lecture specs are float64"
