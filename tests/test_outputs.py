"""What graphc writes (docs/cli.md, "Files graphc writes"): regular files only, atomically,
with graphc's own temp names, honouring the umask, checked before the work, one writer
per checkpoint.

Each case runs the CLI as a user does, in a temp folder holding the odd things a path can
name (a FIFO, dangling and looping symlinks, a folder, files that only look like temps).
The oracle is the folder afterwards: what must survive is byte for byte what it was.
"""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_cli import SPECS, graphc, load_npz, ok
from test_resume import ENV, start, wait_for

GRAD_SPEC = SPECS / "lecture_cs221_two_layer.yaml"     # d loss / d w = [1, 1] by hand
TRAIN_SPEC = """\
name: tiny
inputs:
  x: [batch, 2]
  y: {shape: [batch], dtype: int64}
params:
  W: {shape: [2, 3], init: {normal: {std: 0.01}}}
  b: [3]
nodes:
  scores: x @ W + b
  loss: softmax_cross_entropy(scores, y)
train:
  data: {dataset: blobs, samples: 60, features: 2, classes: 3, seed: 0}
  batch_size: 20
  epochs: EPOCHS
  optimizer: {sgd: {lr: 0.1}}
  seed: 0
"""


def tiny_spec(folder: Path, epochs: int = 1, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TRAIN_SPEC.replace("EPOCHS", str(epochs)))
    return path


def refused(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2, one `error:` line naming every fragment, no traceback, no 'internal error'."""
    report = f"exit {proc.returncode}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 2, report
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), report
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr, report
    assert all(f in lines[0] for f in fragments), report
    return lines[0]


# --- 1. only regular files are replaced ---------------------------------------------------

def odd_paths(folder: Path, suffix: str) -> dict:
    """name -> (what the error says), each a path graphc must not write over, named with
    the `suffix` of the format written (a name without it is refused before: outfiles)."""
    os.mkfifo(folder / f"fifo{suffix}")
    (folder / f"dangling{suffix}").symlink_to("nowhere")
    (folder / f"loop1{suffix}").symlink_to(f"loop2{suffix}")
    (folder / f"loop2{suffix}").symlink_to(f"loop1{suffix}")
    return {f"fifo{suffix}": "it is a FIFO", f"dangling{suffix}": "symlink to nothing",
            f"loop1{suffix}": "Too many levels of symbolic links"}


WRITERS = [("grad", "--out", "--out"), ("grad", "--dot", "--dot"), ("plan", "--dot", "--dot"),
           ("plan", "--memory", "--memory"), ("train", "--out", "--out")]   # + the name
SUFFIX = {"--out": ".npz", "--dot": ".dot", "--memory": ".svg"}     # each flag's format


@pytest.mark.parametrize("cmd,flag,what", WRITERS)
def test_a_fifo_or_a_bad_symlink_is_refused_and_left_as_it_was(tmp_path, cmd, flag, what):
    spec = tiny_spec(tmp_path) if cmd != "grad" else GRAD_SPEC
    suffix = SUFFIX[flag]
    for name, says in odd_paths(tmp_path, suffix).items():
        refused(graphc(cmd, spec, flag, name, cwd=tmp_path), f"cannot write {what} {name}: ",
                says)
    assert stat.S_ISFIFO(os.lstat(tmp_path / f"fifo{suffix}").st_mode)
    assert os.readlink(tmp_path / f"dangling{suffix}") == "nowhere"
    assert not (tmp_path / "nowhere").exists()
    assert os.readlink(tmp_path / f"loop1{suffix}") == f"loop2{suffix}"


def test_a_symlink_to_a_file_is_followed_and_stays_a_link(tmp_path):
    (tmp_path / "real.npz").write_bytes(b"old")
    (tmp_path / "link.npz").symlink_to("real.npz")
    ok(graphc("grad", GRAD_SPEC, "--out", "link.npz", cwd=tmp_path))
    assert os.readlink(tmp_path / "link.npz") == "real.npz"
    assert load_npz(tmp_path / "real.npz")["w"].tolist() == [1.0, 1.0]


def test_a_folder_given_as_plot_file_or_a_file_as_plot_folder_is_refused(tmp_path):
    spec = tiny_spec(tmp_path)
    (tmp_path / "file").write_text("keep")
    refused(graphc("train", spec, "--plot", "file/sub", cwd=tmp_path), "file is not a folder")
    (tmp_path / "plots").mkdir()
    os.mkfifo(tmp_path / "plots" / "history.csv")
    refused(graphc("train", spec, "--plot", "plots", cwd=tmp_path), "it is a FIFO")
    assert (tmp_path / "file").read_text() == "keep"
    assert not (tmp_path / "tiny.ckpt.npz").exists(), "checked before training, not after"


# --- 2. temp files: graphc's own names only -----------------------------------------------

def test_glob_characters_in_out_delete_nothing(tmp_path):
    spec = tiny_spec(tmp_path)
    (tmp_path / "g").mkdir()
    bystanders = {"g/notes.v1.tmp": "notes", "run1.npz.inflight.tmp": "other run",
                  "run.npz.x.tmp": "mine", ".run1.npz.graphc-1-0000000x.tmp": "not our scheme"}
    for name, text in bystanders.items():
        (tmp_path / name).write_text(text)
    ok(graphc("train", spec, "--out", "g/*.npz", cwd=tmp_path))
    ok(graphc("train", spec, "--out", "run[1].npz", cwd=tmp_path))
    assert {n: (tmp_path / n).read_text() for n in bystanders} == bystanders
    assert load_npz(tmp_path / "g" / "*.npz")["W"].shape == (2, 3)
    assert load_npz(tmp_path / "run[1].npz")["W"].shape == (2, 3)


def test_only_a_dead_writers_temp_files_are_removed(tmp_path):
    from graphc.outfiles import remove_stale_temps, temp_pattern
    target = tmp_path / "c.npz"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    mine = tmp_path / f".c.npz.graphc-{os.getpid()}-0123abcd.tmp"
    gone = tmp_path / f".c.npz.graphc-{dead}-0123abcd.tmp"
    mine.write_text("in flight")
    gone.write_text("left by a killed run")
    assert temp_pattern(target).fullmatch(gone.name)
    remove_stale_temps(target)
    assert mine.exists() and not gone.exists()


# --- 3. one writer per checkpoint ---------------------------------------------------------

def test_a_second_training_on_a_locked_checkpoint_names_the_holder(tmp_path):
    tiny_spec(tmp_path, epochs=100000)
    first = start(tmp_path, "--save-every", "1")
    try:
        wait_for(tmp_path / "ckpt.npz", first)
        before = (tmp_path / "ckpt.npz.lock").read_text()
        second = graphc("train", "spec.yaml", "--out", "ckpt.npz", "--epochs", "1",
                        cwd=tmp_path)
        (tmp_path / "link.npz").symlink_to("ckpt.npz")
        via_link = graphc("train", "spec.yaml", "--out", "link.npz", "--epochs", "1",
                          cwd=tmp_path)
    finally:
        first.kill()
        first.wait(timeout=30)
    assert f"pid {first.pid} " in before and "train spec.yaml" in before
    for proc in (second, via_link):
        refused(proc, "is in use by another graphc run", f"pid {first.pid} ", "started ")
    ok(graphc("train", "spec.yaml", "--out", "ckpt.npz", "--epochs", "1", cwd=tmp_path))
    assert not (tmp_path / "ckpt.npz.lock").exists(), "the lock file goes with its run"


# --- 7, 8. found before the work, not after it --------------------------------------------

@pytest.mark.parametrize("cmd,flag,what", WRITERS)
def test_a_missing_folder_is_a_user_error_found_first(tmp_path, cmd, flag, what):
    spec = tiny_spec(tmp_path) if cmd != "grad" else GRAD_SPEC
    out = f"no/such/out{SUFFIX[flag]}"
    proc = graphc(cmd, spec, flag, out, cwd=tmp_path)
    refused(proc, f"cannot write {what} {out}: there is no folder no/such",
            "mkdir -p")
    assert proc.stdout == "", "nothing ran before the check"


def test_a_name_too_long_for_the_file_system_is_found_before_training(tmp_path):
    spec = tiny_spec(tmp_path)
    proc = graphc("train", spec, "--out", "x" * 300 + ".npz", cwd=tmp_path)
    refused(proc, "cannot write --out", "name too long")
    assert "epoch" not in proc.stdout


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_folder_is_found_before_training(tmp_path):
    spec = tiny_spec(tmp_path)
    (tmp_path / "ro").mkdir(mode=0o555)
    proc = graphc("train", spec, "--out", "ro/c.npz", cwd=tmp_path)
    refused(proc, "cannot write checkpoint ro/c.npz", "Permission denied")
    assert "epoch" not in proc.stdout


def test_a_folder_that_refuses_new_files_is_found_by_the_probe(tmp_path, monkeypatch):
    """What a read-only mount does (root writes through 0555, so it is simulated here)."""
    import errno
    from graphc import outfiles
    from graphc.errors import SpecError

    def read_only(path, flags, mode=0o777):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
    monkeypatch.setattr(outfiles.os, "open", read_only)
    with pytest.raises(SpecError, match=f"cannot write checkpoint {tmp_path / 'c.npz'}: "
                                        f"folder {tmp_path}: Read-only file system"):
        outfiles.destination(tmp_path / "c.npz", "checkpoint")


# --- 8. the umask -------------------------------------------------------------------------

@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640)])
def test_new_files_honour_the_umask(tmp_path, umask, mode):
    spec = tiny_spec(tmp_path)
    for args in (["train", spec, "--out", "c.npz"], ["grad", GRAD_SPEC, "--out", "g.npz"]):
        ok(subprocess.run([sys.executable, "-m", "graphc", *map(str, args)], cwd=tmp_path,
                          capture_output=True, text=True, env=ENV,
                          preexec_fn=lambda: os.umask(umask)))
    assert {p: stat.S_IMODE(os.stat(tmp_path / p).st_mode) for p in ("c.npz", "g.npz")} \
        == {"c.npz": mode, "g.npz": mode}


def test_a_replaced_file_keeps_its_mode(tmp_path):
    (tmp_path / "g.npz").write_bytes(b"old")
    os.chmod(tmp_path / "g.npz", 0o604)
    ok(graphc("grad", GRAD_SPEC, "--out", "g.npz", cwd=tmp_path))
    assert stat.S_IMODE(os.stat(tmp_path / "g.npz").st_mode) == 0o604
    assert load_npz(tmp_path / "g.npz")["w"].tolist() == [1.0, 1.0]


# --- issue 9: a copied spec with the same name: ---------------------------------------------

def test_a_copied_spec_does_not_replace_the_originals_default_checkpoint(tmp_path):
    tiny_spec(tmp_path, name="a/spec.yaml")
    tiny_spec(tmp_path, epochs=2, name="b/spec.yaml")
    ok(graphc("train", "a/spec.yaml", cwd=tmp_path))
    original = (tmp_path / "tiny.ckpt.npz").read_bytes()
    refused(graphc("train", "b/spec.yaml", cwd=tmp_path), "tiny.ckpt.npz was saved by "
            "training another spec file", str(tmp_path / "a" / "spec.yaml"), "--force")
    assert (tmp_path / "tiny.ckpt.npz").read_bytes() == original
    ok(graphc("train", "a/spec.yaml", cwd=tmp_path))       # its own spec file: replaced
    ok(graphc("train", "b/spec.yaml", "--force", cwd=tmp_path))
    saved = load_npz(tmp_path / "tiny.ckpt.npz")
    assert int(saved["__graphc__/epoch"]) == 2
    assert np.asarray(saved["__graphc__/spec_file"]).tobytes().decode() \
        == str((tmp_path / "b" / "spec.yaml").resolve())


def test_render_checks_the_svg_first_and_writes_it_like_every_output(tmp_path):
    """A stand-in for Graphviz's `dot` on PATH (it prints its arguments as the SVG)."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "dot").write_text('#!/bin/sh\necho "<svg>$*</svg>"\n')
    os.chmod(tmp_path / "bin" / "dot", 0o755)
    env = {**ENV, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{ENV['PATH']}"}

    def render(name):
        return subprocess.run([sys.executable, "-m", "graphc", "grad", str(GRAD_SPEC), "--dot",
                               name, "--render"], cwd=tmp_path, capture_output=True,
                              text=True, env=env)
    os.mkfifo(tmp_path / "f.svg")
    refused(render("f.dot"), "cannot write --render f.svg: it is a FIFO")
    assert not (tmp_path / "f.dot").exists(), "checked before the DOT was written"
    ok(render("g.dot"))
    assert (tmp_path / "g.svg").read_text() == "<svg>-Tsvg g.dot</svg>\n"


def test_arrays_named_like_savez_parameters_are_written(tmp_path):
    """np.savez(f, **arrays) took a param named `file` for its own argument (an internal
    error) and one named `allow_pickle` as the flag (a checkpoint without it, exit 0)."""
    (tmp_path / "s.yaml").write_text(
        "name: names\ninputs: {x: [batch, 2], y: [batch, 1]}\n"
        "params: {file: [2, 1], allow_pickle: [1]}\n"
        "nodes:\n  s: x @ file + allow_pickle\n  loss: mse(s, y)\noutputs: [s]\n"
        "train:\n  data: {dataset: linear, samples: 64, features: 2, seed: 0}\n  epochs: 1\n")
    done = graphc("train", "s.yaml", "--out", "c.npz", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with np.load(tmp_path / "c.npz") as z:
        assert {"file", "allow_pickle"} <= set(z.files)
        assert z["file"].shape == (2, 1) and z["allow_pickle"].shape == (1,)
    done = graphc("grad", "s.yaml", "--params", "c.npz", "--out", "g.npz", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with np.load(tmp_path / "g.npz") as z:
        assert {"file", "allow_pickle"} <= set(z.files)
