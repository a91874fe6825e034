"""Reusable blocks: instances compile to ordinary nodes; shared params get the sum of every
instance's gradient; `explain` shows each path through a tied weight; errors name the
block, the instance and the line inside the block; `check` and `plan --dot` group by
instance."""
from __future__ import annotations

import json

import numpy as np
import pytest

from graphc.model import load_model
from test_cli import graphc
from test_ops_semantics import grads_of, spec_file

# a cell of two inputs and two params, shared by the specs of test_blocks and test_block_repeat
CELL_BLOCK = """blocks:
  cell:
    inputs: [x, h]
    params:
      W: {value: [[0.1, 0.2], [0.3, 0.4]]}
      b: {value: [0.1, -0.1]}
    nodes:
      pre: x @ W + h
      out: tanh(pre + b)
"""
CELL = """inputs:
  x1: {value: [[1.0, 2.0]]}
  x2: {value: [[0.5, -1.0]]}
  h0: {value: [[0.0, 0.0]]}
""" + CELL_BLOCK + """nodes:
  h1: {block: cell, inputs: [x1, h0]}
  h2: {block: cell, inputs: [x2, h1]SHARE}
  loss: sum(h2 * h2)
"""
TIED = CELL.replace("SHARE", ", share: h1")
OWN = CELL.replace("SHARE", "")


def by_hand(W1, b1, W2, b2):
    """The unrolled cell in NumPy, with the gradients of loss = |h2|² w.r.t. each copy."""
    x1, x2, h0 = np.array([[1.0, 2.0]]), np.array([[0.5, -1.0]]), np.zeros((1, 2))
    h1 = np.tanh(x1 @ W1 + h0 + b1)
    h2 = np.tanh(x2 @ W2 + h1 + b2)
    d2 = 2 * h2 * (1 - h2 ** 2)                  # d loss / d (pre-tanh of step 2)
    d1 = d2 * (1 - h1 ** 2)                      # ... of step 1, through h1
    return float(np.sum(h2 ** 2)), (x1.T @ d1, d1[0], x2.T @ d2, d2[0])


def cli_spec(tmp_path, text):
    """The spec file as grads_of writes it: float64, one line above the text."""
    return spec_file(tmp_path, "dtype: float64\n" + text)


W = np.array([[0.1, 0.2], [0.3, 0.4]])
B = np.array([0.1, -0.1])


def test_instances_are_ordinary_nodes_with_their_own_params(tmp_path):
    model = load_model(cli_spec(tmp_path, OWN))
    g = model.graph
    assert {"h1.W", "h1.b", "h2.W", "h2.b"} <= set(g.nodes)
    assert g["h1"].op == "tanh" and g["h2/pre"].inputs == ("h2/pre/matmul", "h1")
    assert g["h2/pre"].origin == "h2/pre" and g["h2"].origin == "h2"
    assert (g["h2/pre"].mark.block, g["h2/pre"].mark.instance) == ("cell", "h2")
    loss, grads = grads_of(tmp_path, OWN)
    want_loss, (dW1, db1, dW2, db2) = by_hand(W, B, W, B)
    assert loss == pytest.approx(want_loss, rel=1e-12)
    np.testing.assert_allclose(grads["h1.W"], dW1, rtol=1e-12)
    np.testing.assert_allclose(grads["h2.W"], dW2, rtol=1e-12)
    np.testing.assert_allclose(grads["h2.b"], db2, rtol=1e-12)


def test_a_tied_weight_gets_the_sum_over_instances(tmp_path):
    loss, grads = grads_of(tmp_path, TIED)
    _, (dW1, db1, dW2, db2) = by_hand(W, B, W, B)
    assert "h2.W" not in grads
    np.testing.assert_allclose(grads["h1.W"], dW1 + dW2, rtol=1e-12)
    np.testing.assert_allclose(grads["h1.b"], db1 + db2, rtol=1e-12)
    _, own = grads_of(tmp_path, OWN)         # the untied net at the same values: the parts
    np.testing.assert_allclose(grads["h1.W"], own["h1.W"] + own["h2.W"], rtol=1e-12)


def test_explain_shows_every_path_through_a_tied_weight(tmp_path):
    proc = graphc("explain", cli_spec(tmp_path, TIED), "--wrt", "h1.W")
    assert proc.returncode == 0, proc.stderr
    assert "4 paths from loss to h1.W" in proc.stdout       # 2 instances x 2 inputs of h2*h2
    assert proc.stdout.count("<- h1/pre/matmul <- h1.W") == 2
    assert proc.stdout.count("<- h2/pre/matmul <- h1.W") == 2


def test_params_bound_to_a_leaf_tie_weights(tmp_path):
    text = OWN.replace("inputs:\n  x1", "params:\n  V: {value: [[0.1, 0.2], [0.3, 0.4]]}\n"
                                        "inputs:\n  x1").replace(
        "h2: {block: cell, inputs: [x2, h1]}", "h2: {block: cell, inputs: [x2, h1], "
                                               "params: {W: V}}")
    _, grads = grads_of(tmp_path, text)
    _, (dW1, db1, dW2, db2) = by_hand(W, B, W, B)
    np.testing.assert_allclose(grads["V"], dW2, rtol=1e-12)
    assert "h2.W" not in grads and "h2.b" in grads


def test_check_groups_by_instance_and_dot_clusters(tmp_path):
    path = cli_spec(tmp_path, TIED)
    proc = graphc("check", path)
    assert proc.returncode == 0, proc.stderr
    assert ("block cell: h1 (4 nodes; params h1.W, h1.b), h2 (4 nodes; params h1.W, h1.b)"
            in proc.stdout)
    assert "ok: 15 nodes, 2 params (6 values)" in proc.stdout
    proc = graphc("plan", path, "--dot", tmp_path / "p.dot")
    assert proc.returncode == 0, proc.stderr
    dot = (tmp_path / "p.dot").read_text()
    for cluster in ("h1", "h2", "d:h1", "d:h2"):
        assert f'subgraph "cluster_{cluster}"' in dot


ERRORS = [
    # a shape error inside the block: the line and column inside it, block, instance
    (("      pre: x @ W + h", "      pre: x @ W @ W @ x + h"), "spec.yaml:13:12: block 'cell', "
     "instance 'h1': node 'h1/pre': shape mismatch in matmul"),
    (("      out: tanh(pre + b)", "      out: tanh(pre + bb)"), "spec.yaml:14:23: block "
     "'cell', instance 'h1': node 'h1': unknown name 'bb' in block 'cell'; did you mean 'b'?"),
    (("      out: tanh(pre + b)", "      out: tahn(pre + b)"), "spec.yaml:14:12: block 'cell': "
     "node 'out': unknown op 'tahn'; did you mean 'tanh'?"),
    (("share: h1", "share: h9"), "node 'h2': share 'h9' is not an instance of block 'cell'"),
    (("share: h1}", "share: [h1]}"), "node 'h2': share [h1] is not an instance of block"),
    (("share: h1}", "params: [W]}"), "node 'h2': params is [W], expected a mapping"),
    (("block: cell, inputs: [x2", "block: cel, inputs: [x2"), "spec.yaml:17:15: node 'h2': "
     "unknown block 'cel'; did you mean 'cell'?"),
    (("inputs: [x2, h1]", "inputs: [x2]"), "node 'h2': block 'cell' takes inputs [x, h], got "
     "[x2]"),
    (("inputs: [x2, h1]", "inputs: [x2, h7]"), "node 'h2': unknown name 'h7' bound to an input "
     "of block 'cell'"),
    (("inputs: [x, h]", "inputs: [x, W]"), "spec.yaml:10:7: block 'cell': node 'W': 'W' is "
     "both an input and a param of block 'cell'"),
    (("      pre: x @ W + h", "      pre: {block: cell, inputs: [x, h]}"), "spec.yaml:13:12: "
     "block 'cell': node 'pre': node 'pre' of block 'cell' is an instance of a block, and "
     "blocks do not nest"),
    (("      pre: x", "      x: x"), "spec.yaml:13:7: block 'cell': node 'x': node name 'x' is "
     "taken or not an identifier"),
    # before: "internal error (TypeError: unhashable type: 'MarkedList')"
    (("      out: tanh(pre + b)", "      out: tanh(pre + b)\n    output: [pre, out]"),
     "spec.yaml:15:13: block 'cell': output of block 'cell' is [pre, out], expected one "
     "node name: a block has one output"),
    # before: "unknown op 'cell'; did you mean 'gru_cell'?"
    (("h1: {block: cell, inputs: [x1, h0]}", "h1: cell(x1, h0)"), "spec.yaml:16:7: node 'h1': "
     "'cell' is a block, not an op: a block is instantiated by a node of its own; write h1: "
     "{block: cell, inputs: [...]} under nodes:"),
    # before: "block 'cell' has no nodes"
    (("      pre: x @ W + h\n      out: tanh(pre + b)", "      - tanh(x @ W + h + b)"),
     "spec.yaml:13:7: block 'cell': nodes of block 'cell' is ['tanh(x @ W + h + b)'], "
     "expected a mapping name: expression"),
    (("h1: {block: cell, inputs: [x1, h0]}", "h1: {op: cell, inputs: [x1, h0]}"),
     "node 'h1': 'cell' is a block, not an op"),
    (("      pre: x @ W + h", "      pre: relu(cell(x, h))"), "spec.yaml:13:12: block 'cell': "
     "node 'pre': 'cell' is a block, not an op"),
    # before: "chain 'h' is not an input", or "takes inputs [h, x, h]" at the instance
    (("inputs: [x, h]", "inputs: [x, x]"), "spec.yaml:8:13: block 'cell': inputs of block "
     "'cell' names 'x' twice; each input of a block is one distinct name"),
]


@pytest.mark.parametrize("edit, message", ERRORS, ids=[m[:30] for _, m in ERRORS])
def test_block_errors_are_located(tmp_path, edit, message):
    proc = graphc("check", cli_spec(tmp_path, TIED.replace(*edit)))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr
    assert [line.startswith("error: ") for line in proc.stderr.splitlines()].count(True) == 1


def test_another_node_of_an_instance_is_read_by_name(tmp_path):
    # the documented way around one output: h1/pre in an explicit node's inputs
    text = TIED.replace("  loss: sum(h2 * h2)", "  s: {op: sum, inputs: [h1/pre]}\n"
                        "  loss: sum(h2 * h2) + s")
    loss, _ = grads_of(tmp_path, text)
    pre = np.array([[1.0, 2.0]]) @ W
    assert loss == pytest.approx(by_hand(W, B, W, B)[0] + pre.sum(), rel=1e-14)


def test_grad_json_reports_instance_params(tmp_path):
    proc = graphc("grad", cli_spec(tmp_path, TIED), "--json")
    grads = json.loads(proc.stdout)["grads"]
    assert set(grads) == {"x1", "x2", "h0", "h1.W", "h1.b"}


@pytest.mark.parametrize("layer, written", [
    ("dense(pre, units=2)", "dense"),
    # the layer forms are named as the spec writes them: before, "the layer
    # layer_norm_layer" and "conv1d_layer", names the spec never wrote
    ("layer_norm(pre)", "layer_norm"),
    ("flatten(conv1d(reshape(pre, shape=[1, 1, 2]), out_channels=1, kernel=1))", "conv1d"),
])
def test_share_refuses_a_block_with_a_layer(tmp_path, layer, written):
    # dense creates <node>.W per instance: share: would silently leave them untied
    text = TIED.replace("      out: tanh(pre + b)", f"      out: {layer}")
    proc = graphc("check", cli_spec(tmp_path, text))
    assert proc.returncode == 2 and proc.stderr.startswith("error: ")
    assert f"block 'cell' uses the layer {written}, whose params are each instance's own" \
        in proc.stderr, proc.stderr


def test_a_layer_output_may_not_take_the_name_of_a_block_param(tmp_path):
    # the layer's output node is the instance h1, so its W is h1.W: the block's own param
    # h1.W was silently replaced by the layer's [2, 2] weight of another init
    text = OWN.replace("      out: tanh(pre + b)", "      out: dense(pre, units=2)")
    proc = graphc("check", cli_spec(tmp_path, text))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and "spec.yaml:14:12: block 'cell', instance " \
        "'h1': node 'h1': the dense layer creates the param 'h1.W', but 'h1.W' is already " \
        "declared" in proc.stderr, proc.stderr


def test_an_error_in_a_block_layer_names_the_block_node_it_lies_in(tmp_path):
    # dense's error named 'h1' (the name's first part), the IR's errors 'h1/pre' (the
    # block node): both now say 'h1/pre', the instance's node
    text = OWN.replace("      pre: x @ W + h", "      pre: dense(x, units=2, activation=rleu)")
    proc = graphc("check", cli_spec(tmp_path, text))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "block 'cell', instance 'h1': node 'h1/pre': dense has no activation 'rleu'" in \
        proc.stderr, proc.stderr


# x and a one-input block lin (out = x W), the head of the chained specs here and in
# test_block_repeat
LIN = """inputs:
  x: {value: [[1.0, 2.0]]}
blocks:
  lin:
    inputs: [x]
    params:
      W: {value: [[0.5, 1.0], [-1.0, 2.0]]}
    nodes:
      out: x @ W
"""
CHAIN = LIN + """nodes:
  a: {block: lin, inputs: [x]}
  b: {block: lin, inputs: [a], share: a}
  c: {block: lin, inputs: [b], share: b}
  loss: sum(c)
"""


# a binds W to the leaf W0 (params:), holding a.W's values: the same numbers
BOUND = CHAIN.replace("blocks:", "params:\n  W0: {value: [[0.5, 1.0], [-1.0, 2.0]]}\nblocks:") \
    .replace("a: {block: lin, inputs: [x]}", "a: {block: lin, inputs: [x], params: {W: W0}}")


@pytest.mark.parametrize("text, param", [(CHAIN, "a.W"), (BOUND, "W0")])
def test_sharing_an_instance_that_shares_reads_the_first_ones_params(tmp_path, text, param):
    # c shares b, which shares a: before, "unknown name 'b.W'; did you mean 'a.W'?", and
    # where a binds W with params:, "unknown name 'a.W'" at b
    proc = graphc("check", cli_spec(tmp_path, text))
    assert proc.returncode == 0, proc.stderr
    assert f"c (1 nodes; params {param})" in proc.stdout, proc.stdout
    # loss = sum(x W W W): x W = [-1.5, 5], x W W = [-5.75, 8.5], x W W W = [-11.375, 11.25]
    proc = graphc("grad", cli_spec(tmp_path, text), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["loss"] == pytest.approx(-0.125) and set(out["grads"]) == {"x", param}
