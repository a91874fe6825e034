"""Step code: the generated straight-line step against the reference loop of bound kernels.

Oracle: the reference executor (executor.py's `reference` step code), which calls each
step's bound kernel in order. The generated function inlines the same NumPy calls over
the same arrays, so every number must agree bit for bit: the checkpoint of
`train --epochs 2` and the arrays of `grad --out` on every spec in specs/, and the
output of fuzzed specs (benchmarks/fuzz_specs.py's mutations). Ops whose kernel has no
source text run as calls of their bound kernel (the fallback other developers' new ops
take); a test binds relu that way and checks the numbers and the error path.
"""
from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from graphc.backends.numpy import KERNELS
from graphc.backends.numpy.bind import source
from graphc.backends.numpy.workspace import Workspace
from graphc.cli import main
from graphc.executor import using_step_code
from graphc.model import load_model
from graphc.timing import step_executor
from graphc.trainconfig import training_step

REPO = Path(__file__).resolve().parents[1]
SPECS = sorted((REPO / "specs").glob("*.yaml"))
SPIRAL = REPO / "specs" / "spiral_mlp.yaml"
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fuzz_specs as F  # noqa: E402
from test_cli import graphc, load_npz, ok, one_json  # noqa: E402


def outputs(spec: Path, folder: Path, code: str) -> dict:
    """What `train --epochs 2` and `grad --json --out` leave under step code `code`: exit
    codes, JSON (less the timing) and every array, as bytes."""
    result = {}
    runner = CliRunner()
    for cmd, extra in (("train", ["--epochs", "2", "--seed", "0", "--json"]),
                       ("grad", ["--json"])):
        out = folder / f"{code}-{cmd}.npz"
        done = runner.invoke(main, [cmd, str(spec), *extra, "--out", str(out)],
                             env={"GRAPHC_STEP_CODE": code})
        text = done.stdout.strip()
        report = json.loads(text) if done.exit_code == 0 and text.startswith("{") else text
        if isinstance(report, dict):
            report.pop("samples_per_s", None)
        arrays = ({k: (v.dtype.str, v.shape, v.tobytes()) for k, v in load_npz(out).items()}
                  if out.exists() else {})
        result[cmd] = (done.exit_code, report, arrays)
    return result


@pytest.mark.slow
@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_generated_step_code_agrees_bit_for_bit_on_every_spec(spec, tmp_path):
    ref = outputs(spec, tmp_path, "reference")
    assert ref["grad"][0] == 0, ref["grad"]
    assert outputs(spec, tmp_path, "generated") == ref


def test_generated_step_code_agrees_bit_for_bit_on_fuzzed_specs(tmp_path):
    """Mutated specs that still run: generated and reference give the same output text.
    Mutants are drawn until 10 of them ran (most are rejected with exit 2), at most 120:
    adding a spec to specs/ reshuffles the draw without starving the check."""
    rnd, seeds, ran, tried = random.Random(14), F.seed_specs(), 0, 0
    while ran < 10 and tried < 120:
        tried += 1
        name = rnd.choice(sorted(seeds))
        text, applied = F.mutate(seeds[name], rnd, rnd.randrange(1, 3))
        got = {}
        for code in ("reference", "generated"):
            with using_step_code(code):
                outcome = F.run_graphc(text, tmp_path, "grad")
            got[code] = (outcome.exit_code, outcome.output)
        assert got["generated"] == got["reference"], (name, applied, text)
        ran += got["reference"][0] == 0
    assert ran >= 10, f"only {ran} of {tried} fuzzed specs ran: the check says little"


CLASHING = """\
inputs:
  np: {value: [1.0, 2.0]}
  step: {value: [3.0, -4.0]}
params:
  math: {shape: [2], value: [0.5, -0.5]}
nodes:
  k0: relu(np * math + step)
  loss: sum(k0 * k0)
"""


def test_value_names_never_clash_with_the_generated_code(tmp_path, monkeypatch):
    """Values named like the generated code's own names (np, math, step, k0 of a
    fallback call) get other names: same gradients as the reference."""
    spec = tmp_path / "clash.yaml"
    spec.write_text(CLASHING)
    monkeypatch.setitem(KERNELS, "relu", plain_relu)            # a fallback call k<N>()
    got = {code: CliRunner().invoke(main, ["grad", str(spec), "--json", "--all"],
                                    env={"GRAPHC_STEP_CODE": code}) for code in
           ("reference", "generated")}
    assert got["reference"].exit_code == 0, got["reference"].output
    assert got["generated"].output == got["reference"].output
    assert json.loads(got["generated"].stdout)["grads"]["math"] == [7.0, 0.0]   # 2 k0 np


def spiral_executor(code: str):
    model = load_model(SPIRAL)
    step, _, dims = training_step(model, 16, {})
    with using_step_code(code):
        return step_executor(model, step, dims)


def plain_relu(out, x):
    """relu as a bound closure without source text: the fallback path."""
    return lambda: np.maximum(x, 0, out=out)


def test_an_op_without_source_text_runs_as_its_bound_kernel(monkeypatch):
    monkeypatch.setitem(KERNELS, "relu", plain_relu)
    ex = {code: spiral_executor(code) for code in ("reference", "generated")}
    source_text = ex["generated"].program.source
    assert "# [" in source_text and "()    # bound kernel: no source text" in source_text
    relu = next(s for s in ex["generated"].plan.steps if s.op == "relu")
    assert f"k{relu.index}()" in source_text
    for e in ex.values():
        e.feed({"x": np.linspace(-1, 1, 32, dtype=np.float32).reshape(16, 2),
                "y": np.arange(16) % 3})
        e.run()
    for name in ("W1", "b1", "W2", "b2", "loss"):
        assert ex["generated"][name].tobytes() == ex["reference"][name].tobytes(), name


def test_relu_grad_compares_with_a_0d_zero():
    """relu_grad reads g and y, writes its mask and out, and compares y with a 0-d zero:
    no zeros array of y's shape to read (the hand-written step's form)."""
    rng = np.random.default_rng(0)
    y = np.maximum(rng.standard_normal((8, 5)), 0).astype(np.float32)
    g = rng.standard_normal((8, 5)).astype(np.float32)
    out = np.empty_like(g)
    with Workspace().binding():
        call = KERNELS["relu_grad"](out, g, y)
    read = [a for k, a in call.names.items() if k not in ("g", "y", "out", "mask")]
    assert read and all(a.shape == () for a in read), [a.shape for a in read]
    call()
    assert out.tobytes() == (g * (y > 0).astype(np.float32)).tobytes()


def test_an_inlined_line_that_raises_names_its_node_op_and_spec_line(monkeypatch):
    """The generated line that raised maps back to its step: the same one error line as
    the reference loop gives, exit 2."""
    def broken_relu(out, x):
        return source("np.maximum(x, wrong, out=out)", x=x, wrong=np.zeros(7), out=out)
    monkeypatch.setitem(KERNELS, "relu", broken_relu)
    lines = {}
    for code in ("reference", "generated"):
        done = CliRunner().invoke(main, ["grad", str(SPIRAL)], env={"GRAPHC_STEP_CODE": code})
        assert done.exit_code == 2, done.output
        lines[code] = done.output.strip().splitlines()
    assert lines["generated"] == lines["reference"] and len(lines["generated"]) == 1
    assert "while executing node 'h' (op relu) from spec line 18: ValueError" in \
        lines["generated"][0]


def test_a_traceback_shows_the_generated_line(monkeypatch):
    monkeypatch.setitem(KERNELS, "relu", lambda out, x: source(
        "np.maximum(x, wrong, out=out)", x=x, wrong=np.zeros(7), out=out))
    ex = spiral_executor("generated")
    with pytest.raises(Exception) as info:
        ex.program.run()
    frames = [f for f in info.traceback if "graphc step code" in str(f.path)]
    assert frames and "np.maximum(h_add, wrong_" in str(frames[-1].statement)


def test_plan_emit_python_prints_the_step_as_source():
    done = ok(graphc("plan", SPIRAL, "--emit", "python"))
    text = done.stdout
    assert text.startswith("# spiral_mlp: the training step (batch=64) as generated step "
                           "code: 36 plan steps, ")
    assert "\ndef step():\n" in text and "x.dot(W1, h_matmul)" in text
    compile(text, "emitted", "exec")


def test_plan_emit_refuses_the_reference_and_a_lone_step_code():
    for flags in (["--emit", "python", "--step-code", "reference"],
                  ["--step-code", "generated"], ["--emit", "python", "--json"]):
        done = graphc("plan", SPIRAL, *flags)
        assert done.returncode == 2, (flags, done.stderr)
        assert done.stderr.count("Error") + done.stderr.count("error:") == 1, done.stderr


def test_time_says_which_step_code_ran_and_its_kernel_calls():
    """On stdout without --json; on stderr with it (stdout keeps the contract's object)."""
    calls = {}
    for code in ("reference", "generated"):
        done = ok(graphc("time", SPIRAL, "--steps", "3", "--warmup", "1", "--step-code", code,
                         "--json"))
        assert "step_code" not in one_json(done)
        found = re.fullmatch(rf"step code: {code}, 36 plan steps, (\d+) kernel calls per step",
                             done.stderr.strip())
        assert found, done.stderr
        calls[code] = int(found[1])
    # relu_grad makes two calls; in generated code the four updates (momentum) find their
    # gradients in the stash (flat.stash_gradients): three run nothing and the last runs
    # the flat update of all four params (flat.flat_updates): three calls fewer
    assert calls["reference"] - 3 == calls["generated"] > 36
    text = ok(graphc("time", SPIRAL, "--steps", "3", "--warmup", "1")).stdout
    assert f"\nstep code: generated, 36 plan steps, {calls['generated']} kernel calls" in text


def test_an_unknown_step_code_is_one_error_line():
    done = CliRunner().invoke(main, ["grad", str(SPIRAL)], env={"GRAPHC_STEP_CODE": "jit"})
    assert done.exit_code == 2
    assert done.output.strip().splitlines() == [
        "error: unknown step code 'jit' (GRAPHC_STEP_CODE); expected one of reference, "
        "generated, fused, numpy; unset it for generated"]


def test_fused_without_numba_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "numba", None)       # import numba now fails
    done = CliRunner().invoke(main, ["grad", str(SPIRAL)], env={"GRAPHC_STEP_CODE": "fused"})
    assert done.exit_code == 2
    assert "pip install 'graphc[numba]'" in done.output and len(done.output.splitlines()) == 1
