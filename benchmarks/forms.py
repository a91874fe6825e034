"""Time the NumPy forms the hand-written step chooses between, on the ladder's shapes.

    python benchmarks/forms.py

Each row is one job done two or more ways, all writing into preallocated
arrays; the time is the median of single calls (robust to a busy machine).
benchmarks/handwritten.py uses the fastest form of each row that allocates nothing.
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = "1"

import time  # noqa: E402

import numpy as np  # noqa: E402

SHAPES = [(32, 100), (64, 128), (256, 512), (64, 64)]      # hidden layers of the ladder
SCORES = [(32, 3), (64, 10), (256, 10)]                    # scores of the ladder


def median_us(f, n: int = 2000) -> float:
    clock, times = time.perf_counter, []
    for _ in range(n):
        t = clock()
        f()
        times.append(clock() - t)
    return float(np.median(times)) * 1e6


def hidden_forms(b: int, d: int) -> dict:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((b, d)).astype(np.float32)
    g, zeros, ones = a.copy(), np.zeros_like(a), np.ones(b, np.float32)
    db, mask, fmask = np.zeros(d, np.float32), np.zeros((b, d), bool), a.copy()
    f0 = a.dtype.type(0)
    return {
        "relu: np.maximum(a, 0, out=a)": lambda: np.maximum(a, 0, out=a),
        "relu: np.maximum(a, zeros, out=a)": lambda: np.maximum(a, zeros, out=a),
        "bias grad: g.sum(0, out=db)": lambda: g.sum(0, out=db),
        "bias grad: np.dot(ones, g, out=db)": lambda: np.dot(ones, g, out=db),
        "relu grad: greater(a, 0) -> bool, multiply":
            lambda: (np.greater(a, f0, out=mask), np.multiply(g, mask, out=g)),
        "relu grad: greater(a, 0) -> float, multiply":
            lambda: (np.greater(a, f0, out=fmask), np.multiply(g, fmask, out=g)),
        "relu grad: copyto(g, 0, where=a <= 0)":
            lambda: (np.less_equal(a, f0, out=mask), np.copyto(g, 0, where=mask)),
    }


def score_forms(b: int, c: int) -> dict:
    rng = np.random.default_rng(0)
    s = rng.standard_normal((b, c)).astype(np.float32)
    flat, cols = s.reshape(-1), [s[:, j] for j in range(c)]
    row, row2 = np.zeros(b, np.float32), np.zeros((b, 1), np.float32)
    ones_c = np.ones(c, np.float32)
    idx = np.arange(b) * c + rng.integers(0, c, b)
    picked = np.zeros(b, np.float32)

    def column_max():
        np.maximum(cols[0], cols[1], out=row)
        for col in cols[2:]:
            np.maximum(row, col, out=row)
    return {
        "row max: np.maximum.reduce(s, axis=1, out=)":
            lambda: np.maximum.reduce(s, axis=1, keepdims=True, out=row2),
        "row max: np.maximum over columns": column_max,
        "row sum: np.sum(s, axis=1, out=)": lambda: np.sum(s, axis=1, keepdims=True, out=row2),
        "row sum: np.dot(s, ones, out=)": lambda: np.dot(s, ones_c, out=row),
        "gather: np.take(flat, idx, out=)": lambda: np.take(flat, idx, out=picked),
        "gather: flat.take(idx, None, out, 'clip')": lambda: flat.take(idx, None, picked, "clip"),
        "scatter: np.put(flat, idx, v)": lambda: np.put(flat, idx, picked),
        "scatter: flat.put(idx, v, 'clip')": lambda: flat.put(idx, picked, "clip"),
    }


def main() -> int:
    with np.errstate(all="ignore"):
        for shapes, forms in ((SHAPES, hidden_forms), (SCORES, score_forms)):
            names = list(forms(*shapes[0]))
            cells = {shape: {k: median_us(f) for k, f in forms(*shape).items()}
                     for shape in shapes}
            width = max(len(n) for n in names)
            print("us/call".ljust(width) + "".join(f"{f'{b}x{d}':>11}" for b, d in shapes))
            for n in names:
                print(n.ljust(width) + "".join(f"{cells[s][n]:11.2f}" for s in shapes))
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
