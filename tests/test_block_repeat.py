"""`repeat:` on a block instance: N chained instances with their own params (or tied with
`share: true`), an RNN over time with `per_step:` slices, layers tied through a repeated
block, and errors that name the instance and its repetition."""
from __future__ import annotations

import numpy as np
import pytest

from graphc.spec import load_spec
from test_blocks import B, CELL_BLOCK, LIN, W, by_hand, cli_spec
from test_cli import graphc
from test_ops_semantics import grads_of

# the 2-step RNN of test_blocks.py, its inputs x1 and x2 stacked as the rows of x
RNN = """inputs:
  x: {value: [[1.0, 2.0], [0.5, -1.0]]}
  h0: {value: [[0.0, 0.0]]}
""" + CELL_BLOCK + """nodes:
  h: {block: cell, inputs: [x, h0], repeat: 2, chain: h, per_step: {x: 0}SHARE}
  loss: sum(h * h)
"""
OWN, TIED = RNN.replace("SHARE", ""), RNN.replace("SHARE", ", share: true")
# a one-input block chained through its input: h = x W1 W2 W3
STACK = LIN + """nodes:
  h: {block: lin, inputs: [x], repeat: 3}
  loss: sum(h)
"""


def test_repeat_chains_instances_with_their_own_params(tmp_path):
    spec = load_spec(cli_spec(tmp_path, STACK))
    params = [k for k, v in spec.leaves.items() if v.kind == "param"]
    assert params == ["h/1.W", "h/2.W", "h.W"]
    assert [n.inputs for n in spec.nodes if n.op == "matmul"] == [
        ("x", "h/1.W"), ("h/1", "h/2.W"), ("h/2", "h.W")]
    loss, grads = grads_of(tmp_path, STACK)
    w = np.array([[0.5, 1.0], [-1.0, 2.0]])
    assert loss == pytest.approx(np.sum(np.array([[1.0, 2.0]]) @ w @ w @ w), rel=1e-12)
    assert set(grads) >= {"h/1.W", "h/2.W", "h.W"}


def test_an_rnn_over_time_is_one_repeated_instance(tmp_path):
    loss, grads = grads_of(tmp_path, OWN)
    want_loss, (dW1, db1, dW2, db2) = by_hand(W, B, W, B)
    assert loss == pytest.approx(want_loss, rel=1e-12)
    np.testing.assert_allclose(grads["h/1.W"], dW1, rtol=1e-12)
    np.testing.assert_allclose(grads["h.b"], db2, rtol=1e-12)


def test_share_true_ties_every_repetition_to_the_first(tmp_path):
    loss, grads = grads_of(tmp_path, TIED)
    _, (dW1, db1, dW2, db2) = by_hand(W, B, W, B)
    assert "h.W" not in grads
    np.testing.assert_allclose(grads["h/1.W"], dW1 + dW2, rtol=1e-12)
    np.testing.assert_allclose(grads["h/1.b"], db1 + db2, rtol=1e-12)


def test_check_lists_each_repetition(tmp_path):
    proc = graphc("check", cli_spec(tmp_path, TIED))
    assert proc.returncode == 0, proc.stderr
    assert ("block cell: h/1 (5 nodes; params h/1.W, h/1.b), h (5 nodes; params h/1.W, "
            "h/1.b)") in proc.stdout          # each with its slice of x, h/1/x and h/x


GRU_STEP = """inputs:
  x: [batch, 3]
  h0: [1, 4]
blocks:
  step:
    inputs: [x, h]
    nodes:
      out: gru_cell(x, h, units=4)
nodes:
  s: {block: step, inputs: [x, h0], repeat: 3, chain: h, per_step: {x: 1}SHARE}
  loss: sum(s * s)
"""


def test_a_repeated_block_shares_its_layers_params(tmp_path):
    """gru_cell takes share=: a tied repetition reads the first one's W_ih, ..."""
    tied = load_spec(cli_spec(tmp_path, GRU_STEP.replace("SHARE", ", share: true")))
    own = load_spec(cli_spec(tmp_path, GRU_STEP.replace("SHARE", "")))
    assert sorted(k for k, v in tied.leaves.items() if v.kind == "param") == \
        ["s/1.W_hh", "s/1.W_ih", "s/1.b_hh", "s/1.b_ih"]
    assert len([k for k, v in own.leaves.items() if v.kind == "param"]) == 3 * 4
    assert ("s/2", "s/1.W_hh") in [n.inputs for n in tied.nodes if n.name == "s/gh"]


ERRORS = [
    (("repeat: 2", "repeat: 0"), "spec.yaml:15:45: node 'h': repeat is 0, expected a whole "
     "number >= 1"),
    (("repeat: 2", "repeat: two"), "node 'h': repeat is 'two', expected a whole number"),
    (("chain: h", "chain: hh"), "spec.yaml:15:55: node 'h': chain 'hh' is not an input of "
     "block 'cell'; did you mean 'h'?"),
    (("per_step: {x: 0}", "per_step: {h: 0}"), "per_step is {h: 0}, expected a mapping "
     "{INPUT: AXIS} of inputs of block 'cell' other than the chained 'h'"),
    # a leaf input too short for repeat: found before the repetitions are written out
    (("repeat: 2", "repeat: 3"), "spec.yaml:15:68: node 'h': per_step reads 3 steps of 'x' "
     "along axis 0, which has 2; repeat: 2 at most"),
    (("repeat: 2", "repeat: 50000"), "per_step reads 50000 steps of 'x' along axis 0"),
    # a computed input: the slice of the repetition that runs out says so
    (("inputs: [x, h0]", "inputs: [x2, h0]"), "spec.yaml:15:69: block 'cell', instance 'h': "
     "node 'h/x': shape mismatch in slice: slice 1:2 of axis 0 (size 1)"),
    (("x @ W + h", "x @ W @ W @ x + h"), "block 'cell', instance 'h/1': node 'h/1/pre': shape "
     "mismatch in matmul"),
    # the fuzzer's find: a huge count was expanded node by node (minutes) before any check
    (("repeat: 2", "repeat: 100000000"), "spec.yaml:15:45: node 'h': repeat: 100000000 copies "
     "the 4 node(s) of block 'cell' 100000000 times, more than the 250000 values"),
]


@pytest.mark.parametrize("edit, message", ERRORS, ids=[m[:30] for _, m in ERRORS])
def test_repeat_errors_are_located(tmp_path, edit, message):
    assert edit[0] in TIED
    text = TIED.replace(*edit).replace("  loss:", "  x2: slice(x, axis=0, start=0, stop=1)\n"
                                       "  loss:")
    proc = graphc("check", cli_spec(tmp_path, text), timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr


def test_chain_and_per_step_need_repeat(tmp_path):
    proc = graphc("check", cli_spec(tmp_path, OWN.replace(", repeat: 2", "")))
    assert proc.returncode == 2 and "spec.yaml:15:44: node 'h': chain: belongs to a " \
        "repeated instance, and 'h' is not repeated" in proc.stderr, proc.stderr


def test_share_true_needs_repeat(tmp_path):
    text = TIED.replace("repeat: 2, chain: h, per_step: {x: 0}, ", "")
    proc = graphc("check", cli_spec(tmp_path, text))
    assert proc.returncode == 2
    assert "share true is not an instance of block 'cell'; share: true ties the " \
        "repetitions of a repeated instance" in proc.stderr, proc.stderr


def test_a_repeated_instance_cannot_be_shared_by_name(tmp_path):
    text = OWN.replace("  loss: sum(h * h)", "  g: {block: cell, inputs: [x, h], share: h}\n"
                       "  loss: sum(g * g)")
    proc = graphc("check", cli_spec(tmp_path, text))
    # before: "share 'h' is not an instance of block 'cell'", though it is one
    assert proc.returncode == 2 and "share 'h' names a repeated instance, which has a set " \
        "of params per repetition; bind the ones to read with params:, e.g. params: {W: h.W}" \
        in proc.stderr, proc.stderr


def test_repeat_of_a_block_without_inputs_is_located(tmp_path):
    # before: "chain None is not an input of block 'lin'", a name the spec never wrote
    text = STACK.replace("    inputs: [x]\n    params", "    params").replace(
        "x @ W", "W @ W").replace("inputs: [x], repeat", "repeat")
    proc = graphc("check", cli_spec(tmp_path, text))
    assert proc.returncode == 2 and proc.stderr.startswith("error: "), proc.stderr
    assert "spec.yaml:11:27: node 'h': block 'lin' has no inputs, and repeat: feeds each " \
        "repetition's output to an input of the next" in proc.stderr, proc.stderr
