"""What the two bad-input catalogs (test_errors.py: specs; test_bad_files_and_flags.py:
files and flags) share: running every row side by side, and the one-located-error check."""
from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Callable


def run_rows(rows: list, run: Callable[[dict], subprocess.CompletedProcess],
             row_id: Callable[[dict], str]) -> dict:
    """row id -> its run; the subprocesses are independent, so they run side by side."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return {row_id(row): r for row, r in zip(rows, pool.map(run, rows))}


def assert_one_located_error(r: subprocess.CompletedProcess, row: dict, head: str) -> None:
    """The row's exit code, no traceback and no "internal error", exactly one `error:` line
    starting with `head` (indented context lines may follow), naming the row's node and
    holding its `expect` text."""
    report = f"exit {r.returncode}\nstderr:\n{r.stderr}\nstdout:\n{r.stdout[-2000:]}"
    assert r.returncode == row["exit"], report
    assert "Traceback" not in r.stderr + r.stdout, report
    assert "internal error" not in r.stderr, report
    lines = r.stderr.splitlines()
    assert lines and lines[0].startswith(head), report
    assert all(line.startswith("  ") for line in lines[1:]), report
    if "node" in row:
        assert f"node '{row['node']}': " in lines[0], report
    assert row["expect"] in lines[0], report
