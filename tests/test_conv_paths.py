"""The fast paths of the convolution kernels against the general ones, bit for bit.

Windows with short output rows go through gathers (backends/numpy/gather.py), the others
through strided views; a filter gradient over few positions is one GEMM over the batch,
else one matmul per sample; a channel sum is two BLAS dots. Each case here forces both
paths on the same data (the thresholds patched) and compares them with each other and
with the direct loops of conv_reference.py, on geometries that hit every branch:
stride, padding, dilation, 1-D and 2-D, overlapping and padded pools, and ties.
"""
from __future__ import annotations

import numpy as np
import pytest

import conv_reference
from graphc.backends.numpy import conv, gather, run_kernel
from graphc.ops import OPS
from graphc.ops.conv import positions_first

CONVS = [
    ((2, 3, 6, 5), (4, 3, 3, 2), {"stride": [2, 1], "padding": [1, 0], "dilation": [1, 2]}),
    ((2, 2, 4, 4), (3, 2, 3, 3), {"stride": 1, "padding": 1, "dilation": 1}),
    ((3, 1, 11), (2, 1, 4), {"stride": 3, "padding": 1, "dilation": 2}),
    ((2, 3, 7, 7), (2, 3, 2, 2), {"stride": 2, "padding": 0, "dilation": 1}),
]
POOLS = [(2, None, 0), (3, 2, 1), (2, 1, 1), (3, 3, 1), ([2, 3], [1, 2], [1, 1])]


def both_paths(monkeypatch, run):
    """run() with every window on strided views, then with every window gathered."""
    monkeypatch.setattr(gather, "SHORT_ROW", 0)
    strided = run()
    monkeypatch.setattr(gather, "SHORT_ROW", 10 ** 6)
    return strided, run()


def assert_same_bits(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes(), f"largest difference {np.abs(a - b).max()}"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape,kernel,attrs", CONVS)
def test_im2col_and_col2im_gathers_equal_the_strided_kernels(monkeypatch, shape, kernel,
                                                             attrs, dtype):
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=shape).astype(dtype), rng.normal(size=kernel).astype(dtype)
    cols_shape = OPS["im2col"].infer([shape, kernel], attrs)
    cols = both_paths(monkeypatch, lambda: run_kernel(
        "im2col", np.empty(cols_shape, dtype), x, w, **attrs).copy())
    assert_same_bits(*cols)
    op = f"conv{len(shape) - 2}d"
    y = run_kernel(op, np.empty(OPS[op].infer([shape, kernel], attrs), dtype), x, w,
                   cols[1], **attrs)
    np.testing.assert_allclose(y, conv_reference.conv(x, w, **attrs), rtol=1e-5, atol=1e-5)
    dcols = rng.normal(size=cols_shape).astype(dtype)
    dx = both_paths(monkeypatch, lambda: run_kernel(
        "col2im", np.empty(shape, dtype), dcols, kernel=list(kernel[2:]), **attrs).copy())
    assert_same_bits(*dx)


def _pool_cases():
    for shape in [(2, 3, 7, 6), (2, 2, 5), (3, 2, 4, 4)]:
        for kernel, stride, padding in POOLS:
            if len(shape) == 3 and isinstance(kernel, list):
                continue
            yield shape, {"kernel": kernel, "stride": stride, "padding": padding}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape,attrs", list(_pool_cases()))
def test_pool_gathers_equal_the_strided_kernels_at_ties(monkeypatch, shape, attrs, dtype):
    # integers in -2..2: most windows hold a tie, so the first-maximum rule is exercised
    rng = np.random.default_rng(1)
    x = rng.integers(-2, 3, size=shape).astype(dtype)
    d = len(shape) - 2
    y_shape = OPS[f"max_pool{d}d"].infer([shape], attrs)
    g = rng.normal(size=y_shape).astype(dtype)
    for kind in ("max", "avg"):
        y = both_paths(monkeypatch, lambda: run_kernel(
            f"{kind}_pool{d}d", np.empty(y_shape, dtype), x, **attrs).copy())
        assert_same_bits(*y)
        np.testing.assert_allclose(y[0], conv_reference.pool(x, kind=kind, **attrs),
                                   rtol=1e-6)
        grad = (lambda: run_kernel("max_pool_grad", np.empty(shape, dtype), g, x, y[0],
                                   **attrs).copy()) if kind == "max" else \
            (lambda: run_kernel("avg_pool_grad", np.empty(shape, dtype), g, **attrs).copy())
        assert_same_bits(*both_paths(monkeypatch, grad))


def test_a_tied_window_sends_g_to_its_first_maximum_on_both_paths(monkeypatch):
    x = np.full((1, 1, 2, 2), 7.0)
    y = np.full((1, 1, 1, 1), 7.0)
    for dx in both_paths(monkeypatch, lambda: run_kernel(
            "max_pool_grad", np.empty_like(x), -np.ones_like(y), x, y, kernel=2, stride=None,
            padding=0).copy()):
        assert dx.tolist() == [[[[-1.0, 0.0], [0.0, 0.0]]]]
        assert not np.signbit(dx.ravel()[1:]).any()       # +0 where g is not sent, as before


@pytest.mark.parametrize("positions", [3, 40])
def test_the_filter_gradient_is_one_gemm_or_per_sample_and_both_are_the_sum(positions):
    # dW[o, k] = Σ_n Σ_p g[n, o, p] cols[n, k, p]: with small integers every product and
    # sum is exact in float32, so both forms (3 positions: the columns positions first,
    # one GEMM; 40: per sample) must give the same numbers as the loop.
    rng = np.random.default_rng(2)
    g = rng.integers(-3, 4, size=(5, 4, positions)).astype(np.float32)
    cols = rng.integers(-3, 4, size=(5, 6, positions)).astype(np.float32)
    expect = np.einsum("nop,nkp->ok", g.astype(np.int64), cols.astype(np.int64))
    first = positions_first(positions)
    assert first == (positions == 3)
    laid = np.ascontiguousarray(cols.transpose(0, 2, 1)) if first else cols
    dw = run_kernel("conv_grad_filter", np.empty((4, 3, 2), np.float32), g, laid)
    assert dw.reshape(4, 6).tolist() == expect.tolist()


def test_a_channel_sum_over_batch_and_positions_is_the_bias_gradient():
    rng = np.random.default_rng(3)
    g = rng.integers(-9, 10, size=(3, 4, 2, 5)).astype(np.float32)
    db = run_kernel("sum", np.empty(4, np.float32), g, axis=[0, 2, 3])
    assert db.tolist() == g.astype(np.int64).sum(axis=(0, 2, 3)).tolist()
