"""Faults while training: determinism, bit-exact resume, Ctrl-C, --init-from, SIGKILL.

The oracle throughout is an uninterrupted run: a run that was stopped (at an
epoch end, mid-epoch, by Ctrl-C or by SIGKILL at a random instant) and resumed
must end with exactly the same bytes in every array of its checkpoint.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import graphc.train as T
from graphc.errors import SpecError
from graphc.model import load_model
from graphc.checkpoint import init_from
from graphc.train import RESERVED, Interrupted, train
from graphc.trainconfig import parse_train

SPEC = """\
name: resumable
inputs:
  x: [batch, 2]
  y: {shape: [batch], dtype: int64}
params:
  W1: {shape: [2, 16], init: he_normal}
  b1: [16]
  W2: {shape: [16, 3], init: {normal: {std: 0.01}}}
  b2: [3]
nodes:
  h: relu(x @ W1 + b1)
  scores: h @ W2 + b2
  loss: softmax_cross_entropy(scores, y)
train:
  data: {dataset: spiral, samples: 90, validation: 0.2, normalize: standard}
  batch_size: 16
  epochs: 12
  optimizer: OPTIMIZER
  schedule: {step: {every: 3, gamma: 0.7}, warmup: {epochs: 2}}
  clip_grad_norm: 1.0
  metrics: {accuracy: [scores, y]}
  EARLY
"""
REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}    # this checkout, whatever is installed
OPTIMIZERS = ["{sgd: {lr: 0.3, momentum: 0.9, nesterov: true, weight_decay: 0.001}}",
              "{rmsprop: {lr: 0.01, momentum: 0.5, centered: true}}",
              "{adagrad: {lr: 0.1}}",
              "{adamw: {lr: 0.02}}"]


def write_spec(tmp_path, optimizer=OPTIMIZERS[3], early="seed: 0", name="spec.yaml"):
    path = tmp_path / name
    path.write_text(SPEC.replace("OPTIMIZER", optimizer).replace("EARLY", early))
    return path


def run(spec, out, epochs=None, resume=None, seed=None):
    model = load_model(spec, seed)
    return train(model, parse_train(model, epochs=epochs, seed=seed), out=out, resume=resume)


def arrays(path) -> dict:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def assert_identical(a, b):
    a, b = arrays(a), arrays(b)
    assert sorted(a) == sorted(b)
    differ = [k for k in a if a[k].tobytes() != b[k].tobytes() or a[k].dtype != b[k].dtype]
    assert not differ, f"arrays differ: {differ}"


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    spec = write_spec(tmp_path)
    run(spec, tmp_path / "a.npz", epochs=3)
    run(spec, tmp_path / "b.npz", epochs=3)
    assert_identical(tmp_path / "a.npz", tmp_path / "b.npz")
    run(spec, tmp_path / "c.npz", epochs=3, seed=1)
    assert arrays(tmp_path / "a.npz")["W1"].tobytes() != arrays(tmp_path / "c.npz")["W1"].tobytes()


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_n_epochs_then_resume_equals_uninterrupted(tmp_path, optimizer):
    spec = write_spec(tmp_path, optimizer)
    full = run(spec, tmp_path / "full.npz")
    run(spec, tmp_path / "part.npz", epochs=5)
    resumed = run(spec, tmp_path / "part.npz", resume=tmp_path / "part.npz")
    assert_identical(tmp_path / "full.npz", tmp_path / "part.npz")
    assert [e.epoch for e in resumed.history] == list(range(6, 13))
    assert [e.loss for e in resumed.history] == [e.loss for e in full.history[5:]]


def test_resume_across_early_stopping(tmp_path):
    early = "early_stopping: {metric: loss, patience: 2, min_delta: 0.05}"
    spec = write_spec(tmp_path, early=early)
    full = run(spec, tmp_path / "full.npz", epochs=40)
    assert full.epochs < 40 and full.notes, "the spec should stop early"
    for stop in (full.epochs - 2, full.epochs - 1):
        run(spec, tmp_path / f"p{stop}.npz", epochs=stop)
        run(spec, tmp_path / f"p{stop}.npz", epochs=40, resume=tmp_path / f"p{stop}.npz")
        assert_identical(tmp_path / "full.npz", tmp_path / f"p{stop}.npz")


@contextmanager
def interrupt_after(polls: int):
    """Stand-in for Ctrl-C: the trainer's poll (after every step and epoch) returns SIGINT
    from its `polls`-th call on."""
    calls = []

    def poll():
        calls.append(1)
        return signal.SIGINT if len(calls) >= polls else 0
    yield poll


@pytest.mark.parametrize("polls", [3, 12, 14])    # mid-epoch 1, end of epoch 2, mid-epoch 3
def test_interrupt_saves_and_resume_is_exact(tmp_path, monkeypatch, polls):
    spec = write_spec(tmp_path)
    run(spec, tmp_path / "full.npz")
    monkeypatch.setattr(T, "deferred_stop", lambda: interrupt_after(polls))
    with pytest.raises(Interrupted) as err:
        run(spec, tmp_path / "cut.npz")
    assert err.value.exit_code == 130 and "--resume" in str(err.value)
    cut = arrays(tmp_path / "cut.npz")
    steps = int(cut[RESERVED + "epoch"]) * 5 + int(cut[RESERVED + "step"])   # 72 / 16 -> 5
    assert int(cut[RESERVED + "global_step"]) == steps == polls - int(cut[RESERVED + "epoch"])
    monkeypatch.undo()
    run(spec, tmp_path / "cut.npz", resume=tmp_path / "cut.npz")
    assert_identical(tmp_path / "full.npz", tmp_path / "cut.npz")


def test_resume_refuses_a_changed_spec_with_a_diff(tmp_path):
    spec = write_spec(tmp_path)
    run(spec, tmp_path / "c.npz", epochs=2)
    spec.write_text(spec.read_text().replace("lr: 0.02", "lr: 0.05"))
    with pytest.raises(SpecError) as err:
        run(spec, tmp_path / "d.npz", resume=tmp_path / "c.npz")
    text = str(err.value)
    assert "the spec changed" in text and "--init-from" in text
    assert "-  optimizer: {adamw: {lr: 0.02}}" in text
    assert "+  optimizer: {adamw: {lr: 0.05}}" in text


def test_resume_refuses_changed_settings(tmp_path):
    spec = write_spec(tmp_path)
    run(spec, tmp_path / "c.npz", epochs=2)
    model = load_model(spec)
    with pytest.raises(SpecError, match="batch_size: 16 in the checkpoint, 8 now"):
        train(model, parse_train(model, batch_size=8), out=tmp_path / "d.npz",
              resume=tmp_path / "c.npz")
    np.savez(tmp_path / "plain.npz", **{k: v for k, v in arrays(tmp_path / "c.npz").items()
                                        if not k.startswith(RESERVED)})
    with pytest.raises(SpecError, match="not a graphc training checkpoint"):
        run(spec, tmp_path / "d.npz", resume=tmp_path / "plain.npz")


def test_init_from_loads_matching_params_and_names_mismatches(tmp_path):
    run(write_spec(tmp_path), tmp_path / "c.npz", epochs=2)
    four = (tmp_path / "spec.yaml").read_text().replace("[16, 3]", "[16, 4]") \
        .replace("[3]", "[4]").replace("spiral, ", "spiral, classes: 4, ")
    (tmp_path / "four.yaml").write_text(four)
    model = load_model(tmp_path / "four.yaml")
    notes = init_from(tmp_path / "c.npz", model)
    saved = arrays(tmp_path / "c.npz")
    assert np.array_equal(model.store["W1"], saved["W1"])
    assert np.array_equal(model.store["b1"], saved["b1"])
    assert len(notes) == 2 and "'W2' has shape [16, 3]" in notes[0] and "[16, 4]" in notes[0]
    proc = subprocess.run([sys.executable, "-m", "graphc", "train", "four.yaml", "--epochs", "1",
                           "--init-from", "c.npz", "--out", "e.npz"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert "warning: --init-from: 'W2' has shape [16, 3]" in proc.stderr
    np.savez(tmp_path / "other.npz", V=np.zeros(3))
    with pytest.raises(SpecError, match="no parameter of the spec matches"):
        init_from(tmp_path / "other.npz", model)


def test_init_from_loads_running_statistics_as_load_state_dict_loads_buffers(tmp_path):
    # A run started --init-from a checkpoint with batch_norm state, against one started from
    # the same params without it (running_mean 0, running_var 1): same data, masks and batch
    # statistics, so each step's update r = 0.9 r + 0.1 batch differs only in where r began,
    # and after k = 8 steps (240 training rows, batches of 32) by 0.9^8 (r0 - init).
    spec = REPO / "specs" / "spiral_bn_dropout.yaml"

    def train_cli(*args):
        proc = subprocess.run([sys.executable, "-m", "graphc", "train", str(spec), *map(str, args)],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120, env=ENV)
        assert proc.returncode == 0, proc.stderr
        return proc

    train_cli("--epochs", "2", "--out", "a.npz")
    saved = arrays(tmp_path / "a.npz")
    np.savez(tmp_path / "params.npz", **{k: saved[k] for k in ("W1", "gamma", "beta", "W2",
                                                                "b2")})
    model = load_model(spec)
    assert init_from(tmp_path / "a.npz", model) == []
    assert np.array_equal(model.store["running_var"], saved["running_var"])
    train_cli("--epochs", "1", "--init-from", "a.npz", "--out", "with.npz")
    proc = train_cli("--epochs", "1", "--init-from", "params.npz", "--out", "without.npz")
    assert "'running_mean' is not in params.npz; it keeps its initializer" in proc.stderr
    with_state, without = arrays(tmp_path / "with.npz"), arrays(tmp_path / "without.npz")
    for name, init in (("running_mean", 0.0), ("running_var", 1.0)):
        moved = with_state[name].astype(np.float64) - without[name]
        np.testing.assert_allclose(moved, 0.9 ** 8 * (saved[name] - init), rtol=1e-4,
                                   atol=1e-6)


def test_resume_past_the_last_epoch_says_nothing_is_left(tmp_path):
    spec = write_spec(tmp_path)
    run(spec, tmp_path / "c.npz", epochs=3)
    before = arrays(tmp_path / "c.npz")
    result = run(spec, tmp_path / "c.npz", epochs=2, resume=tmp_path / "c.npz")
    assert result.history == [] and result.epochs == 3
    assert result.notes == [f"{tmp_path / 'c.npz'} is already at epoch 3 of 2: nothing left "
                            "to train (raise --epochs to train longer)"]
    assert arrays(tmp_path / "c.npz")["W1"].tobytes() == before["W1"].tobytes()


def bad_npz_files(folder) -> dict:
    """Files np.load cannot give named arrays from, each with the message graphc gives."""
    (folder / "empty.npz").write_bytes(b"")
    (folder / "notzip.npz").write_bytes(b"PK\x03\x04 not a zip archive")
    np.save(folder / "one.npy", np.zeros(3))
    return {"empty.npz": "cannot read checkpoint .*empty.npz: it is neither an .npz archive nor an .npy array",
            "notzip.npz": "cannot read checkpoint .*notzip.npz: it starts as an .npz archive "
                          "but is cut short or damaged",
            "one.npy": "one.npy holds one array, not an .npz archive"}


def test_unreadable_checkpoints_are_user_errors(tmp_path):
    model = load_model(write_spec(tmp_path))
    for name, message in bad_npz_files(tmp_path).items():
        with pytest.raises(SpecError, match=message):
            init_from(tmp_path / name, model)


@pytest.mark.parametrize("flag", ["--params", "--inputs"])
def test_grad_refuses_an_empty_npz_with_exit_2(tmp_path, flag):
    """An empty file raises EOFError inside np.load, which click would take for Ctrl-D."""
    spec = write_spec(tmp_path)
    (tmp_path / "empty.npz").write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "graphc", "grad", spec.name, flag, "empty.npz"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60, env=ENV)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: cannot read ") and "it is neither an .npz archive" in proc.stderr


# --- real signals ------------------------------------------------------------------------------

KILL_SPEC = SPEC.replace("samples: 90", "samples: 240").replace("batch_size: 16", "batch_size: 4")


def as_from_a_terminal() -> None:
    """A child's stop signals as a terminal gives them: the suite itself may run under
    nohup or as a background job, whose ignored SIGINT/SIGHUP a child would inherit."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


def start(tmp_path, *flags, **popen):
    popen.setdefault("preexec_fn", as_from_a_terminal)
    return subprocess.Popen([sys.executable, "-m", "graphc", "train", "spec.yaml", "--out",
                             "ckpt.npz", *flags], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=ENV, **popen)


def write_long_spec(tmp_path):
    """A run far longer than any test waits: a signal lands while it trains."""
    (tmp_path / "spec.yaml").write_text(KILL_SPEC.replace("OPTIMIZER", OPTIMIZERS[0])
                                        .replace("epochs: 12", "epochs: 20000")
                                        .replace("EARLY", "seed: 0"))


def wait_for(path, proc, limit=30.0):
    end = time.monotonic() + limit
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < end, "no checkpoint appeared"
        time.sleep(0.02)


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143),
                                         (signal.SIGHUP, 129)], ids=["INT", "TERM", "HUP"])
def test_a_stop_signal_saves_exits_128_plus_it_and_resumes_exactly(tmp_path, signum, code):
    """Ctrl-C, `kill` (SIGTERM) and a closed terminal (SIGHUP) all save and say how to resume."""
    write_long_spec(tmp_path)
    # --save-every 1: the first checkpoint appears after epoch 1, long before the end, so
    # the signal lands while training runs however fast a step is
    proc = start(tmp_path, "--save-every", "1")
    wait_for(tmp_path / "ckpt.npz", proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "interrupted at" in err and f"({signal.Signals(signum).name}); checkpoint saved " \
        "to ckpt.npz; continue with --resume ckpt.npz" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    cut = arrays(tmp_path / "ckpt.npz")
    epochs = int(cut[RESERVED + "epoch"]) + 1
    spec = tmp_path / "spec.yaml"
    run(spec, tmp_path / "ckpt.npz", epochs=epochs, resume=tmp_path / "ckpt.npz")
    run(spec, tmp_path / "full.npz", epochs=epochs)
    assert_identical(tmp_path / "full.npz", tmp_path / "ckpt.npz")


def test_under_nohup_sighup_is_still_ignored(tmp_path):
    write_long_spec(tmp_path)
    proc = start(tmp_path, "--save-every", "1",
                 preexec_fn=lambda: (as_from_a_terminal(),                        # nohup
                                     signal.signal(signal.SIGHUP, signal.SIG_IGN)))
    wait_for(tmp_path / "ckpt.npz", proc)
    proc.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    running = proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert running, err
    assert proc.returncode == 143 and "(SIGTERM)" in err, err


def catches(pid: int, signum: int) -> bool:
    """Linux: whether process `pid` has a handler for `signum` (SigCgt in /proc/PID/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith("SigCgt:")), 16)
    return bool(mask >> (signum - 1) & 1)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's /proc")
def test_sigterm_outside_training_exits_143_with_one_line(tmp_path):
    write_long_spec(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "graphc", "time", "spec.yaml", "--steps",
                             "100000000"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=ENV,
                            preexec_fn=as_from_a_terminal)
    end = time.monotonic() + 30
    while not catches(proc.pid, signal.SIGTERM) and time.monotonic() < end:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.strip() == "error: interrupted (SIGTERM)", err


@pytest.mark.slow
def test_sigkill_at_random_moments_leaves_a_loadable_consistent_checkpoint(tmp_path):
    """--save-every 1 saves at every epoch end, so many kills land during a write."""
    text = KILL_SPEC.replace("OPTIMIZER", OPTIMIZERS[3]).replace("EARLY", "seed: 0")
    (tmp_path / "spec.yaml").write_text(text.replace("epochs: 12", "epochs: 300"))
    spec, ckpt = tmp_path / "spec.yaml", tmp_path / "ckpt.npz"
    rng = random.Random(20240605)
    positions, mid_write = [], 0
    for _ in range(3):
        ckpt.unlink(missing_ok=True)
        proc = start(tmp_path, "--save-every", "1")
        wait_for(ckpt, proc)
        time.sleep(rng.uniform(0.0, 0.8))
        proc.kill()
        proc.wait(timeout=30)
        mid_write += bool(list(tmp_path.glob(".ckpt.npz.graphc-*.tmp")))   # killed while writing
        saved = arrays(ckpt)                          # loads, without pickle, every time
        assert bytes(saved[RESERVED + "spec"]).decode() == text.replace("epochs: 12",
                                                                         "epochs: 300")
        assert all(np.all(np.isfinite(saved[p])) for p in ("W1", "b1", "W2", "b2"))
        epoch = int(saved[RESERVED + "epoch"])
        positions.append(epoch)
        run(spec, ckpt, epochs=epoch + 2, resume=ckpt)
        run(spec, tmp_path / "full.npz", epochs=epoch + 2)
        assert_identical(tmp_path / "full.npz", ckpt)
        assert not list(tmp_path.glob(".ckpt.npz.graphc-*.tmp")), \
            "the resume removes a dead temp file"
    assert all(p >= 1 for p in positions), (positions, mid_write)
