"""Fused kernels (numba, the graphc[numba] extra) against the NumPy kernels they replace.

Oracles: the NumPy backend's own kernels (`run_kernel`) on the same arrays. Bias add,
relu, the relu mask, the folded SGD update and the softmax cross-entropy gradient do the
same float operations in the same order: bit for bit. The softmax cross-entropy
forward uses numba's exp and sequential sums: within 1e-6 relative (float32), as
documented in fusion.py and docs/design.md. A whole training step of fused code agrees
with the generated step within the same bound.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

numba = pytest.importorskip("numba", reason="the fused step code needs graphc[numba]")

from graphc.backends.numpy import run_kernel  # noqa: E402
from graphc.backends.numpy import fusion as F  # noqa: E402
from graphc.executor import using_step_code  # noqa: E402
from graphc.model import load_model  # noqa: E402
from graphc.timing import step_executor  # noqa: E402
from graphc.trainconfig import training_step  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_mlp import mlp_spec  # noqa: E402

RNG = np.random.default_rng(14)
SPECIAL = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-40, -3.0, 2.5], dtype=np.float32)


def floats(*shape, dtype=np.float32):
    x = RNG.standard_normal(shape).astype(dtype)
    x.reshape(-1)[:SPECIAL.size] = SPECIAL[:x.size]        # the edge cases of relu and max
    return x


def same_bits(a, b):
    assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), (a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bias_add_and_relu_are_bit_for_bit(dtype):
    m, b = floats(16, 5, dtype=dtype), floats(5, dtype=dtype)
    added = run_kernel("add", np.empty_like(m), m, b)
    expect = run_kernel("relu", np.empty_like(m), added)
    got, got_add = np.empty_like(m), np.empty_like(m)
    F.bias_add_relu(m, b, np.zeros((), dtype), got)
    F.bias_add(m, b, got_add)
    same_bits(got, expect)
    same_bits(got_add, added)
    F.bias_add_relu(m, b, np.zeros((), dtype), m)           # in place, as the planner may
    same_bits(m, expect)


def test_relu_mask_is_bit_for_bit():
    g, y = floats(8, 6), floats(8, 6)[::-1].copy()
    got = np.empty_like(g)
    F.relu_mask(g.reshape(-1), y.reshape(-1), np.zeros((), np.float32), got.reshape(-1))
    with np.errstate(invalid="ignore"):                     # inf * 0 is NaN on both sides
        same_bits(got, run_kernel("relu_grad", np.empty_like(g), g, y))


def test_folded_sgd_is_bit_for_bit_and_skips_a_non_finite_gradient():
    w, g = floats(4, 3), RNG.standard_normal((4, 3)).astype(np.float32)
    w[np.isnan(w) | np.isinf(w)] = 1.0
    expect = w - g
    guard = np.zeros((), np.float32)
    F.sgd_folded(w.reshape(-1), g.reshape(-1), guard, float(np.finfo(np.float32).max))
    same_bits(w, expect)
    g[1, 1] = np.inf
    F.sgd_folded(w.reshape(-1), g.reshape(-1), guard, float(np.finfo(np.float32).max))
    same_bits(w, expect)
    assert np.isnan(guard)


def test_momentum_sgd_is_bit_for_bit():
    w, g = (RNG.standard_normal((5, 4)).astype(np.float32) for _ in range(2))
    v, lr = RNG.standard_normal((5, 4)).astype(np.float32), np.asarray(0.1, np.float32)
    w2, v2, guard = w.copy(), v.copy(), np.zeros((), np.float32)
    run_kernel("sgd", w, w, g, guard, lr, v, momentum=0.9, nesterov=False, weight_decay=0.0,
               max_norm=0.0)
    F.sgd_momentum(w2.reshape(-1), g.reshape(-1), v2.reshape(-1), guard, lr,
                   np.asarray(0.9, np.float32), float(np.finfo(np.float32).max))
    same_bits(w2, w)
    same_bits(v2, v)


def softmax_inputs(rows=32, classes=10):
    z = RNG.standard_normal((rows, classes)).astype(np.float32) * 4
    labels = RNG.integers(0, classes, rows)
    return z, labels


def test_softmax_cross_entropy_within_1e6_relative():
    z, labels = softmax_inputs()
    rows, classes = z.shape
    stats = run_kernel("softmax_cross_entropy_stats", np.empty((rows, classes + 2), np.float32),
                       z, labels)
    loss = run_kernel("softmax_cross_entropy", np.empty((), np.float32), z, labels, stats)
    got, got_loss = np.empty_like(stats), np.empty((), np.float32)
    e, s, picked = F.unpack_stats(got, rows, classes)
    F.softmax_ce(z, labels, e, s, picked, got_loss, F._inverse(rows, np.float32))
    np.testing.assert_allclose(got, stats, rtol=1e-6)
    np.testing.assert_allclose(got_loss, loss, rtol=1e-6)
    same_bits(picked, F.unpack_stats(stats, rows, classes)[2])      # a subtraction: exact


def test_softmax_cross_entropy_gradient_is_bit_for_bit_given_the_stats():
    z, labels = softmax_inputs()
    rows, classes = z.shape
    stats = run_kernel("softmax_cross_entropy_stats", np.empty((rows, classes + 2), np.float32),
                       z, labels)
    g = np.asarray(0.3, np.float32)
    expect = run_kernel("softmax_cross_entropy_grad", np.empty_like(z), g, z, labels, stats)
    e, s, _ = F.unpack_stats(stats, rows, classes)
    got = np.empty_like(z)
    F.softmax_ce_grad(g, e, s, labels, got, F._inverse(rows, np.float32))
    same_bits(got, expect)


def one_step(spec: Path, code: str, batch: int = 16) -> dict:
    """Params after one training step under `code`, on a fixed batch."""
    model = load_model(spec)
    step, _, dims = training_step(model, batch, {})
    with using_step_code(code):
        ex = step_executor(model, step, dims)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal(ex["x"].shape).astype(np.float32),
             "y": rng.integers(0, 3, batch)}
    model.store["opt:lr"][...] = 0.1
    ex.run(feeds)
    return {k: v.copy() for k, v in model.store.items() if v.dtype.kind == "f"}


@pytest.mark.parametrize("spec", ["tiny", "spiral"])
def test_a_fused_training_step_agrees_within_1e6_relative(spec, tmp_path):
    path = REPO / "specs" / "spiral_mlp.yaml"
    if spec == "tiny":
        path = tmp_path / "tiny.yaml"
        path.write_text(mlp_spec("tiny", [2, 100, 3]))
    fused, generated = one_step(path, "fused"), one_step(path, "generated")
    assert fused.keys() == generated.keys()
    for name, value in generated.items():
        scale = float(np.max(np.abs(value))) if value.size else 0.0
        np.testing.assert_allclose(fused[name], value, rtol=1e-6, atol=1e-6 * scale,
                                   err_msg=name)
    changed = [n for n in ("W1", "b1") if not np.array_equal(fused[n], load_model(path).store[n])]
    assert changed, "the step changed no param: the comparison says nothing"


KEPT = """\
inputs:
  x: [batch, 3]
  y: {shape: [batch], dtype: int64}
params:
  W: {shape: [3, 4], init: he_normal}
  b: [4]
  V: {shape: [4, 3], init: he_normal}
nodes:
  z: x @ W + b
  h: relu(z)
  twice: h @ V + z @ V
  loss: softmax_cross_entropy(twice, y)
loss: loss
outputs: [z]
train: {optimizer: {sgd: {lr: 0.1}}, batch_size: 16}
"""


def emitted(spec: Path) -> str:
    model = load_model(spec)
    step, _, dims = training_step(model, 16, {})
    with using_step_code("fused"):
        return step_executor(model, step, dims).program.source


def test_bias_and_relu_fuse_only_when_the_relu_reads_the_sum_alone(tmp_path):
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(mlp_spec("tiny", [2, 100, 3]))
    source = emitted(tiny)
    assert "# fused: add + relu" in source and "bias_add_relu(h1_matmul, b1, " in source
    assert "# fused: softmax_cross_entropy_stats + softmax_cross_entropy" in source
    kept = tmp_path / "kept.yaml"
    kept.write_text(KEPT)
    source = emitted(kept)
    assert "# fused: add + relu" not in source and "bias_add(z_matmul, b, z)" in source
    fused, generated = one_step(kept, "fused"), one_step(kept, "generated")
    for name, value in generated.items():
        np.testing.assert_allclose(fused[name], value, rtol=1e-6, atol=1e-7, err_msg=name)


def test_fused_plain_sgd_keeps_the_one_flat_update(tmp_path):
    """Plain SGD's four updates stay one check and one subtraction over the stashed
    gradients (flat._flat_sgd), not four fused per-param loops."""
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(mlp_spec("tiny", [2, 100, 3]))
    source = emitted(tiny)
    assert "sgd_folded(" not in source
    assert source.count("math.isfinite(") == 1 and source.count("np.subtract(w_") == 1



def trained(spec: Path, code: str, steps: int = 3, batch: int = 16) -> dict:
    """Params and optimizer state after `steps` training steps under `code`, and the source."""
    model = load_model(spec)
    step, _, dims = training_step(model, batch, {})
    with using_step_code(code):
        ex = step_executor(model, step, dims)
    rng = np.random.default_rng(0)
    model.store["opt:lr"][...] = 0.01
    for _ in range(steps):       # Adam's bias corrections change with the step count
        ex.run({"x": rng.standard_normal(ex["x"].shape).astype(np.float32),
                "y": rng.integers(0, 3, batch)})
    source = ex.program.source if ex.program else ""
    return {k: v.copy() for k, v in model.store.items() if v.dtype.kind == "f"}, source


@pytest.mark.parametrize("optimizer,kernel", [
    ("{adam: {}}", "adam("), ("{adam: {weight_decay: 0.01}}", "adam("),
    ("{adamw: {}}", "adam("), ("{rmsprop: {}}", "rmsprop("),
    ("{rmsprop: {momentum: 0.9, weight_decay: 0.001}}", "rmsprop(")])
def test_fused_adam_and_rmsprop_steps_are_bit_for_bit(optimizer, kernel, tmp_path,
                                                      monkeypatch):
    """Only the updates fused (the softmax's fused forward differs in the last bits)."""
    monkeypatch.setattr(F, "PATTERNS", (F._adam, F._rmsprop))
    path = tmp_path / "tiny.yaml"
    path.write_text(mlp_spec("tiny", [2, 100, 3]).replace(
        "optimizer: {sgd: {lr: 0.01}}", f"optimizer: {optimizer}"))
    (fused, source), (generated, _) = trained(path, "fused"), trained(path, "generated")
    calls = [line for line in source.splitlines() if line.strip().startswith(kernel)]
    assert len(calls) == 4, source          # every param's update is fused
    assert fused.keys() == generated.keys()
    for name, value in generated.items():
        same_bits(fused[name], value)
    assert not np.array_equal(generated["W1"], load_model(path).store["W1"])


def test_fused_adam_skips_a_non_finite_gradient():
    w, g = (RNG.standard_normal(7).astype(np.float32) for _ in range(2))
    g[3] = np.inf
    m, v, count, guard = np.ones(7, np.float32), np.ones(7, np.float32), \
        np.zeros((), np.float32), np.zeros((), np.float32)
    before = [a.copy() for a in (w, m, v, count)]
    h = np.array([0.9, 0.1, 0.999, 0.001, 1, 1e-8, 0.01, 1, 0], np.float32)
    F.adam(w, g, m, v, count, guard, h, float(np.finfo(np.float32).max))
    for a, b in zip((w, m, v, count), before):
        same_bits(a, b)
    assert np.isnan(guard)
    F.rmsprop(w, g, m, v, np.asarray(0.01, np.float32), guard,
              np.array([0.99, 0.01, 1e-8, 0, 0], np.float32), float(np.finfo(np.float32).max))
    for a, b in zip((w, m), before):
        same_bits(a, b)
