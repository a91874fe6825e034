"""The commands README.md and docs/ show run as written and print what the docs show.

- Every `graphc CMD ... --OPTION` written anywhere in the docs names an option CMD has.
- Every fenced session (`$ graphc ...` lines, each followed by its output) runs verbatim
  in bash, from a folder holding the repository's specs/, with `graphc` on PATH; its
  output must be the documented lines. A `...` line stands for any lines (an elision),
  and a JSON line matches when its keys match and its numbers agree to 1e-4 relative
  (`samples_per_s`, a speed, is not compared); numbers in E-notation (gradcheck's
  rounding-sized errors) are not compared, the rest of their line is.
- The README's Python example runs verbatim there.
- Every `graphc CMD specs/...` quoted inline with no placeholder runs with exit 0, in a
  folder where the README's front door (`graphc train specs/spiral_mlp.yaml`) has run.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from graphc.cli import main

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]
FENCE = re.compile(r"```\w*\n(.*?)```", re.S)
COMMAND = re.compile(r"graphc(?: --max-memory \S+)? ([a-z]+)((?: +[^\s`|#(),;]+)*)")
INLINE = re.compile(r"`(graphc [a-z]+ specs/[^`]*)`")
FRONT_DOOR = "pip install -e . && graphc train specs/spiral_mlp.yaml"
UNTIMED = {"samples_per_s"}
ROUNDING = re.compile(r"\d\.\d+e[-+]\d+")


def line_of(text: str, pos: int) -> int:
    return text[:pos].count("\n") + 1


def sessions() -> list:
    """(where, [(command, [documented output lines])]) of each fenced `$ graphc` session."""
    out = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            steps: list = []
            for line in m.group(1).splitlines():
                if line.startswith("$ "):
                    steps.append((line[2:], []))
                elif steps:
                    steps[-1][1].append(line)
            if any(command.startswith("graphc ") for command, _ in steps):
                out.append((f"{doc.name}:{line_of(text, m.start())}", steps))
    return out


def documented_options() -> list:
    """(where, command, option) for every `graphc CMD ... --option` in the docs."""
    out = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for m in COMMAND.finditer(text):
            for option in re.findall(r"(?<![\w-])--[a-z][\w-]*", m.group(2)):
                out.append((f"{doc.name}:{line_of(text, m.start())}", m.group(1), option))
    return out


def inline_commands() -> list:
    return sorted({" ".join(m.group(1).split()) for doc in DOCS for m in INLINE.finditer(
        doc.read_text(encoding="utf-8")) if not re.search(r"[A-Z]{2,}|\[", m.group(1))})


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A user's folder: the repository's specs/; `graphc` and `python` on PATH meaning this
    graphc and this interpreter."""
    path = tmp_path_factory.mktemp("docs")
    (path / "specs").symlink_to(REPO / "specs")
    bin_dir = path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "graphc"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m graphc "$@"\n')
    shim.chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)     # the docs' `python -c ...` lines
    r = run(FRONT_DOOR.split(" && ")[1], path)
    assert r.returncode == 0 and (path / "spiral_mlp.ckpt.npz").exists(), r.stderr
    r = run(f"""'{sys.executable}' -c "import numpy as np; np.savez('new.npz', x=[[0.5, -0.2]])" """,
            path)
    assert r.returncode == 0, r.stderr
    return path


def run(command: str, folder: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{folder / 'bin'}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.pop("GRAPHC_DEBUG", None)
    return subprocess.run(["bash", "-c", command], cwd=folder, capture_output=True, text=True,
                          timeout=300, env=env)


def same_json(doc: str, got: str) -> bool:
    try:
        a, b = json.loads(doc), json.loads(got)
    except ValueError:
        return False
    return close(a, b)


def close(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(k in UNTIMED or close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(close, a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-12)
    return a == b


def same_line(doc: str, got: str) -> bool:
    """Equal, or equal but for the E-notation numbers (gradcheck's rounding-sized errors,
    which move with a kernel's summation order), or the same JSON."""
    return doc == got or ROUNDING.sub("E", doc) == ROUNDING.sub("E", got) or \
        same_json(doc, got)


def matches(doc: list, got: list) -> bool:
    """The documented lines against the printed ones; `...` stands for any lines."""
    if not doc:
        return not got
    if doc[0] == "...":
        return any(matches(doc[1:], got[i:]) for i in range(len(got) + 1))
    return bool(got) and same_line(doc[0], got[0]) and matches(doc[1:], got[1:])


def test_every_documented_option_exists():
    uses = documented_options()
    assert len(uses) > 50, "the docs' commands were not found"
    known = {name: {o for p in cmd.params for o in p.opts + p.secondary_opts} | {"--help"}
             for name, cmd in ((n, main.get_command(None, n))   # lazily registered
                               for n in main.list_commands(None))}
    missing = [use for use in uses if use[1] in known and use[2] not in known[use[1]]]
    assert not missing, f"documented options no command has: {missing}"
    unknown = sorted({(where, cmd) for where, cmd, _ in uses if cmd not in known})
    assert not unknown, f"documented commands graphc does not have: {unknown}"


@pytest.mark.parametrize("where, steps", sessions(), ids=[w for w, _ in sessions()])
def test_a_documented_session_prints_what_the_docs_show(where, steps, folder):
    for command, documented in steps:
        r = run(command, folder)
        got = (r.stdout + r.stderr).splitlines()
        assert r.returncode == 0, f"{where}: `{command}` exited {r.returncode}:\n{r.stderr}"
        assert matches(documented, got), (f"{where}: `{command}` printed\n" + "\n".join(got)
                                          + "\nbut the docs show\n" + "\n".join(documented))


def test_the_readme_front_door_is_the_trained_command():
    assert FRONT_DOOR in (REPO / "README.md").read_text(encoding="utf-8")


def test_the_readme_python_example_runs_verbatim(folder):
    code = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"),
                      re.S)
    assert len(code) == 1 and "graphc.load(" in code[0]
    r = run(f"'{sys.executable}' - <<'EOF'\n{code[0]}EOF", folder)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("command", inline_commands())
def test_an_inline_command_runs(command, folder):
    r = run(command, folder)
    assert r.returncode == 0, f"`{command}` exited {r.returncode}:\n{r.stderr}"


def test_the_readme_plan_session_ends_with_the_memory_summary():
    """The tour says `plan` prints its steps "followed by a memory summary": the session
    shows that line, not an elision in its place."""
    shown = [doc for where, steps in sessions() if where.startswith("README.md")
             for command, doc in steps if command.startswith("graphc plan ")]
    assert shown and all(doc[-1].startswith("naive ") for doc in shown), shown
