"""The reverse-graph pass: local rules apart from the driver (minitorch test_chain_rule vs
test_backprop), then the driver's own work: fan-out sums, un-broadcasting, pruning, the
no-path error, deep graphs, and a reverse graph that passes the IR verifier.

Oracles are worked by hand in each test's comment.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from graphc.backends.numpy import run_kernel
from graphc.autodiff import (check_params_reach_loss, grad_graph, path_nodes,
                             trained_params)
from graphc.errors import SpecError
from graphc.gradcheck import analytic_grads
from graphc.ir import GraphBuilder, Node, build_graph, verify_graph
from graphc.model import differentiable_leaves, load_model
from graphc.ops import OPS
from graphc.spec import load_spec

SPECS = sorted((Path(__file__).resolve().parents[1] / "specs").glob("*.yaml"))


class Recorder:
    """Stands in for autodiff's emitter: each emitted node comes back as text, 'mul(g, b)'."""

    def __init__(self, shapes=None):
        self.shapes = shapes or {}

    def shape(self, name):
        return self.shapes[name]

    def __call__(self, op, *inputs, **attrs):
        args = list(inputs) + [f"{k}={v!r}" for k, v in sorted(attrs.items())]
        return f"{op}({', '.join(args)})"


def rule(op, inputs=("a", "b"), attrs=None, shapes=None):
    """The VJP rule of `op` applied to node y = op(inputs) and the incoming gradient g."""
    return OPS[op].vjp(Recorder(shapes), Node("y", op, tuple(inputs), attrs or {}), "g")


def graph_of(text: str):
    """A spec given as YAML text -> (graph, leaf values)."""
    spec = load_spec("t.yaml", text)
    graph = build_graph(spec)
    return graph, {name: leaf.value for name, leaf in spec.leaves.items()}


# --- local rules: one op's vjp, with no driver -------------------------------------------

def test_mul_rule_swaps_the_operands():
    # y = a b: dy/da = b, dy/db = a
    assert rule("mul") == ("mul(g, b)", "mul(g, a)")


def test_add_and_sub_rules_pass_g_through_unbroadcast():
    # the rules leave un-broadcasting to the driver: g comes back in y's shape
    assert rule("add") == ("g", "g")
    assert rule("sub") == ("g", "neg(g)")


def test_div_rule():
    # y = a / b: dy/da = 1/b; dy/db = -a/b^2 = -y/b
    assert rule("div") == ("div(g, b)", "neg(div(mul(g, y), b))")


def test_exp_and_relu_rules_read_the_output():
    # d exp(x)/dx = exp(x) = y; relu'(x) = (y > 0)
    assert rule("exp", ("x",)) == ("mul(g, y)",)
    assert rule("relu", ("x",)) == ("relu_grad(g, y)",)


def test_sum_rule_expands_back_to_the_input_shape():
    got = rule("sum", ("x",), {"axis": 1, "keepdims": False}, {"x": (4, 3)})
    assert got == ("expand(g, axis=1, keepdims=False, shape=(4, 3))",)


def test_labels_get_no_gradient():
    assert rule("softmax_cross_entropy", ("logits", "labels"))[1] is None


def test_maximum_grad_kernel_shares_ties():
    # max gate: the larger input takes g; a tie splits it, 1/2 each, so the two sum to g
    a, b, g = np.array([3.0, 1.0, 2.0]), np.array([1.0, 3.0, 2.0]), np.array([4.0, 4.0, 4.0])
    da, db = np.empty(3), np.empty(3)
    run_kernel("maximum_grad", da, g, a, b)
    run_kernel("maximum_grad", db, g, b, a)
    np.testing.assert_array_equal(da, [4.0, 0.0, 2.0])
    np.testing.assert_array_equal(db, [0.0, 4.0, 2.0])


# --- the driver -------------------------------------------------------------------------

def test_fan_out_sums_the_contributions():
    # x feeds both inputs of x * x: the copy gate sums g x + x g = 2 x
    graph, values = graph_of("inputs: {x: {value: [1.0, -2.0, 3.0]}}\n"
                             "nodes: {loss: sum(x * x)}\n")
    gg = grad_graph(graph, ["x"])
    assert gg.graph[gg.grads["x"]].op == "add"
    _, grads = analytic_grads(graph, values, ["x"])
    np.testing.assert_allclose(grads["x"], [2.0, -4.0, 6.0], rtol=1e-6)


def test_fan_out_through_named_nodes():
    # a = 3 x is read by two nodes: loss = sum(a) + sum(a * a) -> d/dx = 3 (1 + 2 a)
    graph, values = graph_of("inputs: {x: {value: [1.0, 2.0]}}\n"
                             "nodes: {a: 3 * x, loss: sum(a) + sum(a * a)}\n")
    _, grads = analytic_grads(graph, values, ["x"])
    np.testing.assert_allclose(grads["x"], [3 * (1 + 6), 3 * (1 + 12)], rtol=1e-6)


def test_bias_gradient_is_summed_over_the_batch():
    # out = x + b with b [3] broadcast over 4 rows; loss = sum(out * R): d/db = sum_i R[i]
    R = np.arange(12.0).reshape(4, 3)
    graph, values = graph_of(f"inputs: {{x: {{value: {np.ones((4, 3)).tolist()}}}, "
                             f"R: {{value: {R.tolist()}}}}}\n"
                             "params: {b: {value: [1.0, 2.0, 3.0]}}\n"
                             "nodes: {loss: sum((x + b) * R)}\n")
    gg = grad_graph(graph, ["b", "x"])
    grad_b = gg.graph[gg.grads["b"]]
    assert (grad_b.op, grad_b.shape) == ("sum_to", (3,))
    _, grads = analytic_grads(graph, values, ["b", "x"])
    np.testing.assert_allclose(grads["b"], [18.0, 22.0, 26.0])   # column sums of R
    np.testing.assert_allclose(grads["x"], R)


def test_both_operands_unbroadcast():
    # [3, 1] + [4] -> [3, 4]: d/da sums each row of R, d/dc each column
    R = np.arange(12.0).reshape(3, 4)
    graph, values = graph_of(f"inputs: {{a: {{value: [[1.0], [2.0], [3.0]]}}, "
                             f"c: {{value: [1.0, 2.0, 3.0, 4.0]}}, R: {{value: {R.tolist()}}}}}\n"
                             "nodes: {loss: sum((a + c) * R)}\n")
    _, grads = analytic_grads(graph, values, ["a", "c"])
    np.testing.assert_allclose(grads["a"], [[6.0], [22.0], [38.0]])
    np.testing.assert_allclose(grads["c"], [12.0, 15.0, 18.0, 21.0])


PRUNE = """
inputs: {c: {value: [0.5, 1.5]}}
params: {x: {value: [1.0, 2.0]}}
nodes:
  u: exp(c)          # on a path from c only: c is not differentiated
  side: tanh(x)      # from x, but not to the loss
  v: x * u
  loss: sum(v)
outputs: [side]
"""


def test_pruning_emits_backward_nodes_only_between_wrt_and_loss():
    graph, values = graph_of(PRUNE)
    assert path_nodes(graph, ["x"]) == {"x", "v", "loss"}
    gg = grad_graph(graph, ["x"])
    backward = [n for n in gg.graph.nodes if n not in graph.nodes]
    assert backward and all(n.startswith(("d:x", "d:v", "d:loss")) for n in backward), backward
    _, grads = analytic_grads(graph, values, ["x"])
    np.testing.assert_allclose(grads["x"], np.exp([0.5, 1.5]))


def test_a_leaf_without_a_path_has_no_gradient_node():
    graph, _ = graph_of("inputs: {x: {value: 2.0}, z: {value: 1.0}}\nnodes: {loss: x * x}\n")
    assert grad_graph(graph, ["x", "z"]).grads["z"] is None


def test_a_param_without_a_path_is_an_error(tmp_path):
    spec = tmp_path / "unused.yaml"
    spec.write_text("inputs: {x: {value: 2.0}}\n"
                    "params:\n  W: [2]\n"
                    "nodes: {loss: x * x}\n")
    graph = load_model(spec).graph
    with pytest.raises(SpecError) as err:
        check_params_reach_loss(graph, grad_graph(graph, trained_params(graph)).grads)
    assert err.value.node == "W" and err.value.mark.line == 3
    assert "does not affect the loss" in str(err.value)


def test_a_deep_chain_does_not_recurse():
    # h_0 = x, h_i = h_(i-1) + x for i <= N: h_N = (N + 1) x, a fan-out of N + 1 into x
    n = 2000
    lines = ["inputs: {x: {value: [1.0, -1.0]}}", "nodes:", "  h0: x"]
    lines += [f"  h{i}: h{i - 1} + x" for i in range(1, n + 1)]
    lines.append(f"  loss: sum(h{n})")
    graph, values = graph_of("\n".join(lines) + "\n")
    loss, grads = analytic_grads(graph, values, ["x"])
    assert loss == 0.0
    np.testing.assert_array_equal(grads["x"], [n + 1.0, n + 1.0])


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_the_reverse_graph_verifies_and_keeps_the_forward_graph(path):
    model = load_model(path)
    before = dict(model.graph.nodes)
    gg = grad_graph(model.graph, differentiable_leaves(model))
    verify_graph(gg.graph)
    assert dict(model.graph.nodes) == before, "the pass mutated its input"
    assert all(gg.graph[name] == node for name, node in before.items())
    again = grad_graph(model.graph, differentiable_leaves(model))
    assert list(again.graph.nodes) == list(gg.graph.nodes), "names are not deterministic"


def test_grad_graph_on_a_programmatic_graph():
    # GraphBuilder directly: y = sigmoid(w x), d/dw = y (1 - y) x
    b = GraphBuilder("float64")
    for name in ("w", "x"):
        b.nodes[name] = Node(name, "input", (), {"shape": ()}, (), "float64")
    b.add("z", "mul", ("w", "x"))
    b.add("loss", "sigmoid", ("z",))
    graph = b.graph("loss")
    loss, grads = analytic_grads(graph, {"w": np.array(0.5), "x": np.array(2.0)})
    y = 1 / (1 + np.exp(-1.0))
    assert loss == pytest.approx(y)
    assert grads["w"] == pytest.approx(y * (1 - y) * 2.0)
    assert grads["x"] == pytest.approx(y * (1 - y) * 0.5)
