"""Fuzz graphc with mutated specs: every run must exit 0 or 2, never crash, never hang.

    python benchmarks/fuzz_specs.py --examples 20000 [--seed 1] [--cmd check|grad|plan]

Each example takes a valid spec (specs/*.yaml and the small ones below), applies
one to three random mutations (delete/duplicate/swap lines, rename keys, change
indentation, swap characters, replace numbers, truncate, insert unicode or YAML
syntax, swap names and ops, add attributes) and runs `graphc CMD` in-process
through click's CliRunner. A run that exits 1 ("internal error"), raises, or
takes longer than --timeout seconds is a finding; the script prints a summary
table and the first findings (the mutated text) so each can be minimized into
tests/bad_specs/. tests/test_fuzz.py runs the same mutations under hypothesis.
"""
from __future__ import annotations

import argparse
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from graphc.cli import main  # noqa: E402
from graphc.ops import OPS  # noqa: E402

MAX_MEMORY = "256M"      # a fuzzed shape must fail fast, not allocate gigabytes
SMALL_SPECS = {
    "explicit.yaml": """\
dtype: float64
inputs:
  x: {shape: [batch, 3], dtype: float64}
  t: [batch, 2]
params:
  W: {shape: [3, 2], init: {normal: {std: 0.1}}}
  b: {shape: [2], value: [0.5, -0.5]}
nodes:
  z: {op: matmul, inputs: [x, W]}
  h: {op: add, inputs: [z, b]}
  a: {op: pow, inputs: [h], exponent: 2}
  s: {op: sum, inputs: [a], axis: 1, keepdims: true}
  loss: mse(mean(s, axis=1), sum(t, axis=1))
""",
    "anchors.yaml": """\
graphc: 1
name: anchors
inputs:
  x: &xv {value: [[1.0, -2.0], [0.5, 3.0]]}
  y: {value: [1.0, 0.0]}
params:
  w: &w {shape: [2], init: zeros}
  v: *w
nodes:
  score: "x @ w + 0.1 * (x @ v)"
  p: sigmoid(score)
  loss: |
    mean(square(p - y))
outputs: [p]
""",
    "trainable.yaml": """\
name: tiny
inputs:
  x: [batch, 2]
  y: {shape: [batch], dtype: int64}
params:
  W1: {shape: [2, 8], init: he_normal}
  b1: [8]
  W2: {shape: [8, 3], init: glorot_uniform}
  b2: [3]
nodes:
  h: tanh(x @ W1 + b1)
  scores: h @ W2 + b2
  loss: softmax_cross_entropy(scores, y) + 1e-3 * sum(W1 * W1)
loss: loss
outputs: [scores]
train:
  data: {dataset: spiral, samples: 30, classes: 3, seed: 1}
  batch_size: 10
  epochs: 1
  optimizer: {sgd: {lr: 0.5, momentum: 0.9}}
  schedule: {step: {every: 1, gamma: 0.5}}
  metrics: {accuracy: [scores, y]}
  seed: 3
""",
    "scalars.yaml": """\
inputs: {a: 3, b: -2.5, c: 4}
nodes:
  q: a * b - c / 2
  r: max(q, 0) + exp(-q) ** 2
  J: 3 * (r + log(c))
loss: J
""",
}

NUMBERS = ["0", "-1", "-7", "1e308", "1e400", "-1e400", "99999999999999999999999", "2147483648",
           "0.5", "nan", ".nan", ".inf", "-.inf", "'3'", "three", "true", "null", "~", "[]",
           "{}", "[1, [2]]", "0x10", "1_000", "1e-320", "-0.0"]
SNIPPETS = ["&a ", "*a", "!!python/object/apply:os.system ['true'] ", "!!binary aGk= ",
            "<<: *a", "{", "}", "[", "]", "- ", "? ", "| ", "> ", "---\n", "...\n", "%YAML 1.1\n",
            "#", "'", '"', ":", ": ", ", ", "\t", "\\", "\n", "  ", "@", "**", "(", ")", ".T",
            "lambda: ", "[0]", " if x else ", "__class__", "!!float ", "!!set ", "&b [*b]"]
UNICODE = ["\u00e9", "\u2028", "\u202e", "\ufeff", "\x00", "\x07", "\x85", "\u00a0", "\U0001f600",
           "\ud800", "\u3000", "\u0301", "\uff08", "\u2212", "\u00d7"]
ATTR_VALUES = ["1", "-1", "0", "5", "[0, 1]", "[]", "None", "True", "'a'", "x", "1.5", "2",
               "(1,)", "{1: 2}", "[[0]]", "-100", "10**9", "1e400", "b'x'", "1j"]
KEY_WORDS = ["graphc", "name", "dtype", "inputs", "params", "nodes", "loss", "outputs", "train",
             "shape", "init", "value", "data", "batch_size", "epochs", "optimizer", "schedule",
             "metrics", "seed", "op", "inputs", "axis", "keepdims", "exponent", "dataset",
             "samples", "classes", "sgd", "lr", "momentum", "step", "every", "gamma", "batch"]
FORWARD_OPS = sorted(n for n, op in OPS.items() if op.group in ("forward", "layer"))
ATTR_NAMES = sorted({a for op in OPS.values() for a in op.attrs} | {"axis", "bogus"})


def seed_specs() -> dict:
    """name -> text of every valid spec the mutations start from."""
    specs = {p.name: p.read_text() for p in sorted((ROOT / "specs").glob("*.yaml"))}
    return {**specs, **SMALL_SPECS}


# --- mutations: (text, rnd) -> text; rnd is a random.Random (hypothesis drives it in tests) ---

def _lines(text: str) -> list:
    return text.split("\n")


def delete_line(text, rnd):
    lines = _lines(text)
    del lines[rnd.randrange(len(lines))]
    return "\n".join(lines)


def duplicate_line(text, rnd):
    lines = _lines(text)
    i = rnd.randrange(len(lines))
    lines.insert(rnd.randrange(len(lines) + 1), lines[i])
    return "\n".join(lines)


def swap_lines(text, rnd):
    lines = _lines(text)
    i, j = rnd.randrange(len(lines)), rnd.randrange(len(lines))
    lines[i], lines[j] = lines[j], lines[i]
    return "\n".join(lines)


def reindent(text, rnd):
    lines = _lines(text)
    i = rnd.randrange(len(lines))
    body = lines[i].lstrip(" ")
    lines[i] = rnd.choice(["", " ", "   ", "    ", "\t", " " * rnd.randrange(12)]) + body
    return "\n".join(lines)


def _edit_word(word: str, rnd) -> str:
    if not word:
        return rnd.choice(KEY_WORDS)
    i = rnd.randrange(len(word))
    kind = rnd.randrange(4)
    if kind == 0:
        return word[:i] + word[i + 1:]
    if kind == 1:
        return word[:i] + rnd.choice("abcxyz_0") + word[i:]
    if kind == 2 and len(word) > 1:
        j = min(i + 1, len(word) - 1)
        chars = list(word)
        chars[i], chars[j] = chars[j], chars[i]
        return "".join(chars)
    return rnd.choice(KEY_WORDS)


def rename_key(text, rnd):
    keys = list(re.finditer(r"^(\s*)([\w.]+)(\s*:)", text, re.M))
    if not keys:
        return text
    m = rnd.choice(keys)
    return text[:m.start(2)] + _edit_word(m.group(2), rnd) + text[m.end(2):]


def swap_chars(text, rnd):
    if len(text) < 2:
        return text
    i = rnd.randrange(len(text) - 1)
    j = min(len(text) - 1, i + rnd.randrange(1, 4))
    chars = list(text)
    chars[i], chars[j] = chars[j], chars[i]
    return "".join(chars)


def replace_number(text, rnd):
    numbers = list(re.finditer(r"(?<![\w.])-?\d+(\.\d+)?(e-?\d+)?(?![\w.])", text))
    if not numbers:
        return text
    m = rnd.choice(numbers)
    return text[:m.start()] + rnd.choice(NUMBERS) + text[m.end():]


def truncate(text, rnd):
    return text[:rnd.randrange(len(text) + 1)]


def insert_unicode(text, rnd):
    i = rnd.randrange(len(text) + 1)
    return text[:i] + rnd.choice(UNICODE) + text[i:]


def insert_yaml(text, rnd):
    i = rnd.randrange(len(text) + 1)
    return text[:i] + rnd.choice(SNIPPETS) + text[i:]


def swap_names(text, rnd):
    """Replace one identifier by another found in the text (cycles, shape and dtype clashes)."""
    words = list(re.finditer(r"\b[A-Za-z_]\w*\b", text))
    if len(words) < 2:
        return text
    m = rnd.choice(words)
    return text[:m.start()] + rnd.choice(words).group() + text[m.end():]


def swap_op(text, rnd):
    calls = list(re.finditer(r"\b([a-z_]+)\(", text))
    if not calls:
        return text
    m = rnd.choice(calls)
    return text[:m.start(1)] + rnd.choice(FORWARD_OPS) + text[m.end(1):]


def add_attribute(text, rnd):
    calls = list(re.finditer(r"\b[a-z_]+\(([^()]*)\)", text))
    if not calls:
        return text
    m = rnd.choice(calls)
    extra = f", {rnd.choice(ATTR_NAMES)}={rnd.choice(ATTR_VALUES)}"
    return text[:m.end(1)] + extra + text[m.end(1):]


def wrap_expression(text, rnd):
    nodes = list(re.finditer(r"^(  \w+: )(.+)$", text, re.M))
    if not nodes:
        return text
    m = rnd.choice(nodes)
    expr = m.group(2)
    if expr.startswith(("{", "[", "|", "'", '"')):
        return text
    wrapped = rnd.choice(["{op}({e})", "{op}({e}, {e})", "({e}) ** 2", "-({e})", "{e} @ {e}",
                          "{op}({e}, axis={a})"]).format(op=rnd.choice(FORWARD_OPS), e=expr,
                                                         a=rnd.choice(ATTR_VALUES))
    return text[:m.start(2)] + wrapped + text[m.end(2):]


def change_shape(text, rnd):
    shapes = list(re.finditer(r"\[([\w, ]*)\]", text))
    if not shapes:
        return text
    m = rnd.choice(shapes)
    dims = [rnd.choice(["1", "2", "3", "batch", "n", "0", "-2", "100000", "2.5", "'x'", "[2]"])
            for _ in range(rnd.randrange(4))]
    return text[:m.start(1)] + ", ".join(dims) + text[m.end(1):]


TREE_VALUES = [0, -1, 1, 3, 2.5, -3.0, 10**12, 1e308, float("nan"), float("inf"), "", "x", "batch",
               "relu", "he_normal", "sgd", True, None, [], [1], [[1, 2]], [2, 3], {}, {"a": 1},
               {"normal": {"std": -1}}, {"uniform": {"low": 1, "high": 0}}, ["x", "y"],
               "sum(x)", "x @ W", {"sgd": {"lr": -1}}, {"step": {"every": 0}}, {"dataset": "xor"},
               {"csv": "nope.csv"}, {"shape": [2], "value": [1, 2, 3]}]


def mutate_tree(text, rnd):
    """Parse, replace/delete/add one value anywhere in the tree, and dump it again."""
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    spots = list(_containers(tree))
    if not spots:
        return text
    parent, key = rnd.choice(spots)
    action = rnd.randrange(4)
    if action == 0 and isinstance(parent, dict):
        del parent[key]
    elif action == 1 and isinstance(parent, dict):
        parent[_edit_word(str(key), rnd)] = parent.pop(key)
    else:
        parent[key] = rnd.choice(TREE_VALUES)
    return yaml.safe_dump(tree, sort_keys=False)


def _containers(tree):
    """(container, key) for every value in a loaded YAML tree."""
    stack = [tree]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else \
            enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            yield node, key
            stack.append(value)


MUTATIONS = [mutate_tree, delete_line, duplicate_line, swap_lines, reindent, rename_key, swap_chars,
             replace_number, truncate, insert_unicode, insert_yaml, swap_names, swap_op,
             add_attribute, wrap_expression, change_shape]


def mutate(text: str, rnd, count: int) -> tuple:
    """`count` random mutations of `text`; returns (text, names of the mutations applied)."""
    applied = []
    for _ in range(count):
        m = rnd.choice(MUTATIONS)
        text = m(text, rnd)
        applied.append(m.__name__)
    return text, applied


# --- running graphc in-process -------------------------------------------------------------

class Hang(BaseException):
    """A run past its time limit (a BaseException, so graphc's handlers cannot swallow it)."""


@contextmanager
def time_limit(seconds: float):
    def expire(signum, frame):
        raise Hang(f"graphc ran longer than {seconds} s")
    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@dataclass
class Outcome:
    exit_code: int
    output: str
    seconds: float
    cmd: str = "check"

    @property
    def ok(self) -> bool:
        """What a user may see: success, bad input (exit 2), or for train a failed check
        such as a NaN (exit 1); never graphc's own "internal error" or a traceback."""
        allowed = (0, 1, 2) if self.cmd == "train" else (0, 2)
        return (self.exit_code in allowed and "Traceback" not in self.output
                and "error: internal error" not in self.output)


def run_graphc(text: str, folder: Path, cmd: str = "check", timeout: float = 10.0) -> Outcome:
    """`graphc CMD spec.yaml` in-process on `text`; Hang if it runs past `timeout`."""
    if not (folder / "data").exists():      # specs/*.yaml read their files from data/
        shutil.copytree(ROOT / "specs" / "data", folder / "data")
    path = folder / "spec.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    start = time.perf_counter()
    with time_limit(timeout):
        extra = ["--epochs", "1", "--out", str(folder / "out.ckpt.npz")] if cmd == "train" else []
        result = CliRunner().invoke(main, ["--max-memory", MAX_MEMORY, cmd, str(path), *extra],
                                    catch_exceptions=True)
    output = result.output      # stdout and stderr, as the user's terminal shows them
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        output += f"\nuncaught {type(result.exception).__name__}: {result.exception}"
        return Outcome(-1, output, time.perf_counter() - start, cmd)
    return Outcome(result.exit_code, output, time.perf_counter() - start, cmd)


def main_(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cmd", default="check", choices=["check", "grad", "plan", "train"],
                        help="train runs one epoch")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--show", type=int, default=5, help="findings to print in full")
    parser.add_argument("--save", type=Path, help="write every finding's spec to this folder")
    args = parser.parse_args(argv)
    rnd, seeds = random.Random(args.seed), seed_specs()
    if args.cmd == "train":                 # only specs that can train: they have data
        seeds = {k: v for k, v in seeds.items() if "data:" in v}
    exits, per_mutation, findings, slowest = Counter(), Counter(), [], (0.0, "")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.examples):
            name = rnd.choice(sorted(seeds))
            text, applied = mutate(seeds[name], rnd, rnd.randrange(1, 4))
            try:
                out = run_graphc(text, Path(tmp), args.cmd, args.timeout)
            except Hang as exc:
                out = Outcome(-2, str(exc), args.timeout, args.cmd)
            exits[out.exit_code] += 1
            slowest = max(slowest, (out.seconds, name))
            if not out.ok:
                findings.append((name, applied, text, out))
                per_mutation.update(applied)
    elapsed = time.perf_counter() - start
    print(f"{args.examples} examples of `graphc {args.cmd}` in {elapsed:.1f} s "
          f"({args.examples / elapsed:.0f}/s), slowest {slowest[0] * 1000:.0f} ms ({slowest[1]})")
    print(f"{'outcome':<28}{'runs':>8}")
    labels = {0: "exit 0 (valid)", 2: "exit 2 (bad input)", 1: "exit 1 (check failed/internal)",
              -1: "uncaught exception", -2: "hang (time limit)"}
    for code, n in sorted(exits.items()):
        print(f"{labels.get(code, f'exit {code}'):<28}{n:>8}")
    if findings:
        print("\nmutations in findings: " + ", ".join(f"{k} {v}" for k, v in
                                                     per_mutation.most_common()))
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        for i, (name, _, text, _) in enumerate(findings):
            (args.save / f"finding_{i:03d}_{name}").write_bytes(
                text.encode("utf-8", "surrogatepass"))
    for name, applied, text, out in findings[:args.show]:
        print(f"\n--- {name} after {', '.join(applied)}: exit {out.exit_code}\n{out.output}"
              f"\n--- text:\n{text}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main_())
