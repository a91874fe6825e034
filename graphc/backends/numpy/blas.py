"""Plain SGD's update of a large weight matrix as one BLAS call: `w -= a.T @ g`.

A weight gradient `d = a.T @ g` (matmul_gb) read only by its plain-SGD update
(`w -= d`, the learning rate folded into g) costs a GEMM that writes d, a finiteness
check that reads it and a subtraction that reads d and w and writes w: five passes over
a matrix of w's size. BLAS's GEMM takes C = alpha A B + beta C, so `w = -1 a.T g + 1 w`
is one call that reads and writes w once; d is never written. NumPy does not expose
beta, so the call goes to the CBLAS `?gemm` of the BLAS NumPy itself loaded (ctypes).

Numbers and the guard are unchanged:
- The fused call is used only where, at bind time, it gave bit for bit what NumPy's
  `a.dot(g, d)` then `np.subtract(w, d, out=w)` give, on arrays of the same shapes,
  dtype and layouts (`same_bits`): one BLAS block over the batch axis (OpenBLAS's
  SkylakeX kernel: up to 384 rows, Prescott's under 256), where w is added once per
  element, as the subtraction did.
- The update runs exactly when the unfused guard (`d . d` finite in the dtype) would let
  it. Before the call, `a . a * g . g` (two dot products over the operands, not over d)
  bounds d: d . d = ||d||_F^2 <= ||a||_F^2 ||g||_F^2 (Cauchy-Schwarz), so when 4 times
  that product is finite in the dtype (a margin for the rounding of the sums), d . d
  is finite too and the one call runs. When it is not, the step runs as before: d is
  computed and checked, and the update skips itself and sets the guard when d . d is
  not finite.
Where no CBLAS gemm is found, the test call disagrees, or w is small (the call's few
microseconds of ctypes outweigh what it saves), the steps run as they were.
"""
from __future__ import annotations

import ctypes
import glob
import os
import sys
from functools import lru_cache
from typing import Optional

import numpy as np

from .bind import source
from .copies import merged_pairs, reader_counts

GEMM_UPDATE_BYTES = 256 * 1024      # smaller weights: NumPy's three calls, as before
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112      # CBLAS's enums
SYMBOLS = ("scipy_cblas_{p}gemm64_", "cblas_{p}gemm64_", "scipy_cblas_{p}gemm", "cblas_{p}gemm")
PREFIX = {np.dtype(np.float32): ("s", ctypes.c_float), np.dtype(np.float64): ("d", ctypes.c_double)}


def _libraries() -> list:
    """Paths of the BLAS libraries NumPy may have loaded: those bundled with its wheel,
    then any mapped into this process whose name says BLAS (Linux)."""
    root = os.path.dirname(os.path.dirname(np.__file__))
    paths = sorted(glob.glob(os.path.join(root, "numpy.libs", "*blas*")) +
                   glob.glob(os.path.join(os.path.dirname(np.__file__), ".dylibs", "*blas*")))
    try:
        with open("/proc/self/maps") as maps:
            paths += sorted({line.split()[-1] for line in maps
                             if "blas" in line.rsplit("/", 1)[-1].lower() and "/" in line})
    except OSError:
        pass
    return list(dict.fromkeys(paths))


@lru_cache(maxsize=None)
def cblas_gemm(dtype: np.dtype):
    """The CBLAS `?gemm` for `dtype` (float32, float64) of NumPy's BLAS, checked on a small
    product against NumPy's, or None. Integers are passed as 64-bit: right for ILP64 and,
    on a 64-bit little-endian machine, for 32-bit integers too (the low half is read)."""
    if dtype not in PREFIX or sys.maxsize <= 2**32 or sys.byteorder != "little":
        return None
    prefix, scalar = PREFIX[dtype]
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    for path in _libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in SYMBOLS:
            fn = getattr(lib, name.format(p=prefix), None)
            if fn is None:
                continue
            fn.argtypes = [ctypes.c_int] * 3 + [i64] * 3 + [scalar, ptr, i64, ptr, i64,
                                                              scalar, ptr, i64]
            fn.restype = None
            if _agrees(fn, dtype):
                return fn
    return None


def _agrees(fn, dtype) -> bool:
    """Whether `fn` computes w - a @ b on a 3x4 @ 4x2 product as NumPy does."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 4)).astype(dtype), rng.standard_normal((4, 2)).astype(dtype)
    w = rng.standard_normal((3, 2)).astype(dtype)
    want = w - a @ b
    fn(ROW_MAJOR, NO_TRANS, NO_TRANS, 3, 2, 4, -1.0, a.ctypes.data, 4, b.ctypes.data, 2,
       1.0, w.ctypes.data, 2)
    return bool(np.allclose(w, want, rtol=1e-5, atol=1e-5))


class GemmUpdate:
    """`update(a, b, w)`: w -= a @ b in one CBLAS call, for arrays of the shapes, dtype and
    layouts it was made for (a, b C- or F-contiguous; w C-contiguous). It reads the arrays
    it is called with (the step code may point a name at a fed batch, feeding.py); it
    keeps the last ones only to reuse their addresses, looked up again when another
    array comes."""
    reads_arguments = True

    def __init__(self, fn, a: np.ndarray, b: np.ndarray, w: np.ndarray):
        (m, k), n = a.shape, b.shape[1]
        self.fn, self.last = fn, [None, None, None]
        self.pointers = [0, 0, 0]
        self.head = (ROW_MAJOR, _trans(a), _trans(b), m, n, k, -1.0)
        self.lead = (_lead(a), _lead(b), w.shape[1])

    def __call__(self, a: np.ndarray, b: np.ndarray, w: np.ndarray) -> None:
        last, p = self.last, self.pointers
        for i, arr in enumerate((a, b, w)):
            if arr is not last[i]:
                last[i], p[i] = arr, arr.ctypes.data
        lda, ldb, ldc = self.lead
        self.fn(*self.head, p[0], lda, p[1], ldb, 1.0, p[2], ldc)


def _trans(x: np.ndarray) -> int:
    return NO_TRANS if x.flags.c_contiguous else TRANS


def _lead(x: np.ndarray) -> int:
    """The leading dimension of a row-major matrix, or of its transpose when x is F-ordered."""
    return x.shape[1] if x.flags.c_contiguous else x.shape[0]


def _blasable(x: np.ndarray, dtype) -> bool:
    return x.ndim == 2 and x.dtype == dtype and x.size > 0 and \
        (x.flags.c_contiguous or x.flags.f_contiguous) and x.flags.aligned


@lru_cache(maxsize=None)
def same_bits(shapes: tuple, layouts: tuple, dtype: np.dtype) -> bool:
    """Whether the one-call update gives NumPy's bits (`a.dot(b, d)`, then w - d) on
    random arrays of these shapes, layouts ('C'/'F' of a and b) and dtype."""
    fn = cblas_gemm(dtype)
    if fn is None:
        return False
    rng = np.random.default_rng(1)
    a, b = (_random(rng, s, order, dtype) for s, order in zip(shapes, layouts))
    w0 = rng.standard_normal((shapes[0][0], shapes[1][1])).astype(dtype)
    d, numpy_w, fused_w = np.empty_like(w0), w0.copy(), w0.copy()
    a.dot(b, d)
    np.subtract(numpy_w, d, out=numpy_w)
    GemmUpdate(fn, a, b, fused_w)(a, b, fused_w)
    return bool(np.array_equal(numpy_w, fused_w))


def _random(rng, shape, order: str, dtype) -> np.ndarray:
    x = rng.standard_normal(shape if order == "C" else shape[::-1]).astype(dtype)
    return x if order == "C" else x.T


def gemm_updates(runs, values, buffers) -> list:
    """`runs` ((steps, call) pairs in order) with each weight gradient's GEMM and its
    plain-SGD update that `_fused` accepts run as one call."""
    readers = reader_counts(runs)
    return merged_pairs(runs, lambda pair: _fused(pair, values, buffers, readers))


def _fused(pair, values, buffers, readers) -> Optional[tuple]:
    """The one-call run of a matmul_gb step bound as `a.dot(b, out)` followed by the
    plain-SGD update (learning rate folded, no clipping) that alone reads its output, as
    it dies, for a weight of GEMM_UPDATE_BYTES or more whose fused update gives NumPy's
    bits; else None."""
    if not all(len(steps) == 1 for steps, _ in pair):
        return None
    ((first,), gemm), ((second,), update) = pair
    grad = buffers.get(first.outputs[0])
    if first.op != "matmul_gb" or second.op != "sgd" or not second.attrs.get("folded") or \
            second.attrs.get("max_norm") or second.inputs[1] != first.outputs[0] or \
            grad is None or grad.last_step != second.index or \
            readers.get(first.outputs[0]) != 1 or \
            getattr(gemm, "text", None) != "a.dot(b, out)" or not hasattr(update, "text"):
        return None
    a, b, w = gemm.names["a"], gemm.names["b"], values[second.inputs[0]]
    if update.names.get("w") is not w or update.names.get("g") is not gemm.names["out"]:
        return None         # a flat update of many params (flat._flat_sgd), not w's own
    if w.nbytes < GEMM_UPDATE_BYTES or not all(_blasable(x, w.dtype) for x in (a, b, w)) or \
            not w.flags.c_contiguous or w.shape != (a.shape[0], b.shape[1]) or \
            np.may_share_memory(w, a) or np.may_share_memory(w, b) or \
            set(gemm.names) & set(update.names):
        return None
    layouts = tuple("C" if x.flags.c_contiguous else "F" for x in (a, b))
    if not same_bits((a.shape, b.shape), layouts, w.dtype):
        return None
    text = "\n".join(["if math.isfinite(a_flat.dot(a_flat) * b_flat.dot(b_flat) * 4.0):",
                      "    gemm_update(a, b, w)", "else:"] +
                     ["    " + line for line in (gemm.text + "\n" + update.text).splitlines()])
    return (first, second), source(text, **gemm.names, **update.names,
                                   a_flat=a.ravel(order="K"), b_flat=b.ravel(order="K"),
                                   gemm_update=GemmUpdate(cblas_gemm(w.dtype), a, b, w))
