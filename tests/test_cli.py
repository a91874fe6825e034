"""End to end: the CLI as a user types it (`python -m graphc ...` and the `graphc` script).

Oracles: parameter counts recomputed from the YAML; the contract's JSON keys; a
one-weight regression whose SGD trajectory is known in closed form, so that
--epochs, --batch-size and --lr can be checked exactly; the spiral's accuracy bar
from the issue (>= 0.97 in under a minute).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SPECS = REPO / "specs"
SPIRAL = SPECS / "spiral_mlp.yaml"
ALL_SPECS = sorted(p.name for p in SPECS.glob("*.yaml"))


MAX_LOAD_SCALE = 8      # a hang still fails: after at most 8 times the row's own timeout


def load_scaled(timeout: float) -> float:
    """`timeout` stretched by how oversubscribed the CPUs are (1-minute load average per
    core, from 1 up to MAX_LOAD_SCALE): a row that takes seconds alone can take minutes
    on 2 cores shared by several test runs, and must not fail for it (a fixed 120 s did),
    while a run that never ends still fails, only later."""
    try:
        per_core = os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:                 # no load average on this platform
        per_core = 1.0
    return timeout * min(MAX_LOAD_SCALE, max(1.0, per_core))


def graphc(*args, cwd=REPO, timeout=120, exe=None) -> subprocess.CompletedProcess:
    """Run graphc as a user does; `exe` overrides `python -m graphc` (e.g. the console script).
    `timeout` is seconds on an idle machine (slow rows pass more, e.g. training a CNN),
    stretched under load by `load_scaled`."""
    cmd = (exe or [sys.executable, "-m", "graphc"]) + [str(a) for a in args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd,
                          timeout=load_scaled(timeout), stdin=subprocess.DEVNULL)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, (f"{' '.join(proc.args[1:])} exited {proc.returncode}:\n"
                                  f"{proc.stderr}")
    return proc


def one_json(proc: subprocess.CompletedProcess) -> dict:
    """stdout is exactly one JSON object: nothing before it, nothing after it."""
    text = proc.stdout.strip()
    assert text, f"no output on stdout; stderr:\n{proc.stderr}"
    obj, end = json.JSONDecoder().raw_decode(text)
    assert end == len(text), f"stdout has more than one JSON object: {text[end:end + 200]!r}"
    assert isinstance(obj, dict)
    return obj


def load_npz(path) -> dict:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def console_script() -> list:
    """The installed `graphc` script: beside this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "graphc"
    found = str(beside) if beside.exists() else shutil.which("graphc")
    assert found, "the `graphc` console script is not installed: run pip install -e '.[test]'"
    return [found]


# --- check ---------------------------------------------------------------------------------

# specs whose layers create their params: (params, values) counted by hand
LAYER_PARAMS = {
    # conv 32*1*3*3 + 32, conv 64*32*3*3 + 64, dense 256*128 + 128, dense 128*10 + 10
    "digits_cnn.yaml": (8, 288 + 32 + 18432 + 64 + 32768 + 128 + 1280 + 10),
    # conv1d 8*1*5 + 8, conv1d 16*8*5 + 16, dense 16*3 + 3
    "waveforms_conv1d.yaml": (6, 40 + 8 + 640 + 16 + 48 + 3),
    # h0, W_out, b_out; gru_cell W_ih 1*48, W_hh 16*48, b_ih 48, b_hh 48, shared by 8 steps
    "count_gru_layers.yaml": (7, 16 + 144 + 9 + 48 + 768 + 48 + 48),
    # tok, norm_g, norm_b, out_b; pos 11*64; 2 blocks of 2 layer norms 4*64, Wq..Wo
    # 4*64*64, bo 64, W1 64*256, b1 256, W2 256*64, b2 64 (13 params each)
    "sort_transformer_layers.yaml": (31, 640 + 64 + 64 + 10 + 704 +
                                     2 * (256 + 16384 + 64 + 16384 + 256 + 16384 + 64)),
}


def param_count(spec: Path) -> tuple:
    """(params, values) from the YAML itself: a shape list, a `value:`, or a bare number;
    a block's params once per instance that neither shares nor binds them (`repeat: N`:
    N instances, or one with `share: true`)."""
    if spec.name in LAYER_PARAMS:
        return LAYER_PARAMS[spec.name]
    raw = yaml.safe_load(spec.read_text())
    params = list((raw.get("params") or {}).values())
    for node in (raw.get("nodes") or {}).values():
        if isinstance(node, dict) and "block" in node and "share" not in node:
            own = raw["blocks"][node["block"]].get("params") or {}
            copies = node.get("repeat", 1)
            params += [v for k, v in own.items() if k not in (node.get("params") or {})] * copies
        elif isinstance(node, dict) and node.get("share") is True:
            own = raw["blocks"][node["block"]].get("params") or {}
            params += [v for k, v in own.items() if k not in (node.get("params") or {})]
    total = 0
    for body in params:
        if isinstance(body, dict):
            shape = body["shape"] if "shape" in body else np.shape(body["value"])
        else:
            shape = body if isinstance(body, list) else ()
        total += int(np.prod(shape))
    return len(params), total


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_check_every_shipped_spec(spec):
    out = ok(graphc("check", SPECS / spec)).stdout
    got = re.search(r"(\d+) params \((\d+) values\)", out)
    assert got, f"check {spec} printed no parameter count:\n{out}"
    assert (int(got[1]), int(got[2])) == param_count(SPECS / spec)


def test_check_spiral_counts_by_hand():
    out = ok(graphc("check", SPIRAL)).stdout
    assert "4 params (603 values)" in out         # 2*100 + 100 + 100*3 + 3
    assert re.search(r"^h\s+relu\s+h/add\s+\[batch, 100\]", out, re.MULTILINE), out


# --- train ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def spiral_run(tmp_path_factory):
    """`graphc train specs/spiral_mlp.yaml --json --out CKPT`, timed; shared by several tests."""
    ckpt = tmp_path_factory.mktemp("spiral") / "spiral.ckpt.npz"
    start = time.perf_counter()
    proc = graphc("train", SPIRAL, "--json", "--out", ckpt, timeout=60)
    return proc, time.perf_counter() - start, ckpt


@pytest.mark.xdist_group("spiral_run")          # one worker trains the shared run, once
def test_train_spiral_reaches_97_percent_within_a_minute(spiral_run):
    proc, seconds, ckpt = spiral_run
    result = one_json(ok(proc))
    assert seconds < 60
    assert set(result) == {"loss", "metrics", "epochs", "samples_per_s"}
    assert result["metrics"]["accuracy"] >= 0.97, result
    assert result["epochs"] == 300                  # the spec's train.epochs
    assert np.isfinite(result["loss"]) and result["samples_per_s"] > 0


@pytest.mark.xdist_group("spiral_run")          # one worker trains the shared run, once
def test_train_json_keeps_stdout_pure_and_progress_on_stderr(spiral_run):
    proc, _, _ = spiral_run
    assert len(proc.stdout.strip().splitlines()) == 1, proc.stdout
    assert "epoch" in proc.stderr and "final:" in proc.stderr


@pytest.mark.xdist_group("spiral_run")          # one worker trains the shared run, once
def test_train_checkpoint_loads_without_pickle(spiral_run):
    _, _, ckpt = spiral_run
    arrays = load_npz(ckpt)
    shapes = {"W1": (2, 100), "b1": (100,), "W2": (100, 3), "b2": (3,)}
    assert {k: arrays[k].shape for k in shapes} == shapes
    assert not list(ckpt.parent.glob("*.tmp")), "the atomic write left a temp file behind"


def test_train_default_out_is_name_ckpt_npz_in_cwd(tmp_path):
    ok(graphc("train", SPIRAL, "--epochs", "1", cwd=tmp_path))
    assert [p.name for p in tmp_path.iterdir()] == ["spiral_mlp.ckpt.npz"]


def test_train_with_console_script(tmp_path):
    proc = ok(graphc("train", SPIRAL, "--epochs", "2", "--json", "--out", tmp_path / "c.npz",
                     exe=console_script()))
    assert one_json(proc)["epochs"] == 2


def spiral_params(tmp_path, name, *flags) -> dict:
    out = tmp_path / f"{name}.npz"
    ok(graphc("train", SPIRAL, "--epochs", "3", "--out", out, *flags))
    return {k: v.tobytes() for k, v in load_npz(out).items() if k in ("W1", "b1", "W2", "b2")}


def test_same_seed_gives_identical_params_and_another_seed_does_not(tmp_path):
    first = spiral_params(tmp_path, "a", "--seed", "7")
    assert first == spiral_params(tmp_path, "b", "--seed", "7")
    assert first["W1"] != spiral_params(tmp_path, "c", "--seed", "8")["W1"]


# A one-weight regression with every sample (x=1, y=1): loss = (w - 1)^2 on any batch, so
# one SGD step maps 1 - w to (1 - 2 lr)(1 - w), whatever the shuffle. From w = 0, after
# E epochs of ceil(N / batch) steps: w = 1 - (1 - 2 lr) ** (E * ceil(N / batch)).
TINY = """\
name: tiny
dtype: float64
inputs:
  x: [batch]
  y: [batch]
params:
  w: {value: 0.0}
nodes:
  pred: w * x
  loss: mse(pred, y)
train:
  data: {npz: data.npz}
  batch_size: 4
  epochs: 1
  optimizer: {sgd: {lr: 0.1}}
"""
N = 5


@pytest.fixture
def tiny(tmp_path):
    np.savez(tmp_path / "data.npz", x=np.ones(N), y=np.ones(N))
    (tmp_path / "tiny.yaml").write_text(TINY)
    return tmp_path / "tiny.yaml"


def tiny_w(spec: Path, *flags) -> tuple:
    out = spec.parent / "out.ckpt.npz"
    result = one_json(ok(graphc("train", spec, "--json", "--out", out, *flags)))
    return float(load_npz(out)["w"]), result


def expected_w(lr, epochs, batch) -> float:
    return 1 - (1 - 2 * lr) ** (epochs * -(-N // batch))


def test_tiny_spec_defaults(tiny):
    w, result = tiny_w(tiny)                      # batch 4 of 5: a last batch of 1
    assert w == pytest.approx(expected_w(0.1, 1, 4), abs=1e-12)
    assert result["epochs"] == 1 and result["metrics"] == {}


@pytest.mark.parametrize("flags, lr, epochs, batch", [
    (["--epochs", "2"], 0.1, 2, 4),
    (["--batch-size", "1"], 0.1, 1, 1),
    (["--batch-size", "3"], 0.1, 1, 3),           # 5 = 3 + 2: a smaller last batch
    (["--lr", "0.25"], 0.25, 1, 4),
    (["--epochs", "3", "--batch-size", "2", "--lr", "0.05"], 0.05, 3, 2),
])
def test_train_overrides_take_effect(tiny, flags, lr, epochs, batch):
    w, result = tiny_w(tiny, *flags)
    assert w == pytest.approx(expected_w(lr, epochs, batch), abs=1e-12)
    assert result["epochs"] == epochs


# --- grad ----------------------------------------------------------------------------------

def test_grad_out_writes_one_array_per_leaf(tmp_path):
    spec = SPECS / "lecture_cs221_linear_regression.yaml"
    out = tmp_path / "g.npz"
    shown = one_json(ok(graphc("grad", spec, "--json", "--out", out)))
    arrays = load_npz(out)
    assert set(arrays) == {"w", "phi", "y"} == set(shown["grads"])
    np.testing.assert_array_equal(arrays["w"], [6.0, 12.0])     # the lecture's numbers
    for leaf, g in shown["grads"].items():
        np.testing.assert_array_equal(arrays[leaf], g)


@pytest.mark.xdist_group("spiral_run")          # one worker trains the shared run, once
def test_grad_params_from_a_checkpoint_changes_the_result(spiral_run):
    _, _, ckpt = spiral_run
    before = one_json(ok(graphc("grad", SPIRAL, "--json")))
    after = one_json(ok(graphc("grad", SPIRAL, "--json", "--params", ckpt)))
    assert after["loss"] < before["loss"], "trained params should fit the first batch better"
    assert after["grads"]["W2"] != before["grads"]["W2"]


def test_grad_text_output():
    out = ok(graphc("grad", SPECS / "lecture_cs231n_add_mul.yaml")).stdout.splitlines()
    assert out == ["loss = -12", "d loss / d x = -4", "d loss / d y = -4", "d loss / d z = 3"]


# --- plan, ops, help, errors -----------------------------------------------------------------

PLAN_KEYS = {"batch_size", "arena_bytes", "naive_bytes", "lower_bound_bytes", "steps",
             "buffers"}
STEP_KEYS = {"index", "op", "phase", "inputs", "outputs"}
BUFFER_KEYS = {"value", "offset", "bytes", "first_step", "last_step", "in_place_of"}
PHASES = {"forward", "backward", "update"}


def test_plan_json_has_the_contract_keys():
    plan = one_json(ok(graphc("plan", SPIRAL, "--json")))
    assert set(plan) == PLAN_KEYS
    assert plan["batch_size"] == 64                 # the spec's train.batch_size
    assert [s["index"] for s in plan["steps"]] == list(range(len(plan["steps"])))
    assert {s["phase"] for s in plan["steps"]} == PHASES
    for s in plan["steps"]:
        assert set(s) == STEP_KEYS, s
    assert plan["buffers"], "a training step has intermediate values"
    for b in plan["buffers"]:
        assert set(b) == BUFFER_KEYS, b
        assert 0 <= b["first_step"] <= b["last_step"] < len(plan["steps"]), b
        assert 0 <= b["offset"] and b["offset"] + b["bytes"] <= plan["arena_bytes"], b
        assert b["in_place_of"] is None or isinstance(b["in_place_of"], str)
    assert plan["lower_bound_bytes"] <= plan["arena_bytes"] <= plan["naive_bytes"]


def test_plan_batch_size_override():
    assert one_json(ok(graphc("plan", SPIRAL, "--json", "--batch-size", "10")))["batch_size"] == 10


def test_plan_table():
    out = ok(graphc("plan", SPIRAL)).stdout
    assert out.splitlines()[0].split()[:3] == ["step", "phase", "op"]
    assert "arena" in out.splitlines()[-1]


def test_time_json_has_the_contract_keys():
    t = one_json(ok(graphc("time", SPIRAL, "--json", "--steps", "5", "--warmup", "1",
                           "--batch-size", "16")))
    assert set(t) == {"batch_size", "steps", "step_us_median", "step_us_p10", "per_op"}
    assert (t["batch_size"], t["steps"]) == (16, 5)
    assert 0 < t["step_us_p10"] <= t["step_us_median"]
    assert {r["op"] for r in t["per_op"]} >= {"matmul", "relu", "softmax_cross_entropy"}
    for row in t["per_op"]:
        assert set(row) == {"op", "phase", "us"} and row["phase"] in PHASES, row


SEQUENCE = """\
name: seq_mean
inputs:
  x: [N, T, 3]
  y: [N, 1]
params:
  W: [3, 1]
nodes:
  p: mean(x @ W, axis=1)
  loss: mse(p, y)
train:
  batch_size: 16
"""


@pytest.fixture
def sequence(tmp_path) -> Path:
    """A spec whose batch dim is N and whose other symbolic dim, T, no data sizes."""
    path = tmp_path / "seq.yaml"
    path.write_text(SEQUENCE)
    return path


def buffer_bytes(plan: dict, value: str) -> int:
    return next(b["bytes"] for b in plan["buffers"] if b["value"] == value)


def test_plan_and_time_size_any_symbolic_dim_with_dim(sequence):
    plan = one_json(ok(graphc("plan", sequence, "--json", "--dim", "T=5")))
    assert plan["batch_size"] == 16                     # N, the first dim, takes the batch size
    assert buffer_bytes(plan, "p/matmul") == 16 * 5 * 1 * 4          # x @ W: [N, T, 1] float32
    plan = one_json(ok(graphc("plan", sequence, "--json", "--dim", "T=7", "--dim", "N=4")))
    assert plan["batch_size"] == 4
    assert buffer_bytes(plan, "p/matmul") == 128        # 4 * 7 * 4 = 112 bytes, aligned to 64
    plan = one_json(ok(graphc("plan", sequence, "--json", "--dim", "T=2", "--batch-size", "8")))
    assert (plan["batch_size"], buffer_bytes(plan, "p/matmul")) == (8, 64)
    t = one_json(ok(graphc("time", sequence, "--json", "--dim", "T=5", "--steps", "2",
                           "--warmup", "0")))
    assert t["batch_size"] == 16 and {r["op"] for r in t["per_op"]} >= {"matmul", "mean", "mse"}


@pytest.mark.parametrize("command", ["plan", "time"])
@pytest.mark.parametrize("flags, expect", [
    ([], "seq.yaml:3:3: node 'x': dim 'T' of shape [N, T, 3] has no size here (sized dims: "
         "N); size it with --dim T=SIZE"),
    (["--dim", "t=5"], "--dim t=5: seq.yaml has no symbolic dim 't'; its symbolic dims are "
                       "N, T"),
    (["--dim", "T=5", "--dim", "N=8", "--batch-size", "4"],
     "--dim N=8 and --batch-size 4 give the batch dim different sizes"),
    (["--dim", "T=0"], "'T=0' is not NAME=SIZE with a size from 1 up"),
    (["--dim", "T"], "'T' is not NAME=SIZE"),
    (["--dim", "T=2", "--dim", "T=3"], "dim 'T' is given twice"),
])
def test_an_unsized_or_misnamed_dim_is_one_error(sequence, command, flags, expect):
    proc = graphc(command, sequence.name, *flags, cwd=sequence.parent)
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], proc.stderr
    assert proc.stdout == ""


def test_ops_lists_matmul():
    out = ok(graphc("ops")).stdout
    assert re.search(r"^\s+matmul\(a, b\)", out, re.MULTILINE), out


def test_help():
    assert "Commands:" in ok(graphc("--help")).stdout
    assert "--batch-size" in ok(graphc("train", "--help")).stdout


def test_version():
    assert re.search(r"\d+\.\d+", ok(graphc("--version")).stdout)


@pytest.mark.parametrize("args", [
    ["train", str(SPIRAL), "--bogus"],
    ["train", str(SPIRAL), "--epochs", "0"],
    ["no-such-command"],
    ["check", "no/such/spec.yaml"],
])
def test_bad_input_is_exit_2_with_one_error_line(args):
    proc = graphc(*args)
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert proc.stdout == ""


# --- the front door: README and CI say the same thing --------------------------------------

def test_readme_quickstart_and_ci_use_the_same_commands():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "pip install -e '.[test]' && pytest -q" in readme
    assert "pip install -e . && graphc train specs/spiral_mlp.yaml" in readme
    ci = REPO / ".ci" / "run"
    text = ci.read_text(encoding="utf-8")
    assert ci.stat().st_mode & 0o111, ".ci/run must be executable"
    assert "set -euo pipefail" in text
    assert "-m pip install -q -e '.[test]'" in text and "-m pytest -q" in text
