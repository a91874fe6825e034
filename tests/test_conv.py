"""Convolution and pooling: values by hand and against loop references, ties, errors, memory.

The random-shape gradient checks are rows of tests/test_ops_grad.py; this file holds what
a table row cannot: numbers checkable by hand, PyTorch's tie rule for max pooling, the
located errors a user sees from the CLI, and what the planner does with the column
buffers (placed, reused across layers, no allocation in a step).
"""
from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import conv_reference
from bad_input_rows import assert_one_located_error
from graphc.backends.numpy import run_kernel
from graphc.model import Runner, load_model
from graphc.ops import OPS
from graphc.optim import parse_optimizer, training_graph
from test_cli import graphc, ok

REPO = Path(__file__).resolve().parents[1]
CNN_SPECS = sorted(p for p in (REPO / "specs").glob("*.yaml")
                   if "conv" in p.read_text(encoding="utf-8"))


# --- values checkable by hand -----------------------------------------------------------

def test_conv2d_of_a_3x3_ramp_with_a_2x2_box_is_the_window_sums(tmp_path):
    # x = 0..8 as a 3x3 image; a 2x2 box of ones sums each window: 0+1+3+4 = 8, 12, 20, 24;
    # with b = 1 each is one more. loss = their sum = 68, so dL/dW[k] = sum of the four
    # windows' entries at offset k: [0+1+3+4, 1+2+4+5, 3+4+6+7, 4+5+7+8] = [8, 12, 20, 24].
    spec = tmp_path / "box.yaml"
    spec.write_text("dtype: float64\ninputs:\n  x: [1, 1, 3, 3]\nparams:\n"
                    "  W: {shape: [1, 1, 2, 2], value: [[[[1, 1], [1, 1]]]]}\n"
                    "  b: {shape: [1], value: [1]}\n"
                    "nodes:\n  y: conv2d(x, W, b)\n  loss: sum(y)\n")
    r = json.loads(ok(graphc("grad", spec, "--json", "--all", "--inputs",
                             _npz(tmp_path, x=np.arange(9.0).reshape(1, 1, 3, 3)))).stdout)
    assert r["values"]["y"] == [[[[9.0, 13.0], [21.0, 25.0]]]]
    assert r["loss"] == 68.0
    assert r["grads"]["W"] == [[[[8.0, 12.0], [20.0, 24.0]]]]
    assert r["grads"]["b"] == [4.0]
    # dL/dx[i, j] = how many windows cover (i, j): corners 1, edges 2, centre 4
    assert r["grads"]["x"] == [[[[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]]]


def _npz(tmp_path: Path, **arrays) -> Path:
    path = tmp_path / "inputs.npz"
    np.savez(path, **arrays)
    return path


def test_padding_stride_and_dilation_by_hand():
    # x = 1..5 padded to [0, 1, 2, 3, 4, 5, 0]; a kernel [1, 1] dilated by 2 adds the padded
    # row at p and p + 2; stride 2 puts p at 0, 2, 4: 0 + 2, 2 + 4, 4 + 0.
    x = np.arange(1.0, 6.0).reshape(1, 1, 5)
    w = np.ones((1, 1, 2))
    cols = np.empty((1, 2, 3))
    attrs = {"stride": 2, "padding": 1, "dilation": 2}
    run_kernel("im2col", cols, x, w, **attrs)
    y = run_kernel("conv1d", np.empty((1, 1, 3)), x, w, cols, **attrs)
    assert y.tolist() == [[[2.0, 6.0, 4.0]]]


def test_pools_by_hand():
    x = np.array([[[1.0, 5.0, 2.0, 0.0, 3.0]]])
    mx = run_kernel("max_pool1d", np.empty((1, 1, 3)), x, kernel=2, stride=2, padding=1)
    assert mx.tolist() == [[[1.0, 5.0, 3.0]]]          # windows [-inf 1] [5 2] [0 3]
    av = run_kernel("avg_pool1d", np.empty((1, 1, 3)), x, kernel=2, stride=2, padding=1)
    assert av.tolist() == [[[0.5, 3.5, 1.5]]]          # padding counted: (0 + 1) / 2
    g = run_kernel("global_avg_pool", np.empty((1, 1)), x)
    assert g.tolist() == [[2.2]]


CONV1D_POOL = """\
dtype: float64
inputs:
  x: {value: [[[1.0, -2.0, 3.0, 0.5]]]}
params:
  W: {value: [[[0.5, -1.0]]]}
  b: {value: [0.25]}
nodes:
  y: conv1d(x, W, b, padding=1)
  p: max_pool1d(y, kernel=2)
  loss: sum(p * p)
"""


def test_conv1d_then_max_pool_by_hand_and_explained(tmp_path):
    # padded x = [0, 1, -2, 3, 0.5, 0]; y[l] = 0.5 xp[l] - xp[l + 1] + 0.25
    #   = [-0.75, 2.75, -3.75, 1.25, 0.5]; pooling pairs (the odd last one is dropped):
    #   p = [2.75, 1.25], loss = 7.5625 + 1.5625 = 9.125; dL/dy = [0, 5.5, 0, 2.5, 0]
    # dW = [5.5·1 + 2.5·3, 5.5·(-2) + 2.5·0.5] = [13, -9.75]; db = 8
    # dx = [0.5·5.5, -5.5, 0.5·2.5, -2.5] = [2.75, -5.5, 1.25, -2.5]
    spec = tmp_path / "c1.yaml"
    spec.write_text(CONV1D_POOL)
    r = json.loads(ok(graphc("grad", spec, "--json")).stdout)
    assert r["loss"] == 9.125
    assert r["grads"]["W"] == [[[13.0, -9.75]]] and r["grads"]["b"] == [8.0]
    assert r["grads"]["x"] == [[[2.75, -5.5, 1.25, -2.5]]]
    out = ok(graphc("explain", spec, "--wrt", "W")).stdout
    assert "graphc's gradient = [[[13, -9.75]]]  (matches)" in out


# --- against the loop references --------------------------------------------------------

@pytest.mark.parametrize("shape,kernel,attrs", [
    ((2, 3, 9, 7), (4, 3, 3, 2), {"stride": [2, 1], "padding": [1, 0], "dilation": [1, 2]}),
    ((1, 2, 5, 5), (3, 2, 5, 5), {"stride": 1, "padding": 2, "dilation": 1}),
    ((3, 1, 11), (2, 1, 4), {"stride": 3, "padding": 1, "dilation": 2}),
])
def test_conv_matches_the_loop_reference(shape, kernel, attrs):
    rng = np.random.default_rng(0)
    x, w, b = rng.normal(size=shape), rng.normal(size=kernel), rng.normal(size=kernel[0])
    op = f"conv{len(shape) - 2}d"
    y_shape = OPS[op].infer([shape, kernel, (kernel[0],)], attrs)
    cols = np.empty(OPS["im2col"].infer([shape, kernel], attrs))
    run_kernel("im2col", cols, x, w, b, **attrs)
    y = run_kernel(op, np.empty(y_shape), x, w, b, cols, **attrs)
    np.testing.assert_allclose(y, conv_reference.conv(x, w, b, **attrs), rtol=1e-12, atol=1e-12)


# --- ties -------------------------------------------------------------------------------

def test_max_pool_ties_send_the_whole_gradient_to_the_first_maximum():
    # PyTorch's CPU rule: one window [[7, 7], [7, 7]] of equal values; only [0, 0] gets g.
    # Overlapping windows (stride 1) on a constant row: each window's first element wins.
    x = np.full((1, 1, 2, 2), 7.0)
    y = np.full((1, 1, 1, 1), 7.0)
    dx = run_kernel("max_pool_grad", np.empty_like(x), np.ones_like(y), x, y, kernel=2,
                    stride=None, padding=0)
    assert dx.tolist() == [[[[1.0, 0.0], [0.0, 0.0]]]]
    row = np.zeros((1, 1, 4))
    dx = run_kernel("max_pool_grad", np.empty_like(row), np.array([[[1.0, 2.0, 3.0]]]), row,
                    np.zeros((1, 1, 3)), kernel=2, stride=1, padding=0)
    assert dx.tolist() == [[[1.0, 2.0, 3.0, 0.0]]]


# --- errors a user sees -----------------------------------------------------------------

SPEC = """\
inputs:
  x: [batch, {c}, 8, 8]
params:
  W: [4, 3, {k}, {k}]
nodes:
  y: conv2d(x, W{attrs})
  loss: sum(y)
"""


@pytest.mark.parametrize("c,k,attrs,expect", [
    (1, 3, "", "x [batch, 1, 8, 8] has 1 channels but W [4, 3, 3, 3] expects 3"),
    (3, 11, "", "the kernel spans 11 (kernel 11, dilation 1) but the padded input is only 8"),
    (3, 3, ", stride=[1, 2, 3]", "stride must be an integer >= 1 or a list of 2 of them"),
    (3, 3, ", padding=-1", "padding must be an integer >= 0"),
])
def test_shape_errors_are_located(tmp_path, c, k, attrs, expect):
    spec = tmp_path / "bad.yaml"
    spec.write_text(SPEC.format(c=c, k=k, attrs=attrs))
    r = graphc("check", spec)
    assert_one_located_error(r, {"exit": 2, "node": "y", "expect": expect}, f"error: {spec}:6:")


def test_a_bias_of_the_wrong_size_names_both_shapes(tmp_path):
    spec = tmp_path / "bias.yaml"
    spec.write_text(SPEC.format(c=3, k=3, attrs="").replace("W)", "W, b)")
                    .replace("params:\n", "params:\n  b: [5]\n"))
    r = graphc("check", spec)
    assert_one_located_error(r, {"exit": 2, "node": "y", "expect": "the bias must be [4]"},
                             "error: ")


# --- the plan: column buffers placed, reused, no allocation -----------------------------

def _training_executor(spec: Path, batch: int):
    model = load_model(spec)
    step = training_graph(model.graph, parse_optimizer(model.spec.train.get("optimizer")))
    for n in step.graph.leaves("state"):
        model.store[n.name] = np.zeros(n.shape, dtype=n.dtype)
    model.store["opt:lr"] = np.asarray(0.01, dtype=model.graph.dtype)
    runner = Runner(step.graph, model.store, {model.graph.loss}, step.forward)
    return model, runner.executor({"batch": batch})


def step_peak_bytes(spec: Path, batch: int) -> int:
    """The most bytes traced at once during three warm training steps at `batch`."""
    model, ex = _training_executor(spec, batch)
    rng = np.random.default_rng(0)
    feeds = {}
    for leaf in model.graph.leaves("input"):
        shape = (3 * batch,) + tuple(leaf.shape[1:])
        feeds[leaf.name] = rng.integers(0, 2, shape[0]) if leaf.dtype.startswith("int") else \
            rng.standard_normal(shape).astype(leaf.dtype)
    rows = [np.arange(i * batch, (i + 1) * batch) for i in range(3)]
    ex.feed_rows(feeds, rows[0])
    ex.run()                                              # warm-up
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for r in rows:
            ex.feed_rows(feeds, r)
            ex.run()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("spec", CNN_SPECS, ids=lambda p: p.stem)
def test_a_cnn_training_step_allocates_nothing_that_grows_with_the_batch(spec):
    # As for the hand-written step (test_benchmark_smoke.py): NumPy's ufunc iterator borrows
    # a buffer of at most np.getbufsize() elements per operand for a broadcasting or strided
    # call (a bias add, a pooling window) and frees it in the same call. Any array a step
    # made would grow 4x here; the arena, scratch and columns are all bound before.
    small, large = step_peak_bytes(spec, 64), step_peak_bytes(spec, 256)
    assert large <= small + 1024, f"peak {small} B at batch 64, {large} B at 256"
    assert small <= 3 * np.getbufsize() * 8 + 4096, f"peak {small} B"


def test_gathering_a_batch_into_the_input_buffers_allocates_nothing():
    # np.take(..., out=) in its default mode 'raise' buffers `out`: a batch-sized array on
    # every step (4096 B of x here), hidden above by the pooling kernels' ufunc buffers
    # until they stopped using them.
    model, ex = _training_executor(REPO / "specs" / "digits_cnn.yaml", 64)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((256, 1, 8, 8)).astype(np.float32),
             "y": rng.integers(0, 10, 256)}
    rows = rng.permutation(256)[:64]
    ex.feed_rows(feeds, rows)
    tracemalloc.start()
    try:
        ex.feed_rows(feeds, rows)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1024, f"feeding a batch of 64 traced {peak} B"
    np.testing.assert_array_equal(ex.backend.host("x"), feeds["x"][rows])


@pytest.mark.parametrize("spec", CNN_SPECS, ids=lambda p: p.stem)
def test_column_buffers_share_bytes_across_layers(spec):
    """Two convolutions' column values (im2col or conv_grad_columns) overlap in the arena:
    their lives do not meet, so the planner reuses the bytes."""
    plan = json.loads(ok(graphc("plan", spec, "--json", "--batch-size", "32")).stdout)
    ops = {s["outputs"][0]: s["op"] for s in plan["steps"]}
    cols = [b for b in plan["buffers"] if ops.get(b["value"]) in ("im2col", "conv_grad_columns")]
    shared = [(a["value"], b["value"]) for a in cols for b in cols if a["value"] < b["value"]
              and a["offset"] < b["offset"] + b["bytes"] and b["offset"] < a["offset"] + a["bytes"]]
    assert shared, f"no two column buffers share bytes: {[c['value'] for c in cols]}"
    assert plan["arena_bytes"] == plan["lower_bound_bytes"]
