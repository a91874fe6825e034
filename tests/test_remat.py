"""Rematerialization (remat.py): recompute nodes, policies, budgets, and the oracle that
matters: every plan's gradients and updated params are bitwise those of the plan that
keeps every saved value.

The model is a chain of L ReLU layers of width W at batch B (float32), so each hidden
value is B·W·4 bytes and the saved values are h1..hL, the scores and the softmax
cross-entropy's saved statistics; hand-countable.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from graphc.errors import SpecError
from graphc.ir import VerifyError
from graphc.limits import parse_bytes
from graphc.model import Runner, load_model
from graphc.ops import OPS
from graphc.optim import LR, parse_optimizer, training_graph
from graphc.plan import compile_plan
from graphc import remat as R
from graphc.remat import NONE, MemoryPolicy, parse_memory, remat_plan
from graphc.train import step_runner
from graphc.trainconfig import training_step

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_memory as B  # noqa: E402
from bench_memory import against_optimal, deep_mlp  # noqa: E402
from test_cli import graphc, ok, one_json  # noqa: E402
from test_plan import random_graphs  # noqa: E402

LAYERS, WIDTH, BATCH = 6, 16, 32
HIDDEN = BATCH * WIDTH * 4                     # bytes of one hidden value: 2048
POLICIES = [NONE, MemoryPolicy("every", every=2), MemoryPolicy("every", every=3),
            MemoryPolicy("sqrt"), MemoryPolicy("keep", keep=("h3",))]


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("remat") / "deep.yaml"
    path.write_text(deep_mlp(LAYERS, WIDTH))
    return path


def spec_with(tmp_path: Path, memory: str, optimizer: str = "{sgd: {lr: 0.1}}") -> Path:
    """The deep MLP with blob data, an optimizer and `train.memory: memory`."""
    text = deep_mlp(LAYERS, WIDTH).replace("  optimizer: {sgd: {lr: 0.01}}\n", "")
    path = tmp_path / "deep.yaml"
    path.write_text(text + f"  optimizer: {optimizer}\n  batch_size: {BATCH}\n  epochs: 2\n"
                           f"  data: {{dataset: blobs, features: {WIDTH}, classes: 10, "
                           f"samples: 96}}\n  memory: {memory}\n")
    return path


def one_step(spec: Path, policy: MemoryPolicy, optimizer="sgd") -> dict:
    """Every param after one training step under `policy`, and the loss (fixed batch)."""
    model = load_model(spec)
    raw = {"sgd": {"lr": 0.1}} if optimizer == "sgd" else optimizer
    step = training_graph(model.graph, parse_optimizer(raw))
    runner = step_runner(model, step, policy)
    model.store[LR][...] = 0.1
    rng = np.random.default_rng(0)
    ex = runner.run({"x": rng.standard_normal((BATCH, WIDTH)).astype(np.float32),
                     "y": rng.integers(0, 10, BATCH)})
    return {"loss": np.array(ex[model.graph.loss]),
            **{p: model.store[p].copy() for p in step.states}}


def same_bits(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes() for k in a)


def step_remat(spec: Path, policy: MemoryPolicy):
    model = load_model(spec)
    step, _, dims = training_step(model, BATCH)
    return model, step, remat_plan(step.graph, dims, {model.graph.loss}, step.forward, True,
                                   policy)


# --- the pass ---------------------------------------------------------------------------

def test_none_is_compile_plans_plan(spec):
    model, step, r = step_remat(spec, NONE)
    assert r.graph is step.graph and not r.clones
    assert r.plan == compile_plan(step.graph, {"batch": BATCH}, {model.graph.loss},
                                  step.forward)


def test_saved_values_are_what_the_backward_pass_reads(spec):
    _, _, r = step_remat(spec, NONE)
    assert r.saved == tuple(f"h{i}" for i in range(1, LAYERS + 1)) + ("scores", "loss/saved")
    assert all(r.plan.buffers[f"h{i}"].bytes == HIDDEN for i in range(1, LAYERS + 1))


def test_every_2_keeps_every_second_saved_value(spec):
    _, _, r = step_remat(spec, MemoryPolicy("every", every=2))
    assert r.kept == ("h2", "h4", "h6", "loss/saved")
    # h1 is recomputed from x: its matmul, add and relu; so are h3 and h5 from h2, h4
    assert sorted(r.clones) == sorted([f"{h}{s}" for h in ("h1", "h3", "h5")
                                       for s in ("", "/add", "/matmul")]
                                      + ["scores", "scores/matmul"])


def test_recompute_nodes_are_clones_placed_in_the_backward_pass(spec):
    model, step, r = step_remat(spec, MemoryPolicy("sqrt"))
    index = {s.node: s.index for s in r.plan.steps}
    last_forward = max(s.index for s in r.plan.steps if s.phase == "forward")
    for value, clone in r.clones.items():
        c, o = r.graph[clone], step.graph[value]
        assert (c.role, c.origin, c.op, c.attrs, c.shape) == ("recompute", o.origin, o.op,
                                                                 o.attrs, o.shape)
        assert all(i == R.PREFIX + j or i == j for i, j in zip(c.inputs, o.inputs))
        assert index[clone] > last_forward, f"{clone} runs in the forward pass"
    for n in r.graph.nodes.values():    # nothing reads a dropped value after the forward pass
        if n.name not in step.forward and n.role != "recompute":
            assert not set(n.inputs) & set(r.clones), n.name


def test_a_clone_reading_a_param_runs_before_its_update(spec):
    _, _, r = step_remat(spec, MemoryPolicy("every", every=2))
    index = {s.node: s.index for s in r.plan.steps}
    pairs = [(c, f"update:{i}") for c in r.clones.values() for i in r.graph[c].inputs
             if f"update:{i}" in index]
    assert pairs, "some clone reads a weight (the matmuls)"
    assert all(index[c] < index[u] for c, u in pairs)


def test_segment_ends_by_hand():
    assert R.segment_ends(10, 3, 0) == {2, 5, 8}          # every 3rd
    assert R.segment_ends(10, 4, 1) == {3, 6, 8, 9}       # segments 4, 3, 2, 1
    assert R.segment_ends(10, 1, 0) == set(range(10))     # keep all


def test_an_op_not_recomputable_is_kept(spec, monkeypatch):
    monkeypatch.setitem(OPS, "relu", dataclasses.replace(OPS["relu"], recomputable=False))
    _, _, r = step_remat(spec, MemoryPolicy("every", every=3))
    assert not any(OPS[r.graph[c].op].name == "relu" for c in r.clones.values())
    assert all(f"h{i}" in r.kept for i in range(1, LAYERS + 1))


def test_an_op_that_writes_in_place_is_never_recomputed(monkeypatch):
    monkeypatch.setitem(OPS, "relu", dataclasses.replace(OPS["relu"], mutates=(0,)))
    node = R.Node("h", "relu", ("z",))
    assert not R.recomputable(node)
    assert not R.recomputable(R.Node("u", "sgd", ("W", "g")))      # an update


# --- bitwise identical training steps --------------------------------------------------

@pytest.mark.parametrize("optimizer", ["sgd", {"sgd": {"lr": 0.1, "momentum": 0.9}},
                                       {"adam": {"lr": 0.01}}])
@pytest.mark.parametrize("policy", POLICIES[1:], ids=str)
def test_every_policy_updates_params_bitwise_as_none(spec, policy, optimizer):
    assert same_bits(one_step(spec, policy, optimizer), one_step(spec, NONE, optimizer))


def test_budgets_across_the_feasible_range_fit_and_are_bitwise(spec):
    _, _, full = step_remat(spec, NONE)
    with pytest.raises(R.BudgetError) as err:
        step_remat(spec, MemoryPolicy("budget", budget=64))
    smallest = err.value.smallest
    assert f"the smallest needs {smallest / 1024:.1f} KiB ({smallest} bytes)" in str(err.value)
    assert smallest < full.plan.arena_bytes
    reference = one_step(spec, NONE)
    for budget in np.linspace(smallest, full.plan.arena_bytes, 5).astype(int):
        policy = MemoryPolicy("budget", budget=int(budget))
        _, _, r = step_remat(spec, policy)
        assert r.plan.arena_bytes <= budget == r.plan.budget_bytes
        assert same_bits(one_step(spec, policy), reference)


def test_a_budget_that_fits_every_saved_value_recomputes_nothing(spec):
    _, _, full = step_remat(spec, NONE)
    costs = [step_remat(spec, MemoryPolicy("budget", budget=b))[2].recompute_flops
             for b in (full.plan.arena_bytes * 3 // 4, full.plan.arena_bytes)]
    assert costs[0] > 0 == costs[1]


def test_budget_search_finds_the_exhaustive_optimum_on_a_small_mlp(tmp_path):
    """Every kept set of a 5-layer MLP compiled (2^7 plans): at five budgets from the
    smallest arena of all to the no-recompute one, the search recomputes the least."""
    path = tmp_path / "five.yaml"
    path.write_text(deep_mlp(5, WIDTH))
    rows = against_optimal(path, 64, points=5)
    assert [r["found_flops"] for r in rows] == [r["optimal_flops"] for r in rows]
    assert rows[0]["optimal_flops"] > 0 == rows[-1]["optimal_flops"]


def test_verify_plan_refuses_an_arena_over_its_budget(spec):
    _, _, r = step_remat(spec, NONE)
    with pytest.raises(VerifyError, match="exceeds the memory budget"):
        R.verify_plan(dataclasses.replace(r.plan, budget_bytes=r.plan.arena_bytes - 1))


@settings(max_examples=40, deadline=None)
@given(random_graphs(), st.integers(1, 9), st.floats(0, 1))
def test_generated_graphs_at_budgets_are_bitwise(graph, batch, where):
    step = training_graph(graph, parse_optimizer("sgd"))
    store = {"W": np.random.default_rng(1).standard_normal(graph["W"].shape) * 0.3,
             LR: np.asarray(0.01), "opt:grad_check": np.asarray(0.0)}
    x = {"x": np.random.default_rng(2).standard_normal((batch, graph["x"].shape[1]))}
    dims, keep = {"batch": batch}, {"loss"}
    full = remat_plan(step.graph, dims, keep, step.forward).plan.arena_bytes
    smallest = R.smallest_arena(step.graph, dims, keep, step.forward)
    budget = max(1, int(smallest + where * (full - smallest)))

    def run(policy):
        s = {k: np.array(v) for k, v in store.items()}
        Runner(step.graph, s, keep | {step.guard}, step.forward, memory=policy).run(x)
        return s
    assert same_bits(run(MemoryPolicy("budget", budget=budget)), run(NONE))


# --- policies as written ----------------------------------------------------------------

def test_sizes_read_binary_units():
    assert parse_bytes("64MiB") == 64 * 2**20 == parse_bytes("64M")
    assert parse_bytes("1.5GiB") == 3 * 2**29
    assert parse_bytes("512kib") == 512 * 1024


@pytest.mark.parametrize("raw, policy", [
    (None, NONE), ({"budget": "64MiB"}, MemoryPolicy("budget", budget=64 * 2**20)),
    ({"budget": 4096}, MemoryPolicy("budget", budget=4096)),
    ({"every": 4}, MemoryPolicy("every", every=4)), ({"policy": "sqrt"}, MemoryPolicy("sqrt")),
    ({"policy": "none"}, NONE), ({"keep": ["h1"]}, MemoryPolicy("keep", keep=("h1",)))])
def test_parse_memory(raw, policy):
    assert parse_memory(raw, ["h1"]) == policy


@pytest.mark.parametrize("raw, message", [
    ({"budjet": "1M"}, "did you mean 'budget'"), ({"every": 0}, "train.memory.every is 0"),
    ({"policy": "half"}, "train.memory.policy is 'half'"), ("sqrt", "must be one setting"),
    ({"budget": "lots"}, "expected a size such as 64MiB"),
    ({"keep": ["h9"]}, "names 'h9', which is no node of the spec; did you mean 'h1'")])
def test_parse_memory_errors(raw, message):
    with pytest.raises(SpecError) as err:
        parse_memory(raw, ["h1"])
    assert message in str(err.value)


# --- the command line -------------------------------------------------------------------

def test_plan_memory_budget_json_fits_and_reports(spec):
    full = one_json(ok(graphc("plan", spec, "--json", "--batch-size", BATCH)))
    budget = full["arena_bytes"] * 3 // 4
    plan = one_json(ok(graphc("plan", spec, "--json", "--batch-size", BATCH,
                              "--memory-budget", budget)))
    assert "memory" not in full and plan["arena_bytes"] <= budget
    mem = plan["memory"]
    assert mem["policy"] == f"budget {budget / 1024:.1f} KiB" and mem["budget_bytes"] == budget
    dropped = [s for s in mem["saved"] if not s["kept"]]
    assert dropped and all(s["recompute_flops"] > 0 for s in dropped)
    assert {s["value"] for s in mem["saved"]} >= {f"h{i}" for i in range(1, LAYERS + 1)}
    assert any(st["outputs"] == [f"re:{dropped[0]['value']}"] for st in plan["steps"])


def test_plan_budget_below_every_plan_names_the_smallest(spec):
    bad = graphc("plan", spec, "--batch-size", BATCH, "--memory-budget", "1KiB")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert bad.stderr.startswith("error: memory budget 1.0 KiB (1024 bytes) is below")
    smallest = bad.stderr.split("at least ")[1].split()[0]
    plan = one_json(ok(graphc("plan", spec, "--json", "--batch-size", BATCH,
                              "--memory-budget", smallest)))
    assert plan["arena_bytes"] <= int(smallest)


def test_plan_saved_lists_kept_values_with_bytes_and_producer(spec):
    out = ok(graphc("plan", spec, "--saved", "--batch-size", BATCH)).stdout.splitlines()
    assert out[0].split()[:2] == ["saved", "value"]
    assert out[1].split()[:5] == ["h1", "relu", "(h1", "line", f"{_line(spec, 'h1:')})"]
    assert out[1].split()[5:] == [str(HIDDEN), "kept", "-"]
    assert out[-1].startswith(f"memory policy none: the backward pass keeps {LAYERS + 2} of "
                              f"{LAYERS + 2} saved values")


def _line(path: Path, prefix: str) -> int:
    return next(i for i, t in enumerate(path.read_text().splitlines(), 1)
                if t.strip().startswith(prefix))


def test_plan_memory_svg_draws_recomputed_and_kept_apart(spec, tmp_path):
    svg = tmp_path / "m.svg"
    out = ok(graphc("plan", spec, "--batch-size", BATCH, "--memory-budget",
                    f"{LAYERS * HIDDEN}", "--memory", svg)).stdout
    text = svg.read_text()
    recomputed = [r for r in out.splitlines() if "recomputed (re:" in r]
    assert text.count('class="buffer recomputed"') >= len(recomputed) > 0
    assert 0 < text.count('class="buffer kept"') < LAYERS + 2
    assert "kept for backward" in text


def test_plan_dot_boxes_the_recompute_steps_of_a_node(spec, tmp_path):
    dot = tmp_path / "p.dot"
    ok(graphc("plan", spec, "--batch-size", BATCH, "--memory-budget", f"{LAYERS * HIDDEN}",
              "--dot", dot))
    text = dot.read_text()
    assert 'subgraph "cluster_re:h1"' in text and '"re:h1/matmul"' in text


def test_train_with_a_memory_policy_saves_the_same_params(tmp_path):
    outs = {}
    for memory in ("{policy: none}", "{every: 2}", f"{{budget: {4 * HIDDEN + 4096}}}"):
        folder = tmp_path / memory.strip("{}").split(":")[0]
        folder.mkdir()
        spec = spec_with(folder, memory, "{sgd: {lr: 0.05, momentum: 0.9}}")
        ok(graphc("train", spec, "--out", folder / "c.npz", "--json", cwd=folder))
        with np.load(folder / "c.npz") as f:
            outs[memory] = {k: f[k] for k in f.files if not k.startswith("__")}
    first, *rest = outs.values()
    assert all(same_bits(first, other) for other in rest)


def test_train_and_time_take_memory_budget(tmp_path):
    spec = spec_with(tmp_path, "{policy: none}")
    bad = graphc("train", spec, "--memory-budget", "10", "--out", tmp_path / "c.npz")
    assert bad.returncode == 2 and "error: memory budget" in bad.stderr
    timed = one_json(ok(graphc("time", spec, "--memory-budget", "1MiB", "--steps", 2,
                               "--warmup", 0, "--json")))
    assert timed["steps"] == 2


def test_a_spec_budget_below_every_plan_names_its_line(tmp_path):
    spec = spec_with(tmp_path, "{budget: 1KiB}")
    bad = graphc("train", spec, "--out", tmp_path / "c.npz")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert bad.stderr.startswith(f"error: {spec}:{_line(spec, 'memory:')}:")
    assert "memory budget 1.0 KiB (1024 bytes) is below every plan" in bad.stderr
    assert not (tmp_path / "c.npz").exists()


def test_spec_memory_errors_name_the_line(tmp_path):
    spec = spec_with(tmp_path, "{every: -1}")
    bad = graphc("plan", spec)
    assert bad.returncode == 2
    assert bad.stderr.startswith(f"error: {spec}:{_line(spec, 'memory:')}:")
    assert "train.memory.every is -1" in bad.stderr


# --- benchmarks/bench_memory.py ---------------------------------------------------------

def test_bench_memory_measures_every_policy(spec):
    rows = B.measure(spec, "mlp", BATCH, reps=2)
    assert [r["policy"] for r in rows] == list(B.POLICIES)
    none, *others = rows
    assert none["peak_ratio"] == none["time_ratio"] == 1.0
    for r in others:
        if "error" not in r:
            assert r["peak_ratio"] == none["arena_bytes"] / r["arena_bytes"] >= 1.0
            assert 0 < r["recompute_share"] and r["step_ms"] > 0
    sizes = [r["arena_bytes"] for r in rows if "arena_bytes" in r]
    assert rows[-1]["arena_bytes"] == min(sizes) < none["arena_bytes"]


def test_largest_batch_under_a_budget(spec):
    """The budget is the arena at BATCH: the bisection lands on BATCH exactly (each value
    grows by 64 bytes with one more sample), and recomputing fits a larger batch."""
    _, _, full = step_remat(spec, NONE)
    assert B.largest_batch(spec, False, full.plan.arena_bytes, high=4 * BATCH) == BATCH
    assert B.largest_batch(spec, True, full.plan.arena_bytes, high=4 * BATCH) > BATCH


def test_dropout_and_batch_norm_recompute_exactly(tmp_path):
    """Recomputing everything (every: 100 keeps none) clones dropout (its mask regenerated
    from the same key and step), batch_norm's batch statistics and relu; the running
    statistics' update still runs once: params and state are bitwise those of `none`."""
    source = (Path(__file__).resolve().parents[1] / "specs" / "spiral_bn_dropout.yaml")
    saved = {}
    for memory in ("{policy: none}", "{every: 100}"):
        folder = tmp_path / memory.strip("{}").split(":")[0]
        folder.mkdir()
        spec = folder / "s.yaml"
        spec.write_text(source.read_text() + f"  memory: {memory}\n")
        if memory != "{policy: none}":
            table = ok(graphc("plan", spec, "--saved")).stdout
            assert "recomputed (re:h)" in table and "recomputed (re:h1n/saved)" in table
        ok(graphc("train", spec, "--epochs", 2, "--out", folder / "c.npz", "--json"))
        with np.load(folder / "c.npz") as f:
            saved[memory] = {k: f[k] for k in f.files if not k.startswith("__")}
    assert {"running_mean", "running_var"} <= saved["{policy: none}"].keys()
    assert same_bits(*saved.values())
