"""Train and eval mode, state leaves, batch_norm and dropout (contract §3, docs/spec.md#modes).

Goldens are closed forms checkable by hand: the running statistics after k steps on one
batch, the eval-mode formula, the binomial spread of a dropout mask. Resume and early
stopping are checked bit for bit against a run that was never interrupted.
"""
from __future__ import annotations

import re
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import graphc
from graphc.backends.numpy import run_kernel
from graphc.ir import RNG_KEY, build_graph
from graphc.model import Runner, load_model
from graphc.spec import load_spec
from graphc.train import step_runner
from graphc.trainconfig import training_step

from test_cli import graphc as run_cli, load_npz, ok, one_json

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "specs" / "spiral_bn_dropout.yaml"
MOMENTUM = 0.1

BN_SPEC = """\
name: bn
dtype: float64
inputs:
  x: [batch, 2, 3]
  t: [batch, 2, 3]
params:
  gamma: {value: [1.5, 0.5]}
  beta: {value: [0.25, -1.0]}
state:
  mean: [2]
  var: {shape: [2], init: ones}
nodes:
  h: batch_norm(x, gamma, beta, mean, var, momentum=MOMENTUM)
  loss: mse(h, t)
outputs: [h]
train:
  optimizer: {sgd: {lr: 0.5}}
"""


def write(tmp_path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_running_statistics_after_k_steps_are_the_closed_form(tmp_path):
    """k steps on one batch: mean_k = (1 - 0.9^k) mu, var_k = 0.9^k + (1 - 0.9^k) s2, with
    mu and s2 the batch's per-channel mean and UNBIASED variance (axes 0 and 2)."""
    m = graphc.load(write(tmp_path, BN_SPEC.replace("MOMENTUM", str(MOMENTUM))))
    x = np.arange(24, dtype=np.float64).reshape(4, 2, 3) ** 1.5
    k = 7
    for _ in range(k):
        m.step({"x": x, "t": np.zeros_like(x)})
    decay = (1 - MOMENTUM) ** k
    mu = x.transpose(1, 0, 2).reshape(2, -1).mean(axis=1)
    s2 = x.transpose(1, 0, 2).reshape(2, -1).var(axis=1, ddof=1)
    np.testing.assert_allclose(m.state["mean"], (1 - decay) * mu, rtol=1e-12)
    np.testing.assert_allclose(m.state["var"], decay + (1 - decay) * s2, rtol=1e-12)


def test_eval_mode_normalizes_with_the_running_statistics(tmp_path):
    """predict (eval mode) = gamma (x - running mean) / sqrt(running var + eps) + beta; the
    train-mode output of the same batch uses its own statistics (mean 0 per channel)."""
    m = graphc.load(write(tmp_path, BN_SPEC.replace("MOMENTUM", "0.5")))
    x = np.random.default_rng(0).normal(3.0, 2.0, (5, 2, 3))
    m.step({"x": x, "t": np.zeros_like(x)})
    state, params = m.state, m.params
    got = m.predict({"x": x})["h"]
    c = (slice(None), None)
    want = params["gamma"][c] * (x - state["mean"][c]) / np.sqrt(state["var"][c] + 1e-5) \
        + params["beta"][c]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    train_h = one_json(ok(run_cli("grad", SPEC, "--json", "--all")))["values"]["h1n"]
    assert np.allclose(np.mean(train_h, axis=0), 0.0, atol=1e-5)    # batch statistics


def test_grad_mode_train_and_eval_differ_as_the_ops_say():
    """Train: batch_norm output has per-channel mean beta = 0 and dropout zeroes some
    values; eval: batch_norm uses running stats 0 and 1 (so h1n = h1 / sqrt(1 + eps)) and
    dropout is the identity (h = relu(h1n) exactly)."""
    train = one_json(ok(run_cli("grad", SPEC, "--json", "--all", "--mode", "train")))["values"]
    evl = one_json(ok(run_cli("grad", SPEC, "--json", "--all", "--mode", "eval")))["values"]
    h1 = np.array(evl["h1"], np.float32)
    np.testing.assert_allclose(evl["h1n"], h1 / np.sqrt(np.float32(1 + 1e-5)), rtol=1e-6)
    assert np.array_equal(evl["h"], np.maximum(evl["h1n"], 0))
    relu = np.maximum(np.array(train["h1n"]), 0)
    dropped = (np.array(train["h"]) == 0) & (relu != 0)
    assert dropped.any()
    kept = ~dropped & (relu != 0)
    np.testing.assert_allclose(np.array(train["h"])[kept], relu[kept] / np.float32(0.9),
                               rtol=1e-6)


def test_grad_mode_rejects_an_unknown_mode():
    proc = run_cli("grad", SPEC, "--mode", "test")
    assert proc.returncode == 2 and "'test' is not one of 'train', 'eval'" in proc.stderr


def test_dropout_mask_rate_is_binomial_and_kept_values_are_scaled():
    """10000 ones at p = 0.3: the dropped count is Binomial(10000, 0.3), mean 3000, std
    45.8; within 5 std. Kept values are exactly 1 / 0.7."""
    x = np.ones((100, 100))
    out = run_kernel("dropout", np.empty_like(x), x, np.array([0, 5]), p=0.3, stream=11)
    dropped = int(np.sum(out == 0))
    assert abs(dropped - 3000) < 5 * np.sqrt(10000 * 0.3 * 0.7)
    assert np.all(out[out != 0] == 1 / 0.7)


def test_dropout_masks_depend_on_seed_step_and_node_only():
    x = np.ones(1000)

    def mask(seed, step, stream):
        return run_kernel("dropout", np.empty_like(x), x, np.array([seed, step]), p=0.5,
                          stream=stream) != 0
    same = mask(1, 2, 3)
    assert np.array_equal(same, mask(1, 2, 3))
    for other in (mask(2, 2, 3), mask(1, 3, 3), mask(1, 2, 4)):
        assert 350 < np.sum(other != same) < 650       # about half the entries differ


def test_dropout_gradient_regenerates_the_forward_mask():
    """dropout_grad(g, key) = g * mask / (1 - p): the forward's mask, never stored."""
    rng = np.random.default_rng(0)
    x, g, key = rng.normal(size=(20, 30)), rng.normal(size=(20, 30)), np.array([4, 9])
    y = run_kernel("dropout", np.empty_like(x), x, key, p=0.4, stream=5)
    dx = run_kernel("dropout_grad", np.empty_like(g), g, key, p=0.4, stream=5)
    np.testing.assert_array_equal(dx, np.where(y != 0, g / 0.6, 0.0))


def test_eval_mode_has_no_dropout_or_state_update_and_plain_specs_one_graph():
    train, evl = (build_graph(load_spec(SPEC), mode) for mode in ("train", "eval"))
    assert {"dropout", "batch_norm", "batch_norm_update"} <= {n.op for n in train.nodes.values()}
    ops = {n.op for n in evl.nodes.values()}
    assert ops.isdisjoint({"dropout", "batch_norm", "batch_norm_update", "hyper"})
    assert evl["h"].op == "identity" and evl["h1n"].op == "batch_norm_eval"
    plain = load_model(REPO / "specs" / "spiral_mlp.yaml")
    assert plain.in_mode("eval") is plain
    assert build_graph(plain.spec, "eval").nodes == plain.graph.nodes


def test_the_optimizer_never_changes_state(tmp_path):
    """momentum 0 keeps the running statistics at their start while the params train; the
    step graph updates params only."""
    path = write(tmp_path, BN_SPEC.replace("MOMENTUM", "0.0"))
    model = load_model(path)
    step = training_step(model)[0]
    assert {n.inputs[0] for n in step.graph.nodes.values() if n.role == "update"} == \
        {"gamma", "beta"}
    assert set(step.states) == {"gamma", "beta"}
    m = graphc.load(path)
    x = np.random.default_rng(1).normal(size=(6, 2, 3))
    before = m.params
    for _ in range(3):
        m.step({"x": x, "t": x * 2})
    assert not np.array_equal(m.params["gamma"], before["gamma"])
    assert m.state["mean"].tolist() == [0.0, 0.0] and m.state["var"].tolist() == [1.0, 1.0]


def test_state_is_shown_by_check_and_plan_and_saved_in_checkpoints(tmp_path):
    check = ok(run_cli("check", SPEC)).stdout
    assert re.search(r"^running_mean\s+state\s", check, re.MULTILINE), check
    assert re.search(r"^running_var\s+state\s", check, re.MULTILINE), check
    assert "2 state (128 values)" in check
    assert "mode eval: h is identity (dropout in train)" in check
    plan = ok(run_cli("plan", SPEC)).stdout
    assert any(line.split()[1:4] == ["update", "batch_norm_update", "running_mean"]
               for line in plan.splitlines()[1:-1])
    ckpt = tmp_path / "c.npz"
    ok(run_cli("train", SPEC, "--epochs", "2", "--out", ckpt))
    arrays = load_npz(ckpt)
    assert arrays["running_var"].shape == (64,)
    assert not np.array_equal(arrays["running_var"], np.ones(64))   # trained
    assert not any(k.endswith(("running_mean.m", "running_var.m")) for k in arrays)


def test_resume_continues_with_the_same_masks_and_statistics_bitwise(tmp_path):
    """4 epochs straight == 2 epochs, then --resume for 2 more: every param, state leaf and
    optimizer state bit for bit (dropout's masks are keyed by the saved step)."""
    straight, split = tmp_path / "straight.npz", tmp_path / "split.npz"
    ok(run_cli("train", SPEC, "--epochs", "4", "--out", straight))
    ok(run_cli("train", SPEC, "--epochs", "2", "--out", split))
    ok(run_cli("train", SPEC, "--epochs", "4", "--resume", split, "--out", split))
    a, b = load_npz(straight), load_npz(split)
    names = [k for k in a if not k.startswith("__graphc__/") or "/state/" in k]
    assert "running_mean" in names and len(names) > 10
    for k in names:
        assert a[k].tobytes() == b[k].tobytes(), k


def test_eval_of_a_checkpoint_uses_its_running_statistics(tmp_path):
    """`graphc eval` runs the eval-mode plan on the checkpoint's params and state: its loss
    changes when only the running statistics in the file change."""
    ckpt = tmp_path / "c.npz"
    ok(run_cli("train", SPEC, "--epochs", "3", "--out", ckpt))
    before = one_json(ok(run_cli("eval", SPEC, "--params", ckpt, "--json")))["loss"]
    arrays = load_npz(ckpt)
    arrays["running_var"] = arrays["running_var"] * 4
    np.savez(ckpt, **arrays)
    after = one_json(ok(run_cli("eval", SPEC, "--params", ckpt, "--json")))["loss"]
    assert before != after
    del arrays["running_mean"]
    np.savez(ckpt, **arrays)
    proc = run_cli("eval", SPEC, "--params", ckpt)
    assert proc.returncode == 2
    assert "has no state leaf 'running_mean'" in proc.stderr


def test_early_stopping_restores_state_with_the_params(tmp_path):
    """The restored epoch's running statistics, not the last epoch's: equal to a run that
    stopped at that epoch."""
    text = SPEC.read_text().replace("  seed: 0\n", "  seed: 0\n  early_stopping: "
                                    "{metric: loss, patience: 2}\n")
    path = write(tmp_path, text, "es.yaml")
    result = graphc.load(path).fit(epochs=40)
    best = result.restored_epoch
    assert best is not None and best < result.epochs
    saved = result.checkpoint
    assert not np.array_equal(saved["running_mean"],
                              saved["__graphc__/last/running_mean"])
    again = graphc.load(path).fit(epochs=best).checkpoint
    for k in ("running_mean", "running_var", "gamma", "W1"):
        assert saved[k].tobytes() == again[k].tobytes(), k


ZERO_ALLOC_SPEC = """\
inputs:
  x: [batch, 8]
  y: {shape: [batch], dtype: int64}
params:
  W1: [8, 32]
  W2: [32, 4]
nodes:
  h: dropout(relu(batch_norm(x @ W1)), p=0.25)
  scores: h @ W2
  loss: softmax_cross_entropy(scores, y)
train:
  optimizer: adam
"""


def test_training_step_with_batch_norm_and_dropout_allocates_nothing(tmp_path):
    model = load_model(write(tmp_path, ZERO_ALLOC_SPEC))
    step = training_step(model, 64)[0]
    runner = step_runner(model, step)
    model.store["opt:lr"][...] = 0.01
    ex = runner.executor({"batch": 64})
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64 * 20, 8)).astype(np.float32), rng.integers(0, 4, 64 * 20)
    rows = [np.arange(i * 64, (i + 1) * 64) for i in range(20)]
    steps = [np.int64(i) for i in range(20)]
    for r in rows[:2]:                                    # warm-up
        ex.feed_rows({"x": x, "y": y}, r)
        ex.run()

    def allocated() -> tuple:
        """(peak, kept) bytes over 20 steps."""
        tracemalloc.start()
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for i, r in enumerate(rows):
            model.store[RNG_KEY][1] = steps[i]
            ex.feed_rows({"x": x, "y": y}, r)
            ex.run()
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return peak - base, current - base
    # tracemalloc sees every thread (pytest-xdist's messaging too): a step's own allocation
    # shows in every attempt, another thread's rarely in all three
    peak, kept = min(allocated() for _ in range(3))
    assert peak < 4096, f"a step allocated {peak} bytes"
    assert kept < 1024
    assert isinstance(runner, Runner)


@pytest.mark.parametrize("nodes, expected", [
    ("  h: dropout(x, p=1.5)\n", "attribute 'p' of dropout is 1.5, expected a probability "
                                 "from 0 to 1"),
    ("  h: batch_norm(sum(x, axis=1))\n", "batch_norm needs an input [N, C, ...] with channels on axis 1, got [batch]"),
    ("  h: batch_norm(x, W1, W1, W1, W1)\n", "gamma must be [8] (one value per channel of "
                                         "[batch, 8]), got [8, 32]"),
    ("  h: batch_norm(x, eps=0)\n", "attribute 'eps' of batch_norm is 0, expected a "
                                    "number > 0"),
])
def test_bad_modal_ops_are_one_located_error(tmp_path, nodes, expected):
    text = ZERO_ALLOC_SPEC.split("nodes:")[0] + "nodes:\n" + nodes + \
        "  loss: mean(h)\n"
    proc = run_cli("check", write(tmp_path, text))
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and "spec.yaml:" in proc.stderr


# before: each trained without a word, writing the running variance into a parameter
# (then also moved by the optimizer), a computed value, or the running mean (val_loss nan)
@pytest.mark.parametrize("running_var, written, what", [
    ("gamma", "gamma", "'gamma' is a parameter"),
    ("sum(h1, axis=0)", "h1n/sum", "'h1n/sum' is a computed value"),
    ("running_mean", "running_mean", "'running_mean' is named twice")])
def test_batch_norm_writes_two_distinct_state_leaves(tmp_path, running_var, written, what):
    text = (REPO / "specs" / "spiral_bn_dropout.yaml").read_text().replace(
        "running_mean, running_var)", f"running_mean, {running_var})")
    proc = run_cli("train", write(tmp_path, text), "--epochs", "1", "--out", tmp_path / "c.npz")
    assert proc.returncode == 2 and proc.stderr.count("error: ") == 1, proc.stderr
    assert "spec.yaml:29:8: node 'h1n': its state update writes the running statistics into " \
        f"running_mean and {written}, which must " \
        f"be distinct state leaves; {what}" in proc.stderr, proc.stderr
    assert not (tmp_path / "c.npz").exists()


def test_a_state_leaf_needs_fixed_sizes(tmp_path):
    text = "inputs: {x: [batch, 2]}\nstate: {s: [batch]}\nnodes: {loss: sum(x)}\n"
    proc = run_cli("check", write(tmp_path, text))
    assert proc.returncode == 2
    assert "state shape [batch] has the symbolic dim 'batch'" in proc.stderr


def test_explain_refuses_state_instead_of_reporting_a_mismatch(tmp_path):
    # state is never differentiated: explain summed its paths and called graphc wrong (exit 1)
    path = write(tmp_path, "inputs: {x: {value: [[1.0, 2.0]]}}\nstate: {s: [2]}\n"
                           "nodes:\n  loss: sum(x * s)\n")
    proc = run_cli("explain", path, "--wrt", "s")
    assert proc.returncode == 2 and "DOES NOT MATCH" not in proc.stdout
    assert proc.stderr.startswith("error: ") and "spec.yaml:2:" in proc.stderr and \
        "node 's': --wrt 's' is state, which its op updates and graphc does not " \
        "differentiate" in proc.stderr, proc.stderr


def test_train_mode_batch_norm_refuses_one_value_per_channel(tmp_path):
    inputs = tmp_path / "one.npz"
    np.savez(inputs, x=np.ones((1, 2)))
    path = write(tmp_path, "inputs: {x: [batch, 2]}\nnodes:\n  h: batch_norm(x)\n"
                           "  loss: sum(h)\n")
    proc = run_cli("grad", path, "--inputs", inputs)
    assert proc.returncode == 2
    assert "needs more than one value per channel" in proc.stderr
    ok(run_cli("grad", path, "--inputs", inputs, "--mode", "eval"))


@pytest.mark.parametrize("spec", ["spiral_bn_dropout.yaml", "spiral_mlp.yaml"])
def test_grad_dot_draws_the_forward_graph_without_state_nodes(tmp_path, spec):
    """The picture shows the user's nodes; the state update and the generator key are plan
    machinery. (An edge from a saved value, such as softmax_cross_entropy's, has no formula
    row: it used to be an IndexError.)"""
    dot = tmp_path / "g.dot"
    ok(run_cli("grad", REPO / "specs" / spec, "--dot", dot))
    text = dot.read_text()
    assert '"scores" [' in text and '"h1n/update" [' not in text and '"rng:key" [' not in text
