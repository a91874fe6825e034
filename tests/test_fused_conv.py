"""The fused window kernels (fused_conv.py, numba) against the NumPy kernels, bit for bit.

Oracles: the NumPy backend's own kernels (`run_kernel`) on both of their paths, strided
views and gathers (gather.SHORT_ROW patched), on geometries with stride, padding,
dilation, 1-D, overlapping and padded pools; pooling inputs are small integers, so most
windows hold ties, plus NaN, inf and signed zeros. A whole CNN training step with only
these kernels fused equals the generated step bit for bit, and the fused step code says
which steps ran fused.
"""
from __future__ import annotations

import re
import sys

import numpy as np
import pytest

numba = pytest.importorskip("numba", reason="the fused step code needs graphc[numba]")

from graphc.backends.numpy import fused_conv as FC  # noqa: E402
from graphc.backends.numpy import fusion as F  # noqa: E402
from graphc.backends.numpy import gather, run_kernel  # noqa: E402
from graphc.executor import using_step_code  # noqa: E402
from graphc.model import load_model  # noqa: E402
from graphc.ops import OPS  # noqa: E402
from graphc.ops.conv import positions_first  # noqa: E402
from graphc.timing import step_executor  # noqa: E402
from graphc.trainconfig import training_step  # noqa: E402
from test_cli import graphc, ok  # noqa: E402

CONVS = [
    ((2, 3, 6, 5), (4, 3, 3, 2), {"stride": [2, 1], "padding": [1, 0], "dilation": [1, 2]}),
    ((2, 2, 4, 4), (3, 2, 3, 3), {"stride": 1, "padding": 1, "dilation": 1}),
    ((3, 1, 11), (2, 1, 4), {"stride": 3, "padding": 1, "dilation": 2}),
    ((2, 3, 9, 9), (2, 3, 2, 2), {"stride": 2, "padding": 0, "dilation": 1}),
]
POOLS = [((2, 3, 7, 6), 2, None, 0), ((2, 3, 7, 6), 3, 2, 1), ((3, 2, 4, 4), 2, 1, 1),
         ((2, 2, 9), 3, 3, 1), ((2, 3, 7, 6), [2, 3], [1, 2], [1, 1]),
         ((2, 2, 12, 10), 2, None, 0)]
SPECIAL = [np.nan, np.inf, -np.inf, 0.0, -0.0]


def numpy_paths(monkeypatch, run) -> list:
    """run() on the NumPy kernels' strided path, then on their gathers (inf · 0 is NaN
    there, as a plan's run makes it: quietly)."""
    out = []
    for short_row in (0, 10 ** 6):
        monkeypatch.setattr(gather, "SHORT_ROW", short_row)
        with np.errstate(invalid="ignore"):
            out.append(run())
    return out


def fused(kernel, *args):
    """One call of `kernel` compiled as the fused step code compiles it."""
    FC.specialized(kernel, *args)(*args)


def same_bits(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes(), f"largest difference {np.nanmax(np.abs(a - b))}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,kernel,attrs", CONVS)
def test_fused_im2col_and_col2im_equal_numpy_bit_for_bit(monkeypatch, shape, kernel, attrs,
                                                         dtype):
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=shape).astype(dtype), rng.normal(size=kernel).astype(dtype)
    geo = FC._geo(shape, attrs, list(kernel[2:]))
    cols_shape = OPS["im2col"].infer([shape, kernel], attrs)
    cols = np.full(cols_shape, np.nan, dtype)          # every slot must be written
    first = positions_first(geo[-1] * geo[-2])
    fused(FC.im2col_positions_first if first else FC.im2col, x, cols, *geo)
    for expect in numpy_paths(monkeypatch, lambda: run_kernel(
            "im2col", np.empty(cols_shape, dtype), x, w, **attrs).copy()):
        same_bits(cols, expect)
    # dcols (conv_grad_columns) is [N, C·K, P] whatever the columns' layout
    dcols = rng.normal(size=(shape[0], int(np.prod(kernel[1:])), geo[-1] * geo[-2])
                       ).astype(dtype)
    dx = np.full(shape, np.nan, dtype)
    fused(FC.col2im, dcols, dx, *geo)
    for expect in numpy_paths(monkeypatch, lambda: run_kernel(
            "col2im", np.empty(shape, dtype), dcols, kernel=list(kernel[2:]),
            **attrs).copy()):
        same_bits(dx, expect)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,kernel,stride,padding", POOLS)
def test_fused_max_pool_and_its_gradient_equal_numpy_at_ties(monkeypatch, shape, kernel,
                                                             stride, padding, dtype):
    rng = np.random.default_rng(1)
    x = rng.integers(-2, 3, size=shape).astype(dtype)
    x.reshape(-1)[::7][:len(SPECIAL)] = SPECIAL[:x.size // 7 + 1]
    attrs = {"kernel": kernel, "stride": stride, "padding": padding}
    op, geo = f"max_pool{len(shape) - 2}d", FC._geo(shape, attrs)
    y_shape = OPS[op].infer([shape], attrs)
    lowest = np.array(-np.inf, dtype)
    y = np.empty(y_shape, dtype)
    fused(FC.max_pool, x, y, lowest, *geo)
    for expect in numpy_paths(monkeypatch, lambda: run_kernel(
            op, np.empty(y_shape, dtype), x, **attrs).copy()):
        same_bits(y, expect)
    g = rng.normal(size=y_shape).astype(dtype)
    g.reshape(-1)[:3] = [-1.0, np.inf, -0.0]
    taken, zero = np.zeros(y_shape[2:], bool).reshape(-1), np.zeros((), dtype)
    for masked in (False, True):          # True: relu_grad(dx, x) in the same pass
        dx = np.full(shape, np.nan, dtype)
        fused(FC.max_pool_grad, g, x, y, dx, taken, zero, lowest, masked, *geo)
        for expect in numpy_paths(monkeypatch, lambda: run_kernel(
                "max_pool_grad", np.empty(shape, dtype), g, x, y, **attrs).copy()):
            if masked:
                expect = run_kernel("relu_grad", np.empty_like(expect), expect, x)
            same_bits(dx, expect)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_conv_bias_and_relu_epilogue_equals_numpy(dtype):
    # integer data: many sums are exactly 0 (relu's edge), and the bias holds NaN and -inf
    rng = np.random.default_rng(2)
    x = rng.integers(-2, 3, size=(3, 2, 5, 5)).astype(dtype)
    w = rng.integers(-1, 2, size=(4, 2, 3, 3)).astype(dtype)
    b = np.array([0.0, -1.0, np.nan, -np.inf], dtype)
    attrs = {"stride": 1, "padding": 1, "dilation": 1}
    cols = run_kernel("im2col", np.empty((3, 18, 25), dtype), x, w, b, **attrs)
    y = run_kernel("conv2d", np.empty((3, 4, 5, 5), dtype), x, w, b, cols, **attrs)
    expect = run_kernel("relu", np.empty_like(y), y)
    m = run_kernel("conv2d", np.empty_like(y), x, w, cols, **attrs)     # no bias: the matmul
    got = np.full_like(y, np.nan)
    fused(FC.conv_bias_relu, m.reshape(3, 4, -1), b, np.zeros((), dtype),
          got.reshape(3, 4, -1))
    same_bits(got, expect)
    assert (expect == 0).any() and (expect > 0).any()


CNN = """\
inputs:
  x: [batch, 2, 9, 9]
  y: {shape: [batch], dtype: int64}
params:
  W1: {shape: [4, 2, 3, 3], init: he_normal}
  b1: [4]
  W2: {shape: [6, 4, 2, 2], init: he_normal}
  b2: [6]
  V: {shape: [24, 3], init: he_normal}
nodes:
  h1: relu(conv2d(x, W1, b1, padding=1))
  p1: max_pool2d(h1, kernel=3, stride=2, padding=1)
  h2: relu(conv2d(p1, W2, b2, stride=2, dilation=1))
  p2: max_pool2d(h2, kernel=1)
  z: flatten(p2) @ V
  loss: softmax_cross_entropy(z, y)
loss: loss
train: {optimizer: {sgd: {lr: 0.1}}, batch_size: 8}
"""


def trained(spec, code: str, steps: int = 2, batch: int = 8):
    """Every float value of the store after `steps` steps under `code`, and the source."""
    model = load_model(spec)
    step, _, dims = training_step(model, batch, {})
    with using_step_code(code):
        ex = step_executor(model, step, dims)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        ex.run({"x": rng.standard_normal(ex["x"].shape).astype(np.float32),
                "y": rng.integers(0, 3, batch)})
    return {k: v.copy() for k, v in model.store.items() if v.dtype.kind == "f"}, \
        ex.program.source


WINDOW_CALLS = ["im2col", "max_pool", "im2col", "max_pool", "max_pool_grad", "col2im",
                "max_pool_grad"]


def window_calls(source: str) -> list:
    """The window kernels a step's source calls, in order (names as bound)."""
    return [re.sub(r"(_positions_first)?(_\d+)?$", "", line.split("(")[0].strip())
            for line in source.splitlines() if "*geo" in line]


def assert_same_store(got: dict, expect: dict):
    assert got.keys() == expect.keys()
    for name, value in expect.items():
        same_bits(got[name], value)


@pytest.mark.parametrize("code", ["fused", "generated"])
def test_a_cnn_step_with_the_window_kernels_fused_is_bit_for_bit(tmp_path, monkeypatch, code):
    """`fused` with only the window patterns, and the default `generated` (which runs them
    wherever numba imports), against the generated step on NumPy alone."""
    monkeypatch.setattr(F, "PATTERNS", FC.CONV_PATTERNS)
    spec = tmp_path / "cnn.yaml"
    spec.write_text(CNN)
    (got, source), (expect, plain) = trained(spec, code), trained(spec, "numpy")
    assert window_calls(source) == WINDOW_CALLS, source
    assert window_calls(plain) == []
    assert source.count("# fused: conv2d + relu") == 2       # columns, then positions first
    assert "# fused: max_pool_grad + relu_grad" in source
    assert "conv_bias_relu_t(" in source
    assert_same_store(got, expect)
    assert not np.array_equal(expect["W1"], load_model(spec).store["W1"])


def test_the_default_step_code_falls_back_to_numpy_where_numba_fails(tmp_path, monkeypatch):
    """numba not importable, or failing to compile a kernel: the default step runs the
    NumPy kernels, the same numbers, and says it runs nothing in numba."""
    spec = tmp_path / "cnn.yaml"
    spec.write_text(CNN)
    expect, _ = trained(spec, "numpy")

    def cannot_compile(*args):
        raise numba.core.errors.TypingError("no compiler here")
    with monkeypatch.context() as m:
        m.setattr(FC, "specialized", cannot_compile)
        got, source = trained(spec, "generated")
    assert window_calls(source) == []
    assert_same_store(got, expect)
    for module in ("numba", "graphc.backends.numpy.fusion", "graphc.backends.numpy.fused_conv"):
        monkeypatch.setitem(sys.modules, module, None)      # `import` raises ImportError
    got, source = trained(spec, "generated")
    assert window_calls(source) == []
    assert_same_store(got, expect)


def test_time_says_how_many_steps_ran_in_numba_window_kernels(tmp_path):
    """The default step code on a CNN counts the steps its numba window kernels run (CNN
    above: the 7 kernels of WINDOW_CALLS, two with a relu gradient fused in, 9 steps; and
    the two biased convs with their relus, 4); `numpy` runs none and says nothing."""
    spec = tmp_path / "cnn.yaml"
    spec.write_text(CNN)
    lines = {}
    for code in ("generated", "numpy"):
        done = ok(graphc("time", spec, "--steps", "2", "--warmup", "1", "--step-code", code))
        lines[code] = next(x for x in done.stdout.splitlines() if x.startswith("step code:"))
    assert re.fullmatch(r"step code: generated, \d+ plan steps, \d+ kernel calls per step "
                        r"\(13 steps in numba kernels\)", lines["generated"])
    assert re.fullmatch(r"step code: numpy, \d+ plan steps, \d+ kernel calls per step",
                        lines["numpy"])
