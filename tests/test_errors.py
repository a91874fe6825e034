"""The catalog of malformed specs and data (tests/bad_specs/catalog.yaml), run as a user runs it.

Each row is one `python -m graphc CMD FILE` in a subprocess. The user must get
exit 2, exactly one `error:` line on stderr (indented context lines may follow),
no traceback, and a message that names the file, the line (and column), the
node, and what was found or expected.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml

from graphc.errors import SpecError, did_you_mean, set_memory_limit
from graphc.spec import load_spec

CATALOG = Path(__file__).parent / "bad_specs"
ROWS = yaml.safe_load((CATALOG / "catalog.yaml").read_text())
GENERATED = ("non_utf8.yaml", "missing_key.npz", "three_features.npz", "pickled.npz")
TRAIN_ARGS = ("--epochs", "1", "--out", "out.ckpt.npz")


def row_id(row: dict) -> str:
    return f"{row.get('cmd', 'check')}-{row['file']}"


def generate_binaries(folder: Path) -> None:
    """The cases that cannot be YAML text: bytes that are not UTF-8, and .npz data files."""
    (folder / "non_utf8.yaml").write_bytes(
        b"inputs:\n  x: [2]\nnodes:\n  loss: sum(x)  # caf\xe9\n")
    np.savez(folder / "missing_key.npz", x=np.zeros((4, 2)), labels=np.zeros(4, np.int64))
    np.savez(folder / "three_features.npz", x=np.zeros((4, 3)), y=np.zeros(4, np.int64))
    np.savez(folder / "pickled.npz", x=np.array([{"a": 1}] * 4, dtype=object),
             y=np.zeros(4, np.int64))              # loading it would need pickle: refused


def run_graphc(folder: Path, row: dict) -> subprocess.CompletedProcess:
    cmd = row.get("cmd", "check")
    extra = (TRAIN_ARGS if cmd == "train" else ()) + tuple(row.get("args", ()))
    env = {k: v for k, v in os.environ.items() if k != "GRAPHC_DEBUG"}
    return subprocess.run([sys.executable, "-m", "graphc", cmd, row["file"], *extra],
                          cwd=folder, capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("catalog") / "bad_specs"
    shutil.copytree(CATALOG, folder)
    generate_binaries(folder)
    return folder


@pytest.fixture(scope="module")
def results(catalog_dir) -> dict:
    """Every row's run; the subprocesses are independent, so they run side by side."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        done = pool.map(lambda row: run_graphc(catalog_dir, row), ROWS)
        return {row_id(row): r for row, r in zip(ROWS, done)}


@pytest.mark.parametrize("row", ROWS, ids=row_id)
def test_bad_input_gives_one_located_error(row, results):
    r = results[row_id(row)]
    report = f"exit {r.returncode}\nstderr:\n{r.stderr}\nstdout:\n{r.stdout[-2000:]}"
    assert r.returncode == row["exit"], report
    assert "Traceback" not in r.stderr + r.stdout, report
    lines = r.stderr.splitlines()
    assert lines and lines[0].startswith("error: "), report
    assert all(line.startswith("  ") for line in lines[1:]), report
    head = lines[0]
    assert head.startswith(f"error: {row['file']}:{row['at']}:"), report
    if "node" in row:
        assert f"node '{row['node']}': " in head, report
    assert row["expect"] in head, report


def test_the_catalog_covers_every_file_and_enough_cases():
    rows = {row["file"] for row in ROWS}
    files = {p.name for p in CATALOG.glob("*.yaml")} - {"catalog.yaml"}
    assert files - rows == set(), "a case file with no row in catalog.yaml"
    assert rows - files - set(GENERATED) == {"missing_file.yaml"}
    assert not (CATALOG / "missing_file.yaml").exists()
    assert len(ROWS) >= 40
    assert len({row_id(row) for row in ROWS}) == len(ROWS), "two rows run the same command"
    for row in ROWS:
        assert {"file", "at", "expect", "exit"} <= set(row), row


def test_a_python_tag_is_never_run(results, catalog_dir):
    assert results["check-python_object_tag.yaml"].returncode == 2
    assert not (catalog_dir / "pwned").exists()


def test_failed_training_leaves_no_checkpoint(results, catalog_dir):
    assert not (catalog_dir / "out.ckpt.npz").exists()


# --- the loader's rules, one at a time ---------------------------------------------------

def spec(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_12_booleans_keep_on_and_no_as_names(tmp_path):
    s = load_spec(spec(tmp_path, "inputs:\n  on: 1\n  no: 2\nnodes:\n  loss: on * no\n"))
    assert set(s.leaves) == {"on", "no"}


def test_a_date_is_text_not_a_datetime(tmp_path):
    s = load_spec(spec(tmp_path, "name: 2024-01-31\ninputs:\n  x: 1\nnodes:\n  loss: x\n"))
    assert s.name == "2024-01-31"


def test_aliases_within_the_bound_still_work(tmp_path):
    text = "inputs:\n  x: {value: &v [1, 2]}\n  y: {value: *v}\nnodes:\n  loss: sum(x * y)\n"
    s = load_spec(spec(tmp_path, text))
    assert s.leaves["y"].value.tolist() == [1.0, 2.0]


def test_memory_limit_comes_from_the_environment(tmp_path, monkeypatch):
    path = spec(tmp_path, "params:\n  W: [1000, 1000]\nnodes:\n  loss: sum(W)\n")
    set_memory_limit(None)                        # as a fresh process starts
    load_spec(path)                               # 4 MB: under the default limit
    monkeypatch.setenv("GRAPHC_MAX_MEMORY", "1M")
    with pytest.raises(SpecError, match=r"needs 4000000 bytes .* limit of 1\.0 MiB"):
        load_spec(path)


@pytest.mark.parametrize("flag, fragment", [
    ("1M", "parameter 'W' of shape [1000, 1000] (float32) needs 4000000 bytes (3.8 MiB), "
           "above the memory limit of 1.0 MiB"),
    ("lots", "--max-memory is 'lots', expected a size such as 512M or 4G"),
])
def test_max_memory_flag(tmp_path, flag, fragment):
    path = spec(tmp_path, "params:\n  W: [1000, 1000]\nnodes:\n  loss: sum(W)\n")
    r = subprocess.run([sys.executable, "-m", "graphc", "--max-memory", flag, "check",
                        str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), r.stderr
    assert fragment in r.stderr


def test_an_expression_is_never_evaluated(tmp_path):
    path = spec(tmp_path, f"inputs:\n  x: 1\nnodes:\n  loss: open('{tmp_path}/made', 'w')\n")
    with pytest.raises(SpecError, match="unknown op 'open'"):
        load_spec(path)
    assert not (tmp_path / "made").exists()


def test_did_you_mean_picks_the_closest_choice():
    assert did_you_mean("rleu", ["relu", "tanh", "exp"]) == "did you mean 'relu'?"
    assert did_you_mean("zzzz", ["relu", "tanh"]) is None
