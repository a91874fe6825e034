"""The second catalog (tests/bad_specs/files_and_flags/catalog.yaml): bad files and flags,
not specs, run as a user runs them.

Each row is one `python -m graphc ARGS...` in a subprocess, from that folder. The user
must get the row's exit code (2: bad input), exactly one `error:` line (indented context
lines may follow), no traceback and never "internal error": the message names the flag,
or the file and the array or key, and what was expected. The files that cannot be text
(arrays, checkpoints, forged headers, oversized specs) are made here.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from bad_input_rows import assert_one_located_error, run_rows

from graphc.spec import MAX_SPEC_BYTES
from graphc.yamlload import MAX_VALUES

CATALOG = Path(__file__).parent / "bad_specs" / "files_and_flags"
ROWS = yaml.safe_load((CATALOG / "catalog.yaml").read_text())
R = "__graphc__/"


def row_id(row: dict) -> str:
    return "-".join(str(a) for a in row["args"])


def forged_npy(f, shape: tuple) -> None:
    """A .npy header claiming `shape` float32, with no data after it."""
    np.lib.format.write_array_header_1_0(
        f, {"descr": "<f4", "fortran_order": False, "shape": shape})


def generate_inputs(folder: Path) -> None:
    """--inputs archives for fed.yaml (x: [batch, 2], c: [2] with a value)."""
    x = np.ones((4, 2))
    np.savez(folder / "complex.npz", x=x * (1 + 2j))
    np.savez(folder / "text.npz", x=np.array([["a", "b"]] * 4))
    np.savez(folder / "wrong_shape.npz", x=x, c=np.ones(3))
    np.savez(folder / "text_value.npz", x=x, c=np.array(["a", "b"]))
    np.savez(folder / "out_of_range.npz", x=x * 1e300)
    np.savez(folder / "zero_samples.npz", x=np.ones((0, 2)))
    np.savez(folder / "not_an_input.npz", x=x, z=x)
    with zipfile.ZipFile(folder / "forged.npz", "w") as z, z.open("x.npy", "w") as f:
        forged_npy(f, (200_000_000_000, 2))            # 1.5 TiB claimed in 236 bytes


def generate_data(folder: Path) -> None:
    """Data files too large for the memory limit, by their headers."""
    with open(folder / "huge.npy", "wb") as f:
        forged_npy(f, (200_000_000_000, 2))
    np.save(folder / "labels.npy", np.zeros(4, np.int64))
    n = 100_000                                        # 2.4 MB of zeros, a few KB zipped
    np.savez_compressed(folder / "bomb.npz", x=np.zeros((n, 2)), y=np.zeros(n, np.int64))
    (folder / "rows.csv").write_text(     # 10 + 2500 * 31 = 77,510 bytes; 32 per byte
        "a,b,label\n" + "0.5,1.0,0\n0.25,0.5,1\n1.0,2.0,2\n" * 2500)


def generate_specs(folder: Path) -> None:
    """Specs too large to parse: over the byte cap, and over the value cap."""
    (folder / "big_spec.yaml").write_text("# " + "x" * MAX_SPEC_BYTES + "\n")
    (folder / "many_values.yaml").write_text(    # one flow list, 3 bytes a value; a word
        "inputs:\n  x: [" + "a, " * MAX_VALUES + "]\n")    # needs no number/bool resolver


def damaged(folder: Path, name: str, change) -> None:
    """A copy of good.ckpt.npz with `change`: {key: array} to set, or a key to delete."""
    arrays = dict(np.load(folder / "good.ckpt.npz"))
    if isinstance(change, str):
        del arrays[change]
    else:
        arrays.update(change)
    np.savez(folder / name, **arrays)


def generate_checkpoints(folder: Path) -> None:
    """A checkpoint that good.yaml wrote, and hand-edited copies of it."""
    r = subprocess.run([sys.executable, "-m", "graphc", "train", "good.yaml", "--out",
                        "good.ckpt.npz"], cwd=folder, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    damaged(folder, "text_param.ckpt.npz", {"W": np.array([["a"] * 3] * 2)})
    damaged(folder, "huge_param.ckpt.npz", {"W": np.full((2, 3), 1e300)})
    damaged(folder, "short_rng.ckpt.npz", {R + "rng": np.zeros(3, np.uint64)})
    damaged(folder, "no_loss_sum.ckpt.npz", R + "loss_sum")
    damaged(folder, "bad_config.ckpt.npz", {R + "config": np.frombuffer(b"{bad", np.uint8)})
    damaged(folder, "no_std.ckpt.npz", R + "stats/x/std")
    damaged(folder, "state_shape.ckpt.npz", {R + "state/W.m": np.zeros(7)})
    damaged(folder, "early_shape.ckpt.npz", {R + "early": np.zeros(2)})
    damaged(folder, "negative_epoch.ckpt.npz", {R + "epoch": np.asarray(-1, np.int64)})
    damaged(folder, "negative_adam_step.ckpt.npz", {R + "state/W.step": np.float32(-1)})
    damaged(folder, "forged.ckpt.npz", {})
    with zipfile.ZipFile(folder / "forged.ckpt.npz", "a") as z, z.open("junk.npy", "w") as f:
        forged_npy(f, (200_000_000_000, 2))


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("catalog") / "files_and_flags"
    shutil.copytree(CATALOG, folder)
    for generate in (generate_inputs, generate_data, generate_specs, generate_checkpoints):
        generate(folder)
    return folder


def run_graphc(folder: Path, row: dict) -> subprocess.CompletedProcess:
    """One row's run; a run that does not end (a spec read from /dev/zero) fails its row."""
    env = {k: v for k, v in os.environ.items() if k not in ("GRAPHC_DEBUG", "GRAPHC_MAX_MEMORY")}
    args = [sys.executable, "-m", "graphc", *map(str, row["args"])]
    try:
        return subprocess.run(args, cwd=folder, capture_output=True, text=True, timeout=60,
                              env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(args, -9, "", "still running after 60 s\n")


@pytest.fixture(scope="module")
def results(catalog_dir) -> dict:
    return run_rows(ROWS, lambda row: run_graphc(catalog_dir, row), row_id)


@pytest.mark.slow
@pytest.mark.xdist_group("files_and_flags_catalog")   # one worker runs the shared catalog, once
@pytest.mark.parametrize("row", ROWS, ids=row_id)
def test_a_bad_file_or_flag_gives_one_located_error(row, results):
    assert_one_located_error(results[row_id(row)], row, "error: " + row.get("at", ""))


def test_the_catalog_covers_every_case_file():
    used = {str(a) for row in ROWS for a in row["args"]}
    files = {p.name for p in CATALOG.iterdir()} - {"catalog.yaml"}
    assert files - used - {"good.yaml"} == set(), "a case file no row runs"
    assert len({row_id(row) for row in ROWS}) == len(ROWS), "two rows run the same command"
    outs = [row["args"][row["args"].index("--out") + 1] for row in ROWS if "--out" in row["args"]]
    assert len(set(outs)) == len(outs), "rows run side by side: one --out each (the lock)"
    for row in ROWS:
        assert {"args", "expect", "exit"} <= set(row), row


@pytest.mark.slow
@pytest.mark.xdist_group("files_and_flags_catalog")
def test_no_failed_run_wrote_a_checkpoint(results, catalog_dir):
    assert not (catalog_dir / "out.ckpt.npz").exists()
