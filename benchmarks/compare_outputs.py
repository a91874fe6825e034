"""Do two revisions of graphc compute bitwise the same numbers on every spec in specs/?

    python benchmarks/compare_outputs.py [--base REV] [--head REV] [--epochs N] [--specs A,B]

The check for refactors that must not change a single bit. Each revision is checked
out into a temporary git worktree (`--head` defaults to this working tree as it is,
uncommitted edits included; `--base` to its merge-base with main) and run as a user
runs it, with PYTHONPATH pointing at that checkout. For every spec of the head's specs/:

- `graphc train SPEC --epochs N --seed 0 --json --out CKPT`: the JSON line (less its
  samples_per_s timing) and every array of the checkpoint, compared bitwise (the
  spec's recorded path with each checkout's folder taken out);
- `graphc grad SPEC --json --out GRADS.npz`: the JSON text and every gradient array,
  compared bitwise;
- the compiler's text: `graphc check SPEC`, `graphc plan SPEC` (the table),
  `graphc plan SPEC --json` and the DOT file of `graphc plan SPEC --dot FILE`, compared
  byte for byte (`--no-compile` leaves these out).

A spec a revision refuses (exit 2, e.g. a lecture spec without train.data) must be
refused the same way by the other: same exit code and message. Prints one row per spec
and command; exits 1 on any difference.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORKTREE = "WORKTREE"       # --head's default: the working tree itself, not a commit
TIMINGS = ("samples_per_s",)
PATH_ARRAYS = ("__graphc__/spec_file",)   # the spec's path (UTF-8 bytes): differs per checkout


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


def checkout(rev: str, into: Path) -> Path:
    """A checkout of `rev`: this working tree itself for WORKTREE, else a detached worktree."""
    if rev == WORKTREE:
        return ROOT
    git("worktree", "add", "--detach", "--quiet", str(into), rev)
    return into


def graphc(tree: Path, args: list, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m graphc ARGS` importing the graphc package of `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([sys.executable, "-m", "graphc", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)


def npz_bits(path: Path, tree: Path) -> dict:
    """name -> (dtype, shape, raw bytes) of every array in an .npz; {} when it is absent.
    An array holding a path has the checkout's own folder taken out of it."""
    if not path.exists():
        return {}
    out = {}
    with np.load(path, allow_pickle=False) as z:
        for k in z.files:
            raw = z[k].tobytes()
            if k in PATH_ARRAYS:
                raw = raw.replace(str(tree).encode(), b"<checkout>")
                out[k] = (z[k].dtype.str, None, raw)
            else:
                out[k] = (z[k].dtype.str, z[k].shape, raw)
    return out


def without_timings(stdout: str) -> str:
    """The JSON line with its wall-clock figures dropped (they differ run to run)."""
    try:
        obj = json.loads(stdout)
    except ValueError:
        return stdout
    if isinstance(obj, dict):
        for key in TIMINGS:
            obj.pop(key, None)
    return json.dumps(obj, sort_keys=True)


def file_bits(path: Path, tree: Path) -> dict:
    """{file name: (None, None, bytes)} of a text output, the checkout's folder taken out;
    {} when it is absent."""
    if not path.exists():
        return {}
    return {path.name: (None, None, path.read_bytes().replace(str(tree).encode(), b"<checkout>"))}


def outputs(tree: Path, spec: Path, work: Path, epochs: int, compile_text: bool = True) -> dict:
    """command -> everything it produced that must match: exit code, stdout, arrays and
    files."""
    runs = {    # command -> (arguments, the file it writes, how to read that file)
        "train": (["train", str(spec), "--epochs", str(epochs), "--seed", "0", "--json",
                   "--out", str(work / "ckpt.npz")], work / "ckpt.npz", npz_bits),
        "grad": (["grad", str(spec), "--json", "--out", str(work / "grads.npz")],
                 work / "grads.npz", npz_bits),
    }
    if compile_text:
        runs.update({
            "check": (["check", str(spec)], None, None),
            "plan": (["plan", str(spec)], None, None),
            "plan-json": (["plan", str(spec), "--json"], None, None),
            "plan-dot": (["plan", str(spec), "--dot", str(work / "plan.dot")],
                         work / "plan.dot", file_bits),
        })
    result = {}
    for command, (args, written, read) in runs.items():
        for f in [*work.glob("*.npz"), *work.glob("*.dot")]:
            f.unlink()
        done = graphc(tree, args, cwd=work)
        # the message names the spec's path, which is in a different checkout per side
        error = ([line.replace(str(tree), "<checkout>") for line in
                  done.stderr.strip().splitlines()[-1:]] if done.returncode else [])
        stdout = without_timings(done.stdout.strip()).replace(str(tree), "<checkout>")
        result[command] = (done.returncode, stdout, error,
                           read(written, tree) if written else {})
    return result


def differences(a: tuple, b: tuple) -> str:
    """'' when both runs agree bitwise, else what differs first."""
    (rc_a, out_a, err_a, arr_a), (rc_b, out_b, err_b, arr_b) = a, b
    if rc_a != rc_b:
        return f"exit {rc_a} vs {rc_b}"
    if err_a != err_b:
        return "error messages differ"
    if out_a != out_b:
        return "stdout differs"
    if set(arr_a) != set(arr_b):
        return f"arrays {sorted(set(arr_a) ^ set(arr_b))} in one only"
    changed = sorted(k for k in arr_a if arr_a[k] != arr_b[k])
    return f"arrays differ: {', '.join(changed[:4])}" if changed else ""


def compare(base: Path, head: Path, specs: list, epochs: int, scratch: Path,
            compile_text: bool = True) -> bool:
    """Print one row per spec and command; True when every row is the same."""
    same = True
    print(f"{'spec':40} {'command':9} result")
    for name in specs:
        runs = []
        for side, tree in (("base", base), ("head", head)):
            work = scratch / side / name
            work.mkdir(parents=True, exist_ok=True)
            runs.append(outputs(tree, tree / "specs" / f"{name}.yaml", work, epochs,
                                compile_text))
        for command in runs[0]:
            diff = differences(runs[0][command], runs[1][command])
            same = same and not diff
            rc = runs[0][command][0]
            note = "same" + ("" if rc == 0 else f" (both exit {rc})")
            print(f"{name:40} {command:9} {'DIFFERENT: ' + diff if diff else note}",
                  flush=True)
    return same


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", help="revision to compare from [default: merge-base with main]")
    p.add_argument("--head", default=WORKTREE,
                   help="revision to compare to [default: this working tree, uncommitted "
                        "edits included]")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--specs", help="comma-separated spec names [default: all of specs/]")
    p.add_argument("--no-compile", action="store_true",
                   help="compare train and grad only, not the check/plan/DOT text")
    args = p.parse_args(argv)
    base_rev = args.base or git("merge-base", "HEAD", "main")
    with tempfile.TemporaryDirectory(prefix="graphc-compare-") as tmp:
        scratch = Path(tmp)
        base = checkout(base_rev, scratch / "base-tree")
        head = checkout(args.head, scratch / "head-tree")
        try:
            names = (args.specs.split(",") if args.specs else
                     sorted(p.stem for p in (head / "specs").glob("*.yaml")))
            print(f"base {base_rev} ({base})\nhead {args.head} ({head})\n")
            same = compare(base, head, names, args.epochs, scratch, not args.no_compile)
        finally:
            for tree in (base, head):
                if tree != ROOT:
                    git("worktree", "remove", "--force", str(tree))
    print("\nall specs bitwise identical" if same else "\nDIFFERENCES found")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
