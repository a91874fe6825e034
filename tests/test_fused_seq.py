"""Fused sequence kernels (numba, backends/numpy/fused_seq.py) against the NumPy kernels.

Oracles: the NumPy backend's own kernels (`run_kernel`) on the same arrays. The gelu
kernels do the same float operations in the same order: bit for bit, NaN, inf and
-0.0 included. layer_norm's row sums go in another order: within 1e-6 relative
(float32), as documented in fused_seq.py and docs/design.md. A whole transformer
training step's gradients of fused code are as close to float64 as the generated step's.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

numba = pytest.importorskip("numba", reason="the fused step code needs graphc[numba]")

from graphc.backends.numpy import run_kernel  # noqa: E402
from graphc.backends.numpy import fused_seq as FS  # noqa: E402
from graphc.backends.numpy.sequence import unpack_layer_norm  # noqa: E402
from graphc.executor import using_step_code  # noqa: E402
from graphc.model import load_model, run_grads  # noqa: E402
from graphc.timing import step_executor  # noqa: E402
from graphc.trainconfig import training_step  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(13)
SPECIAL = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-40, -30.0, 12.5], dtype=np.float32)
GELU_H = (1.5 * FS.GELU_C * FS.GELU_K, 0.5 * FS.GELU_C, 1.0, 0.5)


def floats(*shape, dtype=np.float32, special=True):
    x = RNG.standard_normal(shape).astype(dtype)
    if special:
        x.reshape(-1)[:SPECIAL.size] = SPECIAL[:x.size]
    return x


def same_bits(a, b):
    assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), (a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_forward_is_bit_for_bit(dtype):
    x = floats(6, 5, 7, dtype=dtype)
    with np.errstate(all="ignore"):
        t = run_kernel("gelu_tanh", np.empty_like(x), x)
        y = run_kernel("gelu", np.empty_like(x), x, t)
        got_t, got_y = np.empty_like(x), np.empty_like(x)
        FS.gelu_inner(x.reshape(-1), got_t.reshape(-1), np.array([FS.GELU_K, 1, FS.GELU_C], dtype))
        np.tanh(got_t, out=got_t)
        FS.gelu_out(x.reshape(-1), got_t.reshape(-1), got_y.reshape(-1), np.array([1, 0.5], dtype))
    same_bits(got_t, t)
    same_bits(got_y, y)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_bias_add_before_gelu_is_bit_for_bit_in_place(dtype):
    m, b = floats(6, 5, 7, dtype=dtype), floats(7, dtype=dtype)[::-1].copy()
    with np.errstate(all="ignore"):
        x = run_kernel("add", np.empty_like(m), m, b)
        t = run_kernel("gelu_tanh", np.empty_like(x), x)
        got_t = np.empty_like(x)
        FS.bias_gelu_inner(m.reshape(-1, 7), b, got_t.reshape(-1, 7),
                           np.array([FS.GELU_K, 1, FS.GELU_C], dtype))
        np.tanh(got_t, out=got_t)
    same_bits(m, x)
    same_bits(got_t, t)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_grad_is_bit_for_bit_apart_and_in_place(dtype):
    g, x = floats(9, 33, dtype=dtype), floats(9, 33, dtype=dtype)[::-1].copy()
    h = np.array(GELU_H, dtype)
    with np.errstate(all="ignore"):
        t = np.tanh(x)
        expect = run_kernel("gelu_grad", np.empty_like(g), g, x, t)
        got = np.empty_like(g)
        FS.gelu_grad(g.reshape(-1), x.reshape(-1), t.reshape(-1), got.reshape(-1), h)
        FS.gelu_grad_in_place(g.reshape(-1), x.reshape(-1), t.reshape(-1), h)
    same_bits(got, expect)
    same_bits(g, expect)


def layer_norm_numpy(x, gamma, beta, g, eps):
    """(stats, out, dx) of the NumPy kernels."""
    stats = np.empty(x.shape[:-1] + (x.shape[-1] + 1,), x.dtype)
    run_kernel("layer_norm_stats", stats, x, gamma, beta, eps=eps)
    out = run_kernel("layer_norm", np.empty_like(x), x, gamma, beta, stats, eps=eps)
    dx = run_kernel("layer_norm_grad", np.empty_like(x), g, stats, gamma, wrt="x")
    return stats, out, dx


def layer_norm_fused(x, gamma, beta, g, eps):
    """(stats, out, dx) of the fused kernels, bound as fused_seq's patterns bind them."""
    stats = np.empty(x.shape[:-1] + (x.shape[-1] + 1,), x.dtype)
    xhat, inv_std = unpack_layer_norm(stats)
    width = x.shape[-1]
    out, dx = np.empty_like(x), np.empty_like(x)
    FS.layer_norm_forward(x.reshape(-1, width), np.ones(width, x.dtype),
                          xhat.reshape(-1, width), inv_std.reshape(-1), gamma, beta,
                          out.reshape(-1, width), np.array([1 / width, eps, 1], x.dtype), True)
    FS.layer_norm_grad_x(g.reshape(-1, width), gamma, xhat.reshape(-1, width),
                         inv_std.reshape(-1), dx.reshape(-1, width),
                         np.asarray(1 / width, x.dtype))
    return stats, out, dx


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-6), (np.float64, 1e-14)])
def test_layer_norm_and_its_gradient_within_the_fused_tolerance(dtype, rtol):
    x = floats(4, 11, 64, dtype=dtype, special=False) * 3 + 1
    gamma, beta = floats(64, dtype=dtype, special=False), floats(64, dtype=dtype, special=False)
    g = floats(4, 11, 64, dtype=dtype, special=False)
    for want, got in zip(layer_norm_numpy(x, gamma, beta, g, 1e-5),
                         layer_norm_fused(x, gamma, beta, g, 1e-5)):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.max(np.abs(want)))


def test_softmax_grad_rows_within_the_fused_tolerance_apart_and_in_place():
    y = np.exp(floats(64, 11, special=False))
    y /= y.sum(axis=-1, keepdims=True)
    g = floats(64, 11, special=False)
    want = run_kernel("softmax_grad", np.empty_like(g), g, y, axis=-1)
    got = np.empty_like(g)
    FS.softmax_rows_grad(g, y, got)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.max(np.abs(want)))
    FS.softmax_rows_grad(g, y, g)                   # over g, as the planner may place it
    np.testing.assert_array_equal(g, got)


def test_a_constant_row_with_eps_0_gives_numpys_non_finite_values_not_an_exception():
    """1/σ of a constant row is 1/0: inf in NumPy, and in the fused kernel (numba's
    Python error model would raise ZeroDivisionError there)."""
    x = np.ones((2, 8), np.float32)
    x[1] = RNG.standard_normal(8)
    gamma, beta, g = np.ones(8, np.float32), np.zeros(8, np.float32), np.ones((2, 8), np.float32)
    with np.errstate(all="ignore"):
        want, got = layer_norm_numpy(x, gamma, beta, g, 0.0), layer_norm_fused(x, gamma, beta, g, 0.0)
    assert np.isinf(unpack_layer_norm(want[0])[1][0]) and np.isinf(unpack_layer_norm(got[0])[1][0])
    for a, b in zip(want, got):
        np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b))


def gradients(spec, code: str, params=None) -> tuple:
    """(the loss's gradients, the params) of the sort transformer under step code `code`
    on a fixed batch of 8, as `graphc grad` runs it, at `params` when given."""
    rng = np.random.default_rng(0)
    feeds = {"x": rng.integers(0, 10, (8, 11)), "y": rng.integers(0, 10, (8, 6))}
    model = load_model(spec)
    for name, value in (params or {}).items():
        model.store[name][...] = value
    with using_step_code(code):
        return run_grads(model, feeds).grads, dict(model.store)


def test_a_fused_transformer_gradient_is_as_close_to_float64_as_the_generated_one(tmp_path):
    """Through two blocks the kernels' rounding differences add up: fused and generated
    gradients differ by up to about 1.2e-6 of a gradient's largest entry, and each is
    within about 2e-6 of the float64 gradient at the same params (measured: 1.6e-6 fused,
    1.8e-6 generated)."""
    spec = REPO / "specs" / "sort_transformer.yaml"
    wide = tmp_path / "sort64.yaml"
    wide.write_text(spec.read_text().replace("dtype: float32", "dtype: float64"))
    fused, params = gradients(spec, "fused")
    generated, _ = gradients(spec, "generated")
    truth, _ = gradients(wide, "generated", {k: params[k] for k in fused})

    def worst(grads) -> float:
        return max(float(np.max(np.abs(grads[k] - v)) / np.max(np.abs(v)))
                   for k, v in truth.items())
    assert truth.keys() == fused.keys() == generated.keys()
    assert worst(fused) < 4e-6 and worst(generated) < 4e-6
    assert worst(fused) < 1.5 * worst(generated)
    for name, value in generated.items():
        np.testing.assert_allclose(fused[name], value, atol=2e-6 * np.max(np.abs(value)),
                                   rtol=0, err_msg=name)


def test_the_fused_transformer_step_runs_the_sequence_kernels():
    model = load_model(REPO / "specs" / "sort_transformer.yaml")
    step, _, dims = training_step(model, 8, {})
    with using_step_code("fused"):
        source = step_executor(model, step, dims).program.source
    calls = [re.sub(r"_\d+$", "", line.split("(")[0].strip()) for line in source.splitlines()
             if re.match(r"\s*(bias_gelu|gelu|layer_norm|softmax_rows)_\w+\(", line)]
    assert sorted(set(calls)) == ["bias_gelu_inner", "gelu_grad_in_place", "gelu_out",
                                  "layer_norm_forward", "layer_norm_grad_x",
                                  "softmax_rows_grad"], source
    assert calls.count("softmax_rows_grad") == 2
    assert calls.count("layer_norm_forward") == 5 and calls.count("layer_norm_grad_x") == 5
    assert source.count("# fused: layer_norm_stats + layer_norm") == 5
    assert source.count("# fused: add + gelu_tanh + gelu") == 2


def test_the_default_step_code_runs_gelu_in_numba_bit_for_bit():
    """The gelu kernels are bit for bit NumPy's, so the default step code runs them
    wherever numba imports (Backend.bitwise_kernels), and nothing else of the sequence
    kernels: its gradients equal the `numpy` step code's, bit for bit."""
    spec = REPO / "specs" / "sort_transformer.yaml"
    model = load_model(spec)
    step, _, dims = training_step(model, 8, {})
    with using_step_code("generated"):
        ex = step_executor(model, step, dims)
    assert ex.numba_steps == 8          # 2 blocks: bias add + gelu_tanh + gelu, gelu_grad
    assert ex.program.source.count("# fused: add + gelu_tanh + gelu") == 2
    assert "layer_norm_forward(" not in ex.program.source
    (default, _), (plain, _) = (gradients(spec, code) for code in ("generated", "numpy"))
    assert default.keys() == plain.keys()
    for name, value in plain.items():
        assert np.array_equal(default[name], value), name
