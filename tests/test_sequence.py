"""Sequence ops beyond the random gradient table: hand-checked embedding gradients with
repeated ids, causal masking, attention's saved probabilities, layer_norm against its
closed form, and the errors a user sees (ids out of range, bad slices)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from graphc.backends.numpy import run_kernel
from graphc.ir import build_graph
from graphc.spec import load_spec
from test_cli import graphc
from test_ops_grad import attention_by_loops
from test_ops_semantics import grads_of, run, spec_file

EMBED = """
inputs:
  ids: {shape: [4], dtype: int64, value: [2, 0, 2, 2]}
params:
  W: {value: [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]}
  c: {value: [1.0, 10.0]}
nodes:
  loss: sum(embedding(ids, W) * c)
"""


def test_repeated_ids_accumulate(tmp_path):
    # rows 2, 0, 2, 2: loss = (5 + 60) * 3 + (1 + 20) = 216; d W[r] = (#times r read) * c
    loss, grads = grads_of(tmp_path, EMBED)
    assert loss == 216.0
    np.testing.assert_array_equal(grads["W"], [[1, 10], [0, 0], [3, 30]])


@pytest.mark.parametrize("rows, width", [(3, 4), (6, 2)])     # one-hot GEMM; sorted segments
def test_embedding_grad_accumulates_repeated_ids_in_both_forms(rows, width):
    ids = np.array([[2, 0, 2], [2, 1, 2]])
    g = np.random.default_rng(0).normal(size=(2, 3, width))
    want = np.zeros((rows, width))
    np.add.at(want, ids.reshape(-1), g.reshape(-1, width))    # in order: 2, 0, 2, 2, 1, 2
    got = run("embedding_grad", g, ids, shape=[rows, width])
    np.testing.assert_allclose(got, want, rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(got[2], g[0, 0] + g[0, 2] + g[1, 0] + g[1, 2], rtol=1e-15)


@pytest.mark.parametrize("rows, width", [(3, 4), (6, 2)])     # one-hot GEMM; sorted segments
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_embedding_grad_keeps_a_non_finite_g_to_the_rows_read(rows, width, bad):
    # id 2 reads the bad element: row 2 alone is non-finite, row 0 and the unread rows are
    # what they would be (the GEMM's 0 · NaN once spread it over a whole column)
    ids = np.array([2, 0, 2])
    g = np.arange(3.0 * width).reshape(3, width)
    g[2, 1] = bad
    want = np.zeros((rows, width))
    np.add.at(want, ids, g)
    got = run("embedding_grad", g, ids, shape=[rows, width])
    np.testing.assert_array_equal(got, want)
    assert np.isfinite(np.delete(got, 2, axis=0)).all() and not np.isfinite(got[2, 1])


def test_embedding_ids_out_of_range_name_the_node(tmp_path):
    path = spec_file(tmp_path, EMBED.replace("[2, 0, 2, 2]", "[2, 0, 3, 2]"))
    proc = graphc("grad", path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip()
    assert line.startswith("error: ") and len(line.splitlines()) == 1
    assert "spec.yaml:3:3: node 'ids': id 3 at index [2] is out of range" in line
    assert "'loss/embedding' (embedding) reads it against the 3 rows of 'W'" in line


def test_embedding_negative_id_is_refused_not_wrapped(tmp_path):
    # NumPy's take would read row -1 (the last one) without a word
    path = spec_file(tmp_path, EMBED.replace("[2, 0, 2, 2]", "[2, -1, 2, 2]"))
    proc = graphc("grad", path)
    assert proc.returncode == 2 and "id -1 at index [1] is out of range" in proc.stderr


def test_float_ids_are_refused(tmp_path):
    path = spec_file(tmp_path, EMBED.replace("dtype: int64, ", ""))
    proc = graphc("check", path)
    assert proc.returncode == 2
    assert "input 1 of embedding is 'ids' (float32), but must be integer" in proc.stderr


def attend(q, k, v, causal=False):
    """The forward op's two kernels, as a plan runs them: the saved probabilities, then P v."""
    probs = run("attention_probs", q, k, v, causal=causal)
    return run("scaled_dot_product_attention", q, k, v, probs, causal=causal)


def test_causal_attention_ignores_the_future():
    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(size=(2, 5, 3)) for _ in range(3))
    out = attend(q, k, v, causal=True)
    k2, v2 = k.copy(), v.copy()
    k2[:, 3:], v2[:, 3:] = 100.0, -100.0         # change keys and values 3 and 4 only
    out2 = attend(q, k2, v2, causal=True)
    np.testing.assert_allclose(out[:, :3], out2[:, :3], rtol=1e-12)
    assert not np.allclose(out[:, 3:], out2[:, 3:])
    np.testing.assert_allclose(out[:, 0], v[:, 0], rtol=1e-12)     # query 0 sees key 0 only
    np.testing.assert_allclose(out, attention_by_loops(q, k, v, causal=True), rtol=1e-12)


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_a_masked_position_gets_zero_probability_whatever_its_score(bad):
    # key 4's score is +inf (NaN) for every query; queries 0-3 may not see it (adding the
    # -inf mask made inf - inf = NaN), query 4 may, and its row is NaN as softmax's is
    q, k, v = np.ones((1, 5, 2)), np.ones((1, 5, 2)), np.ones((1, 5, 2))
    finite = run("attention_probs", q, k, v, causal=True)
    k[0, 4] = bad
    probs = run("attention_probs", q, k, v, causal=True)
    np.testing.assert_array_equal(probs[0, :4], finite[0, :4])
    assert (probs[0, :4, 4] == 0).all() and np.isnan(probs[0, 4]).all()
    np.testing.assert_array_equal(finite[0, 1], [0.5, 0.5, 0, 0, 0])


def test_attention_is_stable_and_hand_checked():
    # one query [1, 0] against keys [1, 0], [0, 1] at d = 2: weights softmax([1, 0] / √2)
    q, k, v = np.array([[1.0, 0.0]]), np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[1.0], [0.0]])
    w = np.exp(1 / np.sqrt(2)) / (np.exp(1 / np.sqrt(2)) + 1)
    assert attend(q, k, v)[0, 0] == pytest.approx(w, rel=1e-14)
    big = attend(q * 1e4, k * 1e4, v)
    assert np.isfinite(big).all() and big[0, 0] == pytest.approx(1.0)


def test_attention_probabilities_are_a_saved_value(tmp_path):
    path = spec_file(tmp_path, """
inputs: {x: [batch, 4, 8]}
nodes:
  y: scaled_dot_product_attention(x, x, x, causal=True)
  loss: sum(y)
""")
    graph = build_graph(load_spec(path))
    saved = graph["y/saved"]
    assert saved.op == "attention_probs" and saved.shape == ("batch", 4, 4)
    assert saved.attrs == {"causal": True} and graph["y"].inputs[-1] == "y/saved"


def test_layer_norm_by_hand():
    # row [1, 2, 3]: mean 2, var 2/3; eps 0 gives x̂ = [-1, 0, 1]·√1.5 and 1/σ = √1.5, saved
    # side by side; the forward kernel scales and shifts the saved x̂
    x, gamma, beta = [[1.0, 2.0, 3.0]], [1.0, 1.0, 2.0], [0.0, 0.5, 0.0]
    stats = run("layer_norm_stats", x, gamma, beta, eps=0.0)
    root = np.sqrt(1.5)
    np.testing.assert_allclose(stats, [[-root, 0.0, root, root]], rtol=1e-14, atol=1e-15)
    y = run("layer_norm", x, gamma, beta, stats, eps=0.0)
    np.testing.assert_allclose(y, [[-root, 0.5, 2 * root]], rtol=1e-14, atol=1e-15)
    # d/dx at g = [1, 0, 0], gamma 1: mean(g) = 1/3, mean(g x̂) = -√1.5/3, so
    # (g - mean(g) - x̂ mean(g x̂)) / σ = ([1, 0, 0] - 1/3 + [-0.5, 0, 0.5])·√1.5
    g = [[1.0, 0.0, 0.0]]
    dx = run("layer_norm_grad", g, stats, [1.0, 1.0, 1.0], wrt="x")
    np.testing.assert_allclose(dx, [[root / 6, -root / 3, root / 6]], rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(run("layer_norm_grad", g, stats, gamma, wrt="gamma"),
                               [[-root, 0.0, 0.0]], rtol=1e-14, atol=1e-15)


def test_gelu_saves_its_tanh(tmp_path):
    path = spec_file(tmp_path, "inputs: {x: [batch, 5]}\nnodes:\n  y: gelu(x)\n"
                               "  loss: sum(y)\n")
    graph = build_graph(load_spec(path))
    assert graph["y/saved"].op == "gelu_tanh" and graph["y"].inputs == ("x", "y/saved")
    t = run("gelu_tanh", [0.0, 1.0])
    assert t[0] == 0.0 and t[1] == pytest.approx(np.tanh(np.sqrt(2 / np.pi) * 1.044715))


@pytest.mark.parametrize("in_place", [False, True])
def test_gelu_grad_in_row_blocks_is_bit_for_bit_the_whole_call(monkeypatch, in_place):
    """gelu_grad runs block by block where its arrays exceed BLOCK_BYTES: 7 rows of 8
    float32 in blocks of 2 rows (the last one short), written in place of g or not, give
    every bit of one call over the whole arrays (the NumPy kernel made directly)."""
    from graphc.backends.numpy import bind, fast
    rng = np.random.default_rng(0)
    g, x = (rng.standard_normal((7, 8)).astype(np.float32) for _ in range(2))
    t = np.tanh(x)
    whole = run_kernel("gelu_grad", np.empty_like(g), g, x, t)
    assert np.array_equal(whole, run_kernel_as(fast.b_gelu_grad, g, x, t, in_place))
    monkeypatch.setattr(bind, "BLOCK_BYTES", 2 * 8 * 4)
    assert np.array_equal(whole, run_kernel_as(fast.BIND["gelu_grad"], g, x, t, in_place))
    calls = []
    monkeypatch.setattr(fast, "b_gelu_grad", lambda out, *ins: calls.append(out.shape))
    bind.in_row_blocks(fast.b_gelu_grad, np.empty_like(g), g, x, t)
    assert calls == [(2, 8), (2, 8), (2, 8), (1, 8)]


def run_kernel_as(bind_fn, g, x, t, in_place: bool) -> np.ndarray:
    """One call of `bind_fn` bound as a plan binds it, out = a copy of g when `in_place`."""
    from graphc.backends.numpy.workspace import Workspace
    g = g.copy()
    out = g if in_place else np.empty_like(g)
    with Workspace().binding():
        call = bind_fn(out, g, x, t)
    call()
    return out


def test_layer_norm_saves_its_stats(tmp_path):
    path = spec_file(tmp_path, """
inputs: {x: [batch, 4, 8]}
params: {gamma: [8], beta: [8]}
nodes:
  y: layer_norm(x, gamma, beta)
  loss: sum(y * y)
""")
    graph = build_graph(load_spec(path))
    saved = graph["y/saved"]
    assert saved.op == "layer_norm_stats" and saved.shape == ("batch", 4, 9)
    assert graph["y"].inputs == ("x", "gamma", "beta", "y/saved")


@pytest.mark.parametrize("call, message", [
    ("slice(x, axis=1, start=2, stop=2)", "slice 2:2 of axis 1 (size 3) is empty or out of range"),
    ("slice(x, axis=1, start=0, stop=4)", "expected 0 <= start < stop <= 3"),
    ("slice(x, axis=0, start=0, stop=1)", "a named dim whose size is unknown until run time"),
    ("slice(x, axis=1, start=0.5, stop=1)", "start and stop must be integers"),
])
def test_bad_slices_are_located(tmp_path, call, message):
    path = spec_file(tmp_path, f"inputs: {{x: [batch, 3]}}\nnodes:\n  loss: sum({call})\n")
    proc = graphc("check", path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "spec.yaml:3:13: node 'loss': shape mismatch in slice" in proc.stderr
    assert message in proc.stderr


def test_slice_keeps_the_axis_and_its_gradient_is_placed(tmp_path):
    loss, grads = grads_of(tmp_path, """
params:
  x: {value: [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]}
nodes:
  loss: sum(slice(x, axis=1, start=-2, stop=3) ** 2)
""")
    assert loss == 4 + 9 + 25 + 36
    np.testing.assert_array_equal(grads["x"], [[0, 4, 6], [0, 10, 12]])


def test_grad_json_of_an_embedding(tmp_path):
    proc = graphc("grad", spec_file(tmp_path, EMBED), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["grads"]["W"] == [[1.0, 10.0], [0.0, 0.0], [3.0, 30.0]]


def test_sequence_datasets_by_hand():
    from graphc.datasets import count_ones, sort_digits
    x, y, k = sort_digits(50, np.random.default_rng(0))
    assert x.shape == (50, 11) and y.shape == (50, 6) and k == 10
    np.testing.assert_array_equal(y, np.sort(x[:, :6], axis=1))     # y sorts the digits
    np.testing.assert_array_equal(x[:, 6:], y[:, :5])                # x is teacher-forced
    x, y, k = count_ones(50, np.random.default_rng(0), length=5)
    assert x.shape == (50, 5) and k == 6 and set(np.unique(x)) <= {0.0, 1.0}
    np.testing.assert_array_equal(y, x.sum(axis=1))


def test_explain_through_a_reshape_with_a_named_dim(tmp_path):
    # explain compiles each node on concrete shapes: [batch, 2, 2] must become [1, 2, 2]
    # (before: "cannot reshape [1, 4] to [batch, 2, 2]: the dim names must stay the same")
    np.savez(tmp_path / "x.npz", x=np.array([[1.0, 2.0, 3.0, 4.0]]))
    path = spec_file(tmp_path, """
inputs: {x: [batch, 4]}
params: {w: {value: [1.0, -1.0]}}
nodes:
  heads: reshape(x, shape=[batch, 2, 2]) * w
  loss: sum(heads * heads)
""")
    proc = graphc("explain", path, "--wrt", "x", "--inputs", tmp_path / "x.npz")
    assert proc.returncode == 0, proc.stderr
    # d/dx sum((x w)²) = 2 x w², w² = 1, the path through the reshape
    assert "graphc's gradient = [[2, 4, 6, 8]]  (matches)" in proc.stdout


def test_gradcheck_sample_checks_only_the_sampled_elements(monkeypatch):
    import dataclasses
    from graphc.gradcheck import check_grads
    from graphc.ops import OPS
    from test_ops_grad import tanh_graph
    graph, values = tanh_graph()                     # x0 [3, 2]: 6 elements
    result = check_grads(graph, values, ["x0"], sample=2)
    assert result.ok and np.isnan(result.numeric["x0"]).sum() == 4
    wrong = dataclasses.replace(OPS["tanh"], vjp=lambda e, n, g: (e("sigmoid_grad", g, n.name),))
    monkeypatch.setitem(OPS, "tanh", wrong)
    assert not check_grads(graph, values, ["x0"], sample=2).ok    # a wrong rule still fails


def test_gradcheck_cli_samples_a_large_spec():
    from test_cli import SPECS
    proc = graphc("gradcheck", SPECS / "sort_transformer.yaml", "--sample", "2",
                  "--batch-size", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ok"] is True and out["sample"] == 2 and len(out["leaves"]) == 31


def transformer_step(code: str, batch: int = 8) -> tuple:
    """(float store after one training step of the sort transformer under `code`, the
    executor)."""
    from pathlib import Path

    from graphc.executor import using_step_code
    from graphc.model import load_model
    from graphc.timing import step_executor
    from graphc.trainconfig import training_step
    model = load_model(Path(__file__).resolve().parents[1] / "specs" / "sort_transformer.yaml")
    step, _, dims = training_step(model, batch, {})
    with using_step_code(code):
        ex = step_executor(model, step, dims)
    rng = np.random.default_rng(0)
    with np.errstate(under="ignore"):
        ex.run({"x": rng.integers(0, 10, (batch, 11)), "y": rng.integers(0, 10, (batch, 6))})
    return {k: v.copy() for k, v in model.store.items() if v.dtype.kind == "f"}, ex


def test_head_reshape_and_transpose_copy_once_bit_for_bit():
    """The generated step copies a head value once where reshape and transpose follow each
    other (backends/numpy/copies.py): the forward q, k, v (reshape + transpose) and merged
    heads (transpose + reshape) of both blocks; the backward pairs whose output the planner
    placed over the first copy's input stay two copies. Params after a step equal the
    reference executor's, bit for bit."""
    (got, ex), (want, _) = transformer_step("generated"), transformer_step("reference")
    source = ex.program.source
    assert source.count("# fused: reshape + transpose") == 6
    assert source.count("# fused: transpose + reshape") == 2
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert got[name].tobytes() == value.tobytes(), name
