"""Fuzzing: mutated valid specs never crash graphc, never hang it, and never print a traceback.

hypothesis picks a valid spec (specs/*.yaml and the small ones in
benchmarks/fuzz_specs.py), applies one to three mutations (the same ones as the
benchmark script: delete/duplicate/swap lines, rename keys, re-indent, swap
characters, replace numbers, truncate, insert unicode or YAML syntax, swap
names and ops, add attributes, edit the parsed tree) and runs `graphc check`
in-process, and fewer examples through grad, plan and train. The only acceptable
outcomes are exit 0 (still valid) and exit 2 (one `error:` line), plus exit 1 for
a NaN that stops training; graphc's own "internal error" is a bug. Examples are
derandomized so CI sees the same cases every run; the benchmark explores more.
"""
from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import fuzz_specs as F  # noqa: E402
from graphc.limits import set_memory_limit  # noqa: E402

SEEDS = F.seed_specs()
LIMIT_S = 10.0          # per example; a hang fails the test instead of stalling CI
# an epoch of these takes longer than LIMIT_S on a loaded machine; tests/test_sequence_specs.py
# and tests/test_conv_specs.py train them
SLOW_EPOCH = {"sort_transformer.yaml", "sort_transformer_layers.yaml", "digits_cnn.yaml"}


@pytest.fixture(scope="module")
def folder():
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)
    set_memory_limit(None)          # the CLI's --max-memory sets it for this process


def assert_user_facing(out: F.Outcome, text: str):
    report = f"exit {out.exit_code}\n{out.output}\n--- spec:\n{text}"
    assert out.exit_code in (0, 2), report
    assert "Traceback" not in out.output, report
    if out.exit_code == 2:
        lines = out.output.rstrip("\n").split("\n")
        errors = [line for line in lines if line.startswith("error: ")]
        assert len(errors) == 1, report
        assert all(line.startswith("  ") for line in lines[lines.index(errors[0]) + 1:]), report


def test_every_seed_spec_is_valid(folder):
    for name, text in SEEDS.items():
        out = F.run_graphc(text, folder, "check", LIMIT_S)
        assert out.exit_code == 0, f"{name}: {out.output}"


@pytest.mark.slow
@settings(max_examples=3000, deadline=2000, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(SEEDS)), count=st.integers(1, 3),
       rnd=st.randoms(use_true_random=False))
def test_mutated_specs_exit_0_or_2(folder, name, count, rnd):
    text, _ = F.mutate(SEEDS[name], rnd, count)
    assert_user_facing(F.run_graphc(text, folder, "check", LIMIT_S), text)


@pytest.mark.slow
@settings(max_examples=1000, deadline=2000, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(n for n in SEEDS if "lecture" in n or n in
                                   ("anchors.yaml", "scalars.yaml"))),
       rnd=st.randoms(use_true_random=False))
def test_mutated_specs_survive_a_forward_and_backward_pass(folder, name, rnd):
    """grad runs the executor too: the specs here carry their values, so no data loads."""
    text, _ = F.mutate(SEEDS[name], rnd, 1)
    assert_user_facing(F.run_graphc(text, folder, "grad", LIMIT_S), text)


@pytest.mark.slow
@settings(max_examples=500, deadline=2000, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(SEEDS)), rnd=st.randoms(use_true_random=False))
def test_mutated_specs_compile_to_a_plan_or_fail_cleanly(folder, name, rnd):
    """plan builds the training step and lays out the arena: dims, optimizer, batch size."""
    text, _ = F.mutate(SEEDS[name], rnd, 1)
    assert_user_facing(F.run_graphc(text, folder, "plan", LIMIT_S), text)


@pytest.mark.slow
@settings(max_examples=300, deadline=4000, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(n for n, text in SEEDS.items() if "data:" in text
                                   and n not in SLOW_EPOCH)),
       rnd=st.randoms(use_true_random=False))
def test_mutated_specs_train_one_epoch_or_fail_cleanly(folder, name, rnd):
    """train loads data and runs the step; a NaN may stop it (exit 1), nothing else may."""
    text, _ = F.mutate(SEEDS[name], rnd, 1)
    out = F.run_graphc(text, folder, "train", LIMIT_S)
    assert out.ok, f"exit {out.exit_code}\n{out.output}\n--- spec:\n{text}"


def test_a_hang_is_caught_by_the_time_limit():
    with pytest.raises(F.Hang):
        with F.time_limit(0.05):
            while True:
                pass


def test_mutations_change_the_text_and_stay_deterministic():
    rnd_a, rnd_b = random.Random(7), random.Random(7)
    text = SEEDS["spiral_mlp.yaml"]
    changed = 0
    for m in F.MUTATIONS:
        a, b = m(text, rnd_a), m(text, rnd_b)
        assert a == b, m.__name__
        changed += a != text
    assert changed >= len(F.MUTATIONS) - 2      # a mutation may pick a no-op by chance
