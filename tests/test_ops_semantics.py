"""The op catalog's semantics: forward values against closed forms, shape rules, shape errors,
ties and kinks, numerical stability, in-place safety of elementwise kernels, the dense layer.

Gradients of every op on random shapes are in tests/test_ops_grad.py; here are the
cases a random test would not hit (ties, zeros, 1e4-sized inputs), values worked out by
hand or by closed form, and what a user sees when shapes do not fit.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from graphc.backends import BACKENDS
from graphc.cli import main
from graphc.errors import SpecError
from graphc.ir import build_graph
from graphc.model import load_model, run_grads
from graphc.ops import OPS, REQUIRED, attrs_with_defaults, ops_in
from graphc.spec import load_spec

DOCS = Path(__file__).resolve().parents[1] / "docs" / "ops.md"


def run(op, *arrays, **attrs):
    """One kernel call on float64 arrays, `out` shaped by the op's own shape rule."""
    arrays = [np.asarray(a, dtype=np.int64 if i in OPS[op].labels else np.float64)
              for i, a in enumerate(arrays)]
    attrs = attrs_with_defaults(OPS[op], attrs)
    out = np.empty(OPS[op].infer([a.shape for a in arrays], attrs))
    call = {k: v for k, v in attrs.items() if not (k == "shape" and op == "reshape")}
    return BACKENDS["numpy"].run_kernel(op, out, *arrays, **call)


def spec_file(tmp_path, text):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def grads_of(tmp_path, text):
    """(loss, {leaf: gradient}) of a float64 spec whose leaves all carry values."""
    model = load_model(spec_file(tmp_path, "dtype: float64\n" + text))
    result = run_grads(model, {})
    return result.loss, result.grads


# --- forward values -------------------------------------------------------------------------

def test_activations_at_hand_checked_points():
    assert run("softplus", 0.0) == pytest.approx(math.log(2))
    # torch approximate='tanh'; the kernel reads the saved tanh
    assert run("gelu", 1.0, run("gelu_tanh", 1.0)) == pytest.approx(0.8411920, abs=1e-7)
    assert run("silu", 1.0) == pytest.approx(1 / (1 + math.exp(-1)))
    assert run("elu", -1.0) == pytest.approx(math.exp(-1) - 1)
    assert run("elu", -1.0, alpha=2.0) == pytest.approx(2 * (math.exp(-1) - 1))
    assert run("elu", 3.0) == 3.0
    assert list(run("leaky_relu", [-2.0, 0.0, 3.0])) == pytest.approx([-0.02, 0.0, 3.0])
    assert list(run("leaky_relu", [-2.0, 3.0], alpha=1.5)) == pytest.approx([-3.0, 3.0])
    assert list(run("leaky_relu", [-2.0, 3.0], alpha=-0.5)) == pytest.approx([1.0, 3.0])


def test_elementwise_math_at_hand_checked_points():
    assert list(run("minimum", [1.0, 5.0], [3.0, 2.0])) == [1.0, 2.0]
    assert list(run("abs", [-2.5, 0.0, 4.0])) == [2.5, 0.0, 4.0]
    assert list(run("sqrt", [4.0, 0.25])) == [2.0, 0.5]
    assert list(run("reciprocal", [4.0, -0.5])) == [0.25, -2.0]


def test_softplus_is_stable_at_both_ends():
    y = run("softplus", [-1000.0, 1000.0, 50.0])
    assert np.all(np.isfinite(y))
    assert y[0] == pytest.approx(0.0, abs=1e-300)                # e^-1000 underflows to 0
    assert y[1] == 1000.0 and y[2] == pytest.approx(50.0, rel=1e-15)


def test_softmax_rows_sum_to_one_and_are_stable_at_1e4():
    x = np.array([[1e4, 1e4 - 1.0, 0.0], [1.0, 2.0, 3.0]])
    y = run("softmax", x)
    assert np.all(np.isfinite(y)) and np.allclose(y.sum(axis=-1), 1.0)
    e = math.exp(-1)
    assert list(y[0]) == pytest.approx([1 / (1 + e), e / (1 + e), 0.0])
    assert np.allclose(run("softmax", x.T, axis=0), y.T)


def test_log_softmax_is_finite_far_out():
    y = run("log_softmax", [[-1e4, 0.0, 1e4]])
    assert np.all(np.isfinite(y))
    assert list(y[0]) == pytest.approx([-2e4, -1e4, 0.0])
    z = run("log_softmax", [[1.0, 2.0, 3.0]])
    assert np.exp(z).sum() == pytest.approx(1.0)


def test_amax_over_axes():
    x = np.array([[1.0, 7.0, 3.0], [4.0, 2.0, 9.0]])
    assert list(run("amax", x, axis=1)) == [7.0, 9.0]
    assert run("amax", x) == 9.0
    assert run("amax", x, axis=0, keepdims=True).shape == (1, 3)


def test_shape_ops_match_numpy():
    x = np.arange(24.0).reshape(2, 3, 4)
    assert np.array_equal(run("transpose", x), x.T)
    assert np.array_equal(run("transpose", x, axes=[1, -1, 0]), x.transpose(1, 2, 0))
    assert np.array_equal(run("reshape", x, shape=[2, -1]), x.reshape(2, 12))
    a, b = np.ones((2, 3)), np.zeros((2, 1))
    assert np.array_equal(run("concat", a, b, axis=1), np.concatenate([a, b], 1))
    assert np.array_equal(run("concat", a, a, a), np.concatenate([a, a, a], 0))


def test_huber_inside_and_outside_delta():
    # |d| = 0.5 < 1: 0.5 * 0.25 = 0.125;  |d| = 3 > 1: 1 * (3 - 0.5) = 2.5
    assert run("huber", [0.5, -3.0], [0.0, 0.0]) == pytest.approx((0.125 + 2.5) / 2)
    # delta 2: |d| = 3 -> 2 * (3 - 1) = 4
    assert run("huber", [3.0], [0.0], delta=2.0) == pytest.approx(4.0)


def test_l1_and_binary_cross_entropy_with_logits():
    assert run("l1", [1.0, -2.0, 3.0], [0.0, 0.0, 0.0]) == pytest.approx(2.0)
    assert run("binary_cross_entropy_with_logits", [0.0], [1.0]) == pytest.approx(math.log(2))
    big = run("binary_cross_entropy_with_logits", [1000.0, -1000.0, 1000.0], [1.0, 0.0, 0.0])
    assert big == pytest.approx(1000.0 / 3)                     # 0 + 0 + 1000, no overflow


def test_multiclass_hinge_on_the_cs231n_example():
    """Seed 001:32-43 (the SVM loss); the numbers are the lecture slides' 3 images x 3 classes."""
    scores = [[3.2, 5.1, -1.7],     # cat image: max(0, 5.1-3.2+1) + max(0, -1.7-3.2+1) = 2.9
              [1.3, 4.9, 2.0],      # car image: all margins negative = 0
              [2.2, 2.5, -3.1]]     # frog image: (2.2+3.1+1) + (2.5+3.1+1) = 12.9
    labels = [0, 1, 2]
    assert run("multiclass_hinge", scores, labels) == pytest.approx((2.9 + 0 + 12.9) / 3)
    assert run("multiclass_hinge", scores, labels, margin=0.0) == pytest.approx(
        (1.9 + 0 + 10.9) / 3)


# --- gradients at ties and kinks (through the real pipeline) -------------------------------

def test_amax_shares_the_gradient_among_ties(tmp_path):
    loss, g = grads_of(tmp_path, "inputs: {x: {value: [[1, 3, 3], [5, 2, 0]]}}\n"
                                 "nodes:\n  loss: sum(amax(x, axis=1) * 2)\n")
    assert loss == 16.0
    assert g["x"].tolist() == [[0.0, 1.0, 1.0], [2.0, 0.0, 0.0]]


def test_abs_has_zero_gradient_at_zero_and_minimum_shares_ties(tmp_path):
    _, g = grads_of(tmp_path, "inputs: {x: {value: [-2, 0, 3]}, y: {value: [1, 0, 3]}}\n"
                              "nodes:\n  loss: sum(abs(x)) + sum(min(x, y))\n")
    assert g["x"].tolist() == [-1.0 + 1.0, 0.0 + 0.5, 1.0 + 0.5]
    assert g["y"].tolist() == [0.0, 0.5, 0.5]


def test_multiclass_hinge_gradient_by_hand(tmp_path):
    # cat image of the CS231n example: car (5.1) and frog (-1.7) vs cat (3.2);
    # only the car margin is positive: d/d car = 1, d/d cat = -1 (one violation), frog 0
    _, g = grads_of(tmp_path, "inputs:\n  s: {value: [[3.2, 5.1, -1.7]]}\n"
                              "  y: {shape: [1], dtype: int64, value: [0]}\n"
                              "nodes:\n  loss: multiclass_hinge(s, y)\n")
    assert g["s"].tolist() == [[-1.0, 1.0, 0.0]]


def test_where_by_hand(tmp_path):
    """y = where(m, x w, w) = [x0 w0, w1, x2 w2] = [-0.5, 0.5, 1.5]; loss = sum y^2 = 2.75;
    d/dw = [2 y0 x0, 2 y1, 2 y2 x2] = [1, 1, 9]; d/dx = [2 y0 w0, 0, 2 y2 w2] = [-0.5, 0, 1.5];
    no gradient into the condition m."""
    loss, g = grads_of(tmp_path, "inputs: {x: {value: [-1.0, 2.0, 3.0]}, "
                                 "m: {value: [1.0, 0.0, -2.0]}}\n"
                                 "params: {w: {value: [0.5, 0.5, 0.5]}}\n"
                                 "nodes:\n  y: where(m, x * w, w)\n  loss: sum(y * y)\n")
    assert loss == 2.75
    assert g["w"].tolist() == [1.0, 1.0, 9.0]
    assert g["x"].tolist() == [-0.5, 0.0, 1.5]
    assert g["m"].tolist() == [0.0, 0.0, 0.0]

# --- in-place safety of elementwise kernels ------------------------------------------------

def _is_loss_grad(op: str) -> bool:
    """mse_grad and friends: their g is the gradient of a scalar loss, so g is a scalar."""
    forward = OPS.get(op.removesuffix("_grad"))
    return op.endswith("_grad") and forward is not None and forward.group == "forward" and \
        forward.infer([(3, 4), (3, 4)], attrs_with_defaults(forward, {"exponent": 2.0})) == ()


def _elementwise_case(op, shape):
    """Inputs of `shape` (g of a loss gradient: a scalar), signs mixed where the op allows."""
    rng = np.random.default_rng(0)
    n = OPS[op].arity
    positive = op in ("log", "sqrt", "pow", "pow_grad", "sqrt_grad")
    arrays = []
    for i in range(n):
        s = () if i == 0 and _is_loss_grad(op) else shape
        sign = 1.0 if positive or i < n - 1 else rng.choice([-1.0, 1.0], s)
        arrays.append(rng.uniform(0.5, 2.0, size=s) * sign)
    if OPS[op].random:                  # dropout: the generator key (seed, step) comes last
        arrays.append(np.array([7, 3], dtype=np.int64))
    if OPS[op].saves:                   # gelu: its saved value, as the IR builder adds it
        arrays.append(run(OPS[op].saves, *arrays))
    attrs = {k: 2.0 for k, v in OPS[op].attrs.items() if v is REQUIRED}
    return arrays, attrs_with_defaults(OPS[op], attrs)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("shape", [(3, 4), ()])
@pytest.mark.parametrize("op", sorted(name for name, op in OPS.items() if op.elementwise))
def test_elementwise_kernels_survive_out_aliasing_an_input(op, shape, backend):
    """The planner may write an elementwise op's output over any same-shape input."""
    run_kernel = BACKENDS[backend].run_kernel
    arrays, attrs = _elementwise_case(op, shape)
    fresh = run_kernel(op, np.empty(shape), *arrays, **attrs)     # the form a plan runs
    for i in [i for i, a in enumerate(arrays) if a.shape == shape]:
        ins = [np.array(a) for a in arrays]
        run_kernel(op, ins[i], *ins, **attrs)
        assert np.allclose(ins[i], fresh, rtol=1e-12, atol=0), f"{op} with out = input {i}"


# --- shapes and shape errors ------------------------------------------------------------------

SPEC_HEAD = "inputs:\n  x: [batch, 4, 5]\n  v: [batch, 3]\n  u: [batch, 2]\n" \
            "  y: {shape: [batch], dtype: int64}\n"


def shapes_of(tmp_path, nodes: str) -> dict:
    graph = build_graph(load_spec(spec_file(tmp_path, SPEC_HEAD + "nodes:\n" + nodes)))
    return {name: n.shape for name, n in graph.nodes.items()}


def shape_error(tmp_path, nodes: str) -> str:
    with pytest.raises(SpecError) as exc:
        build_graph(load_spec(spec_file(tmp_path, SPEC_HEAD + "nodes:\n" + nodes)))
    return str(exc.value)


def test_symbolic_shapes_flow_through_the_new_ops(tmp_path):
    s = shapes_of(tmp_path, "  f: reshape(x, shape=[batch, -1])\n"
                            "  t: transpose(x, axes=[0, 2, 1])\n"
                            "  c: concat(v, u, axis=-1)\n"
                            "  p: softmax(c)\n  m: amax(t, axis=1)\n"
                            "  loss: multiclass_hinge(c, y) + l1(v, 1) + mean(m)\n")
    assert s["f"] == ("batch", 20) and s["t"] == ("batch", 5, 4)
    assert s["c"] == ("batch", 5) and s["p"] == ("batch", 5) and s["m"] == ("batch", 4)
    assert s["loss"] == ()


@pytest.mark.parametrize("expr, words", [
    ("reshape(x, shape=[4, -1])", ["cannot reshape [batch, 4, 5] to [4, -1]", "dim names"]),
    ("reshape(x, shape=[batch, 3, -1])", ["fixed sizes 20 and 3 do not fit"]),
    ("reshape(x, shape=[batch, -1, -1])", ["at most one -1"]),
    ("transpose(x, axes=[0, 1])", ["not a permutation of the 3 axes"]),
    ("concat(v, v, axis=0)", ["named dims (batch, batch)"]),
    ("concat(v, x, axis=1)", ["same rank", "[batch, 3], [batch, 4, 5]"]),
    ("concat(sum(v), sum(u))", ["cannot join scalars (rank 0)"]),
    ("concat(v, u, axis=[1])", ["axis must be one integer, got [1]"]),
    ("softmax(v, axis=2)", ["axis 2 is out of range for rank 2"]),
    ("huber(v, u)", ["prediction [batch, 3] and target [batch, 2] must have the same shape"]),
    ("multiclass_hinge(v, u)", ["must be integer class labels"]),
    ("multiclass_hinge(x, y)", ["labels must have the logits' shape", "[batch, 4]"]),
])
def test_shape_errors_name_both_shapes(tmp_path, expr, words):
    message = shape_error(tmp_path, f"  loss: sum({expr})\n")
    for w in words:
        assert w in message, message


def test_min_is_an_alias_and_variadic_concat_works_in_both_forms(tmp_path):
    s = shapes_of(tmp_path, "  a: min(v, 0)\n"
                            "  c: {op: concat, inputs: [v, v, u], axis: 1}\n"
                            "  loss: sum(c) + sum(a)\n")
    assert s["c"] == ("batch", 8)


# --- the dense layer ------------------------------------------------------------------------

DENSE = """\
dtype: float64
inputs:
  x: [batch, 3]
  y: {shape: [batch], dtype: int64}
nodes:
  h: dense(x, units=5, activation=relu)
  s: {op: dense, inputs: [h], units: 2, init: {normal: {std: 0.5}}}
  loss: softmax_cross_entropy(s, y)
"""


def test_dense_creates_params_with_documented_inits(tmp_path):
    spec = load_spec(spec_file(tmp_path, DENSE))
    leaves = spec.leaves
    assert leaves["h.W"].shape == (3, 5) and leaves["h.W"].init == "he_normal"
    assert leaves["h.b"].shape == (5,) and leaves["h.b"].init == "zeros"
    assert leaves["s.W"].shape == (5, 2) and leaves["s.W"].init == {"normal": {"std": 0.5}}
    ops = {n.name: n.op for n in spec.nodes}
    assert ops["h/matmul"] == "matmul" and ops["h/add"] == "add" and ops["h"] == "relu"
    assert ops["s"] == "add"                                   # no activation: W x + b last
    plain = load_spec(spec_file(tmp_path, DENSE.replace(", activation=relu", "")))
    assert plain.leaves["h.W"].init == "glorot_uniform"
    assert "dense" not in {n.op for n in build_graph(spec).nodes.values()}


def test_dense_equals_the_layer_written_by_hand(tmp_path):
    model = load_model(spec_file(tmp_path, DENSE))
    feeds = {"x": np.random.default_rng(1).normal(size=(4, 3)), "y": np.array([0, 1, 1, 0])}
    by_layer = run_grads(model, feeds)
    hand = DENSE.replace("nodes:", "params:\n  W1: [3, 5]\n  b1: [5]\n  W2: [5, 2]\n  b2: [2]\n"
                                   "nodes:") \
        .replace("dense(x, units=5, activation=relu)", "relu(x @ W1 + b1)") \
        .replace("{op: dense, inputs: [h], units: 2, init: {normal: {std: 0.5}}}",
                 "h @ W2 + b2")
    (tmp_path / "hand").mkdir()
    manual = load_model(spec_file(tmp_path / "hand", hand))
    for mine, theirs in [("h.W", "W1"), ("h.b", "b1"), ("s.W", "W2"), ("s.b", "b2")]:
        manual.store[theirs][...] = model.store[mine]
    by_hand = run_grads(manual, feeds)
    assert by_layer.loss == by_hand.loss
    for mine, theirs in [("h.W", "W1"), ("h.b", "b1"), ("s.W", "W2"), ("s.b", "b2")]:
        assert np.array_equal(by_layer.grads[mine], by_hand.grads[theirs])


@pytest.mark.parametrize("node, words", [
    ("dense(x, units=4, activation=rlu)", ["no activation 'rlu'", "relu"]),
    ("dense(z, units=4)", ["last dim is a fixed size", "[batch, n]"]),
    ("dense(x, units=0)", ["units", "positive integer"]),
    ("dense(x)", ["needs attribute 'units'"]),
])
def test_dense_errors(tmp_path, node, words):
    text = f"inputs:\n  x: [batch, 3]\n  z: [batch, n]\nnodes:\n  h: {node}\n  loss: sum(h)\n"
    with pytest.raises(SpecError) as exc:
        build_graph(load_spec(spec_file(tmp_path, text)))
    message = str(exc.value) + " " + str(getattr(exc.value, "hint", ""))
    for w in words:
        assert w in message, message


# --- the catalog is listed and documented ---------------------------------------------------

def test_graphc_ops_lists_every_user_op_with_its_signature():
    result = CliRunner().invoke(main, ["ops"])
    assert result.exit_code == 0
    for name in ops_in("forward") + ops_in("layer"):
        assert re.search(rf"^  {name}\(", result.output, re.M), name
    assert "min = minimum" in result.output


def test_docs_state_every_user_op():
    text = DOCS.read_text(encoding="utf-8")
    missing = [op for op in ops_in("forward") + ops_in("layer") if f"`{op}(" not in text]
    assert not missing, f"docs/ops.md lacks {missing}"
