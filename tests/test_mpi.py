"""Data-parallel training over MPI (docs/scaling.md): `mpiexec -n 2 graphc train` equals one
process on the same global batches, every rank holds the same bits, and a failed rank
ends the run with the last checkpoint intact.

Oracles: the one-process run of the same spec (params within 1e-5 relative, float32);
the ranks' own params gathered and compared byte for byte; a checkpoint that a killed
run leaves behind resumes. Tests that launch `mpiexec` skip, saying why, where mpi4py
or mpiexec is missing (CI installs the `mpi` extra); the rest need no MPI.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from graphc import parallel
from graphc.ir import VerifyError
from graphc.model import load_model
from graphc.optim import LR, SHARE, SYNC, parse_optimizer, training_graph
from graphc.train import step_runner
from graphc.outfiles import locked
from graphc.plan import compile_plan, verify_plan

REPO = Path(__file__).resolve().parents[1]
MPIEXEC = shutil.which("mpiexec")
HAVE_MPI = MPIEXEC is not None and importlib.util.find_spec("mpi4py") is not None
needs_mpi = pytest.mark.skipif(not HAVE_MPI, reason="mpiexec or mpi4py is missing: "
                               "pip install 'graphc[mpi]' runs these tests")
LAUNCHER_VARS = parallel.SIZE_VARS + parallel.RANK_VARS

SPEC = """
name: mpi_mlp
inputs:
  x: [batch, 2]
  y: {shape: [batch], dtype: int64}
params:
  W1: {shape: [2, 16], init: he_normal}
  b1: [16]
  W2: {shape: [16, 3], init: {normal: {std: 0.1}}}
  b2: [3]
nodes:
  h: relu(x @ W1 + b1)
  scores: h @ W2 + b2
  loss: softmax_cross_entropy(scores, y) + 1e-3 * sum(W1 * W1)
outputs: [scores]
train:
  data: {dataset: spiral, samples: 200, classes: 3, seed: 0, validation: 0.25}
  batch_size: 45
  epochs: 3
  optimizer: {OPTIMIZER}
  metrics: {accuracy: [scores, y]}
  seed: 0
"""


def spec(tmp_path: Path, optimizer="{adam: {lr: 0.05}}", **train) -> Path:
    text = SPEC.replace("{OPTIMIZER}", optimizer)
    for key, value in train.items():
        text += f"  {key}: {value}\n"
    path = tmp_path / "mpi_mlp.yaml"
    path.write_text(text)
    return path


def clean_env(**extra) -> dict:
    """This environment without any MPI launcher's variables (pytest may run under one)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return {**env, **extra}


def graphc(*args, cwd, ranks=None, timeout=120, env=None) -> subprocess.CompletedProcess:
    """`graphc ARGS`, under `mpiexec -n RANKS` where given."""
    cmd = [sys.executable, "-m", "graphc", *map(str, args)]
    if ranks:
        cmd = [MPIEXEC, "-n", str(ranks), *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=env or clean_env())


def params(path: Path) -> dict:
    with np.load(path) as f:
        return {k: f[k] for k in f.files if not k.startswith("__graphc__/")}


# --- no MPI needed -------------------------------------------------------------------------

@pytest.mark.parametrize("env, size", [({}, 1), ({"PMI_SIZE": "4", "PMI_RANK": "0"}, 4),
                                       ({"OMPI_COMM_WORLD_SIZE": "1"}, 1),
                                       ({"PMIX_RANK": "3"}, 2), ({"PMIX_RANK": "0"}, 1)])
def test_the_launchers_environment_says_how_many_processes(env, size):
    assert parallel.launched(env) == size


@pytest.mark.parametrize("n, ranks", [(10, 2), (7, 2), (45, 4), (1, 2)])
def test_shares_are_array_splits_in_rank_order(n, ranks):
    worlds = [type("W", (parallel.World,), {"size": ranks, "rank": r})() for r in range(ranks)]
    rows = np.arange(100, 100 + n)
    pieces = [w.shard(rows) for w in worlds]
    expected = np.array_split(rows, ranks)
    for (got, share), want in zip(pieces, expected):
        assert share == len(want) / n
        assert list(got) == (list(want) if len(want) else [rows[0]])   # no rows: one, share 0
    assert sum(share for _, share in pieces) == pytest.approx(1.0)


def test_under_a_launcher_without_mpi4py_every_process_stops_saying_what_to_install(tmp_path):
    """Never N independent trainings: PMI_SIZE=2 without mpi4py is bad input, exit 2."""
    blocker = tmp_path / "blocker" / "mpi4py"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('no mpi4py here')\n")
    env = clean_env(PMI_SIZE="2", PMI_RANK="1")
    env["PYTHONPATH"] = os.pathsep.join([str(blocker.parent), env["PYTHONPATH"]])
    proc = graphc("train", spec(tmp_path), "--out", tmp_path / "c.npz", cwd=tmp_path, env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("error:") == 1 and "Traceback" not in proc.stderr
    assert "pip install 'graphc[mpi]'" in proc.stderr
    assert not (tmp_path / "c.npz").exists()


def synced_plan(tmp_path, batch=7):
    model = load_model(spec(tmp_path))
    opt = parse_optimizer(model.spec.train.get("optimizer"))
    step = training_graph(model.graph, opt, synced=True)
    plan = compile_plan(step.graph, {"batch": batch}, {model.graph.loss}, step.forward,
                        together=step.together)
    return model, step, plan


def test_the_allreduce_covers_the_loss_and_every_gradient_side_by_side(tmp_path):
    model, step, plan = synced_plan(tmp_path)
    verify_plan(plan)
    assert step.together == (SYNC, model.graph.loss,
                             *(step.grads[p] for p in ("W1", "b1", "W2", "b2")))
    bufs = [plan.buffers[v] for v in step.together]
    assert [b.offset for b in bufs[1:]] == [a.offset + a.bytes for a in bufs[:-1]]
    sync = next(s for s in plan.steps if s.node == SYNC)
    readers = [s for s in plan.steps if s.node != SYNC and set(s.inputs) & set(step.together)]
    assert readers and all(s.index > sync.index for s in readers)   # every update after it


@pytest.mark.parametrize("path", sorted((REPO / "specs").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_spec_compiles_a_synced_step_that_verifies(path):
    """Every spec: no ordering cycle, one contiguous span, every update after the sync."""
    model = load_model(path)
    opt = parse_optimizer(model.spec.train.get("optimizer"), None)
    step = training_graph(model.graph, opt, synced=True)
    dims = {d: 5 for n in model.graph.nodes.values() for d in n.shape if isinstance(d, str)}
    plan = compile_plan(step.graph, dims, {model.graph.loss}, step.forward,
                        together=step.together)
    verify_plan(plan)
    sync = next(s.index for s in plan.steps if s.node == SYNC)
    optimizer = [s for s in plan.steps if s.phase == "update" and s.node != SYNC
                 and step.graph[s.node].role != "state"]    # a state update needs no grad
    assert all(s.index > sync for s in optimizer)


def test_the_verifier_catches_a_gap_in_the_allreduced_span(tmp_path):
    _, step, plan = synced_plan(tmp_path)
    last = plan.buffers[step.together[-1]]
    moved = {**plan.buffers, last.value: type(last)(**{**last.__dict__,
                                                       "offset": plan.arena_bytes})}
    broken = type(plan)(**{**plan.__dict__, "buffers": moved,
                           "arena_bytes": plan.arena_bytes + last.bytes})
    with pytest.raises(VerifyError, match="not right after"):
        verify_plan(broken)


# `d = W - V`: V's gradient is neg(W's), a backward node reading a gradient the
# allreduce sums, which must run before it (ordering it after would be a cycle)
DIFFERENCE = """
inputs:
  x: [batch, 3]
params:
  W: {shape: [3], init: {normal: {std: 1.0}}}
  V: {shape: [3], init: {normal: {std: 1.0}}}
nodes:
  d: W - V
  loss: sum(mean(x * d * d, axis=0))
train:
  data: {dataset: blobs, features: 3, classes: 2, samples: 20}
"""


def run_steps(path: Path, synced: bool, lr: float, share: float = 1.0, steps=4) -> tuple:
    """(losses, params) after `steps` plain-SGD steps on fixed batches, in this process."""
    model = load_model(path)
    step = training_graph(model.graph, parse_optimizer({"sgd": {"lr": lr}}), synced=synced)
    runner = step_runner(model, step)
    model.store[LR][...] = lr
    if synced:
        model.store[SHARE][...] = share
    rng = np.random.default_rng(1)
    losses = []
    for _ in range(steps):
        feeds = {"x": rng.standard_normal((9, model.graph["x"].shape[1])).astype(np.float32)}
        if "y" in model.graph.nodes:
            feeds["y"] = rng.integers(0, 3, 9)
        losses.append(float(runner.run(feeds)[model.graph.loss]))
    return losses, {p.name: model.store[p.name].copy() for p in model.graph.leaves("param")}


@pytest.mark.parametrize("text", [SPEC.replace("{OPTIMIZER}", "sgd"), DIFFERENCE],
                         ids=["mlp", "difference"])
def test_the_allreduce_scales_the_loss_and_every_gradient_by_the_share(tmp_path, text):
    """One process (the sum over ranks is its own value): share 0.5 halves the loss and
    every gradient, exactly (a power of two), so plain SGD takes the steps of lr / 2."""
    path = tmp_path / "s.yaml"
    path.write_text(text)
    synced_losses, synced = run_steps(path, True, 0.2, share=0.5)
    plain_losses, plain = run_steps(path, False, 0.1)
    assert {k: v.tobytes() for k, v in synced.items()} == \
        {k: v.tobytes() for k, v in plain.items()}
    assert [2 * loss for loss in synced_losses] == plain_losses


# --- under mpiexec -------------------------------------------------------------------------

def train_both(tmp_path, *args, ranks=2, **train) -> tuple:
    """(one process's checkpoint and JSON, RANKS processes' checkpoint and JSON)."""
    path = spec(tmp_path, **train)
    out = []
    for n in (None, ranks):
        ckpt = tmp_path / f"n{n or 1}.npz"
        proc = graphc("train", path, "--out", ckpt, "--json", *args, cwd=tmp_path, ranks=n)
        assert proc.returncode == 0, proc.stderr
        out.append((ckpt, json.loads(proc.stdout.strip().splitlines()[-1]), proc))
    return out


def assert_close(a: dict, b: dict, rtol=1e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        scale = max(float(np.abs(a[k]).max()), 1e-3)
        assert float(np.abs(a[k] - b[k]).max()) <= rtol * scale, k


@needs_mpi
@pytest.mark.parametrize("optimizer, batch", [("{adam: {lr: 0.05}}", 45),
                                              ("{sgd: {lr: 0.2, momentum: 0.9}}", 32),
                                              ("{sgd: {lr: 0.05}}", 1)])
def test_two_ranks_train_the_params_one_process_trains(tmp_path, optimizer, batch):
    """Batches of 45 split 23 + 22 (and the epoch's last, 15, into 8 + 7): gradients
    weighted by share equal the whole batch's; batches of 1 leave rank 1 with no rows
    (share 0) at every step; validation metrics are the whole split's."""
    (one, one_json, _), (two, two_json, proc) = train_both(
        tmp_path, "--batch-size", batch, optimizer=optimizer)
    assert_close(params(one), params(two))
    assert two_json["metrics"]["accuracy"] == pytest.approx(one_json["metrics"]["accuracy"])
    assert two_json["loss"] == pytest.approx(one_json["loss"], rel=1e-5)
    assert len(proc.stdout.splitlines()) == 1                  # rank 0 alone prints
    assert proc.stderr.count("final:") == 1 and proc.stderr.count("epoch    3/3") == 1


BN_SPEC = """
name: mpi_bn
inputs:
  x: [batch, 2]
  y: {shape: [batch], dtype: int64}
params:
  gamma: {shape: [2], init: ones}
  beta: [2]
  W: {shape: [2, 3], init: {normal: {std: 0.1}}}
  b: [3]
state:
  running_mean: [2]
  running_var: {shape: [2], init: ones}
nodes:
  xn: batch_norm(x, gamma, beta, running_mean, running_var)
  scores: xn @ W + b
  loss: softmax_cross_entropy(scores, y)
outputs: [scores]
train:
  data: {dataset: spiral, samples: 200, classes: 3, seed: 0}
  batch_size: 45
  epochs: 2
  optimizer: {sgd: {lr: 0.1}}
  seed: 0
"""


@needs_mpi
def test_running_statistics_are_averaged_over_ranks_by_share(tmp_path):
    """Each rank updates the running statistics from its shard; the share-weighted mean over
    ranks makes the running mean the one-process value (batch_norm reads the input here,
    so the batch means do not depend on the params) and keeps every rank's bits equal
    (the save compares them). The running variance is the mean of the shards' variances,
    close to the batch's but not equal (docs/scaling.md)."""
    path = tmp_path / "bn.yaml"
    path.write_text(BN_SPEC)
    for n in (None, 2):
        proc = graphc("train", path, "--out", tmp_path / f"n{n or 1}.npz", cwd=tmp_path,
                      ranks=n)
        assert proc.returncode == 0, proc.stderr
    one, two = params(tmp_path / "n1.npz"), params(tmp_path / "n2.npz")
    assert_close({"m": one["running_mean"]}, {"m": two["running_mean"]})
    assert not np.array_equal(two["running_mean"], np.zeros(2))
    assert np.allclose(one["running_var"], two["running_var"], rtol=0.05)


@needs_mpi
def test_every_rank_holds_the_same_bits_and_the_api_trains_under_mpiexec(tmp_path):
    script = tmp_path / "fit.py"
    script.write_text(f"""
import numpy as np
from mpi4py import MPI
import graphc
m = graphc.load({str(spec(tmp_path))!r})
result = m.fit(epochs=2, out={str(tmp_path / 'api.npz')!r})
blobs = MPI.COMM_WORLD.gather(b"".join(v.tobytes() for v in m.params.values()))
if MPI.COMM_WORLD.rank == 0:
    print("identical" if len(set(blobs)) == 1 else "differ", result.epochs)
""")
    proc = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(script)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env=clean_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["identical", "2"]
    assert (tmp_path / "api.npz").exists()


@needs_mpi
def test_resume_with_another_number_of_ranks_continues_the_same_run(tmp_path):
    """The checkpoint holds global state only: 2 epochs on 2 ranks, then 1 more on 1,
    equals 3 epochs on 1 (to float rounding)."""
    path = spec(tmp_path)
    ckpt = tmp_path / "c.npz"
    first = graphc("train", path, "--out", ckpt, "--epochs", 2, cwd=tmp_path, ranks=2)
    assert first.returncode == 0, first.stderr
    resumed = graphc("train", path, "--resume", ckpt, "--epochs", 3, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    whole = graphc("train", path, "--out", tmp_path / "w.npz", "--epochs", 3, cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    assert_close(params(ckpt), params(tmp_path / "w.npz"))


@needs_mpi
def test_a_checkpoint_another_run_holds_stops_every_rank_with_one_line(tmp_path):
    """Rank 0 alone takes the lock; its refusal reaches rank 1 (no hang), printed once."""
    ckpt = tmp_path / "c.npz"
    with locked(ckpt, "checkpoint"):
        proc = graphc("train", spec(tmp_path), "--out", ckpt, cwd=tmp_path, ranks=2,
                      timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("error:") == 1 and "in use by another graphc run" in proc.stderr


@needs_mpi
def test_a_step_that_goes_non_finite_stops_every_rank_with_one_line(tmp_path):
    """lr 1e30 overflows the first step on both ranks: one `error:` line, a rank's
    diagnosis, exit 1 on every rank (the guard reads the allreduced values, so every rank
    stops at the same step), and no checkpoint."""
    proc = graphc("train", spec(tmp_path, "{sgd: {lr: 1e30}}"), "--out", tmp_path / "c.npz",
                  cwd=tmp_path, ranks=2, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("error:") == 1, proc.stderr
    assert re.search(r"^error: rank [01] of 2: .*(non-finite|overflowed) .*epoch 1, batch 0",
                     proc.stderr), proc.stderr
    assert not (tmp_path / "c.npz").exists()


def rank_pid(tag: str, rank: int, deadline: float) -> int:
    """The pid of the process of `rank` whose environment carries GRAPHC_TEST_TAG=tag."""
    want = {f"GRAPHC_TEST_TAG={tag}".encode(), f"PMI_RANK={rank}".encode()}
    while time.monotonic() < deadline:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                env = set(Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
            except OSError:
                continue
            if want <= env and b"-m" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return int(pid)
        time.sleep(0.1)
    raise AssertionError(f"no rank {rank} process found")


def signal_rank_one(path: Path, ckpt: Path, signum: int, timeout: float, *args,
                    settle: float = 0.0) -> tuple:
    """Train `path` on 2 ranks into `ckpt` (endless epochs), send `signum` to rank 1 once the
    first checkpoint exists (and `settle` seconds more), wait up to `timeout` for the end:
    (the finished run, stdout, stderr, seconds from the signal to the end)."""
    tag = uuid.uuid4().hex
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-m", "graphc", "train", str(path), "--out",
           str(ckpt), "--epochs", "100000", *args]
    run = subprocess.Popen(cmd, cwd=path.parent, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True,
                           env=clean_env(GRAPHC_TEST_TAG=tag))
    try:
        deadline = time.monotonic() + 60
        victim = rank_pid(tag, 1, deadline)
        while not ckpt.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(settle)
        os.kill(victim, signum)
        sent = time.monotonic()
        out, err = run.communicate(timeout=timeout)
        return run, out, err, time.monotonic() - sent
    finally:
        if run.poll() is None:
            run.kill()


@needs_mpi
@pytest.mark.slow
def test_a_killed_rank_ends_the_run_and_the_last_checkpoint_resumes(tmp_path):
    path, ckpt = spec(tmp_path), tmp_path / "c.npz"
    run, out, err, ended = signal_rank_one(path, ckpt, signal.SIGKILL, 30, "--save-every", "1",
                                           settle=0.3)
    assert run.returncode != 0 and ended < 30
    said = out + err            # MPICH's mpiexec reports the dead rank on stdout
    assert "signal 9" in said.lower() or "killed by signal: 9" in said.lower(), said
    with np.load(ckpt) as f:
        epoch = int(f["__graphc__/epoch"])
    assert epoch >= 1
    resumed = graphc("train", path, "--resume", ckpt, "--epochs", epoch + 1, cwd=tmp_path,
                     ranks=2)
    assert resumed.returncode == 0, resumed.stderr
    assert f"epoch {epoch + 1:>4}/{epoch + 1}" in resumed.stdout


@needs_mpi
@pytest.mark.slow
def test_a_stop_signal_to_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    """SIGTERM to rank 1 alone: the ranks agree after each step, so both stop there, rank 0
    saves that step's position and prints the one line; exit 143."""
    path, ckpt = spec(tmp_path), tmp_path / "c.npz"
    run, _, err, _ = signal_rank_one(path, ckpt, signal.SIGTERM, 60)
    assert run.returncode == 143, err
    assert err.count("error:") == 1 and "(SIGTERM); checkpoint saved to" in err, err
    with np.load(ckpt) as f:
        epoch, step = int(f["__graphc__/epoch"]), int(f["__graphc__/step"])
    assert f"interrupted at {f'epoch {epoch + 1}, batch {step}' if step else f'the end of epoch {epoch}'}" in err


@needs_mpi
@pytest.mark.slow
def test_the_benchmark_prints_both_runs_and_the_allreduce(tmp_path):
    """Timings are never asserted: the smoke run checks the table's numbers come out."""
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_mpi.py"),
                           "--models", "tiny", "--epochs", "1", "--json"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=clean_env())
    assert proc.returncode == 0, proc.stderr
    row, = json.loads(proc.stdout)["rows"]
    assert row["ranks"] == 2 and row["grad_bytes"] == 4 * (2 * 100 + 100 + 100 * 3 + 3)
    assert row["samples_per_s_1"] > 0 and row["samples_per_s_n"] > 0
    assert row["allreduce_us"] > 0 and row["agree_us"] > 0
