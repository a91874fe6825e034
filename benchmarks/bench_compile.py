"""How compile time grows with the graph: the time of each pipeline pass, per size.

    python benchmarks/bench_compile.py [--mlp 100,1000,10000] [--chain 1000,10000,100000]
                                       [--cli] [--profile KIND:N] [--json]

For each size the script writes a spec (an MLP of N ReLU layers, width 8; or a chain
`h_i: tanh(h_{i-1})` of N nodes after one matmul) and compiles it in this process the
way the commands do: the MLP as `graphc plan` (spec, IR, reverse graph, training step,
memory plan, plan verifier, plan table, DOT), the chain as `graphc check` (spec, IR,
reverse graph, the check table). Each pass is timed by wrapping its function; a pass
called inside another counts in both (build_graph includes acyclicity, shapes, the
schedule and the IR verifier). The table shows wall milliseconds, and µs per node: a
linear pass keeps its µs per node as the size grows. The last rows give the process's
CPU time (which a busy machine inflates less than wall time) and its per-node cost as a
ratio to the smallest size's, measured in the same run: 1.00 is linear. `--cli` also times the command itself
(`python -m graphc plan|check SPEC`, a fresh process) for the done-means targets;
`--profile mlp:1000` prints cProfile's top functions for one spec instead.
`GRAPHC_TREE=/path/to/checkout` times another revision's graphc (a `git worktree`).
"""
from __future__ import annotations

import argparse
import cProfile
import functools
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TREE = Path(os.environ.get("GRAPHC_TREE", Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(TREE))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import blas_info, relu_layers  # noqa: E402

import graphc  # noqa: E402
import graphc.arena  # noqa: E402
import graphc.autodiff  # noqa: E402
import graphc.dot  # noqa: E402
import graphc.ir  # noqa: E402
import graphc.optim  # noqa: E402
import graphc.plan  # noqa: E402
import graphc.spec  # noqa: E402
import graphc.yamlload  # noqa: E402
from graphc.autodiff import check_params_reach_loss, trained_params  # noqa: E402
from graphc.model import load_model  # noqa: E402
from graphc.trainconfig import training_plan  # noqa: E402

WIDTH = 8
PASSES = (    # (label, module, function): the passes timed, in pipeline order; a function
              # this checkout lacks is skipped, so the script times older revisions too
    ("yaml load", graphc.yamlload, "load_yaml"),
    ("spec (incl. yaml)", graphc.spec, "load_spec"),
    ("  leaves", graphc.spec, "_leaves"),
    ("  nodes (expressions)", graphc.spec, "_nodes"),
    ("IR build (all)", graphc.ir, "build_graph"),
    ("  acyclicity (fd09fc1)", graphc.ir, "_check_acyclic"),
    ("  topological orders", graphc.ir, "topological_order"),
    ("  shapes (every add)", graphc.ir.GraphBuilder, "add"),
    ("  schedule", graphc.ir, "toposort"),
    ("  IR verify", graphc.ir, "verify_graph"),
    ("autodiff (all)", graphc.autodiff, "grad_graph"),
    ("  reachability", graphc.autodiff, "path_nodes"),
    ("training step", graphc.optim, "training_graph"),
    ("plan (all)", graphc.plan, "compile_plan"),
    ("  memory order", graphc.arena, "memory_order"),
    ("  liveness", graphc.plan, "liveness"),
    ("  placement", graphc.arena, "assign_offsets"),
    ("plan verify", graphc.plan, "verify_plan"),
    ("plan table", graphc.plan, "plan_table"),
    ("graph dump", graphc.ir.Graph, "dump"),
    ("DOT", graphc.dot, "plan_dot"),
)


def mlp_spec(layers: int) -> str:
    """An MLP of `layers` ReLU layers of width 8, softmax cross-entropy, plain SGD."""
    lines = ["name: deep_mlp", "inputs:", f"  x: [batch, {WIDTH}]",
             "  y: {shape: [batch], dtype: int64}", "params:"]
    for i in range(1, layers + 1):
        lines += [f"  W{i}: [{WIDTH}, {WIDTH}]", f"  b{i}: [{WIDTH}]"]
    hidden, prev = relu_layers(layers)
    lines += ["nodes:", *hidden]
    lines += [f"  scores: {prev} @ W{layers} + b{layers}",
              "  loss: softmax_cross_entropy(scores, y)",
              "train:", "  batch_size: 16", "  optimizer: {sgd: {lr: 0.01}}"]
    return "\n".join(lines) + "\n"


def chain_spec(nodes: int) -> str:
    """A matmul, then a chain of tanh nodes: `nodes` nodes in all, mean for the loss."""
    lines = ["name: chain", "inputs:", f"  x: [batch, {WIDTH}]", "params:",
             f"  W: [{WIDTH}, {WIDTH}]", "nodes:", "  h0: x @ W"]
    lines += [f"  h{i}: tanh(h{i - 1})" for i in range(1, nodes - 1)]
    lines.append(f"  loss: mean(h{nodes - 2})")
    return "\n".join(lines) + "\n"


class Timers:
    """Wraps each pass's function (every module that imported it too) to add up its time."""

    def __init__(self):
        self.totals: dict = {}
        self.saved: list = []

    def install(self):
        for label, owner, name in PASSES:
            original = getattr(owner, name, None)
            if original is None:
                continue
            wrapped = self._wrap(label, original)
            for holder in self._holders(owner, name, original):
                self.saved.append((holder, name, original))
                setattr(holder, name, wrapped)

    def uninstall(self):
        for holder, name, original in reversed(self.saved):
            setattr(holder, name, original)
        self.saved.clear()

    @staticmethod
    def _holders(owner, name, original) -> list:
        if isinstance(owner, type):
            return [owner]
        return [m for m in list(sys.modules.values())
                if getattr(m, "__name__", "").startswith("graphc")
                and getattr(m, name, None) is original]

    def _wrap(self, label, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.totals[label] = self.totals.get(label, 0.0) + time.perf_counter() - t0
        return timed


def compile_mlp(path: Path):
    """What `graphc plan SPEC` computes, plus the DOT of `plan --dot`."""
    model = load_model(path)
    step, compiled = training_plan(model)
    graphc.plan.plan_table(compiled)
    graphc.dot.plan_dot(step.graph, compiled)
    return len(step.graph.nodes)


def check_chain(path: Path):
    """What `graphc check SPEC` computes."""
    model = load_model(path)
    gg = graphc.autodiff.grad_graph(model.graph, trained_params(model.graph))
    check_params_reach_loss(model.graph, gg.grads)
    model.graph.dump()
    return len(gg.graph.nodes)


KINDS = {"mlp": (mlp_spec, compile_mlp, "plan"), "chain": (chain_spec, check_chain, "check")}


def write_spec(kind: str, size: int, folder: Path) -> Path:
    path = folder / f"{kind}_{size}.yaml"
    path.write_text(KINDS[kind][0](size))
    return path


def measure(kind: str, size: int, folder: Path, cli: bool) -> dict:
    """Per-pass seconds of compiling one spec, its graph's node count, the total."""
    path = write_spec(kind, size, folder)
    timers = Timers()
    timers.install()
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        nodes = KINDS[kind][1](path)
    finally:
        timers.uninstall()
    row = {"kind": kind, "size": size, "nodes": nodes, "total_s": time.perf_counter() - t0,
           "cpu_s": time.process_time() - c0, "passes": timers.totals}
    if cli:
        row["cli_s"] = cli_seconds(KINDS[kind][2], path)
    return row


def cli_seconds(command: str, path: Path) -> float:
    """Wall time of `python -m graphc COMMAND SPEC` in a fresh process (imports included)."""
    env = {**os.environ, "PYTHONPATH": str(TREE)}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "graphc", command, str(path)], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        sys.exit(f"graphc {command} {path} failed: {done.stderr.strip()}")
    return time.perf_counter() - t0


def table(rows: list) -> str:
    """One table per kind: a row per pass, ms and µs per node for each size."""
    out = []
    for kind in KINDS:
        mine = [r for r in rows if r["kind"] == kind]
        if not mine:
            continue
        head = ["pass"] + [f"{r['size']:,} {kind}: ms (µs/node)" for r in mine]
        lines = [head, ["graph nodes"] + [f"{r['nodes']:,}" for r in mine]]
        for label, _, _ in PASSES:
            if any(label in r["passes"] for r in mine):
                lines.append([label] + [_cell(r["passes"].get(label, 0.0), r["nodes"])
                                        for r in mine])
        lines.append(["total in process"] + [_cell(r["total_s"], r["nodes"]) for r in mine])
        lines.append(["total CPU (process_time)"] + [_cell(r["cpu_s"], r["nodes"])
                                                      for r in mine])
        base = mine[0]["cpu_s"] / mine[0]["nodes"]
        lines.append(["CPU per node / smallest's"] + [f"{r['cpu_s'] / r['nodes'] / base:.2f}"
                                                       for r in mine])
        if all("cli_s" in r for r in mine):
            lines.append([f"`graphc {KINDS[kind][2]}`"] +
                         [_cell(r["cli_s"], r["nodes"]) for r in mine])
        out.append(_markdown(lines))
    return "\n\n".join(out)


def _cell(seconds: float, nodes: int) -> str:
    return f"{seconds * 1e3:,.1f} ({seconds * 1e6 / nodes:.1f})"


def _markdown(lines: list) -> str:
    widths = [max(len(r[i]) for r in lines) for i in range(len(lines[0]))]
    fmt = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in lines]
    fmt.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(fmt)


def profile(target: str, folder: Path, top: int = 25) -> None:
    kind, _, size = target.partition(":")
    path = write_spec(kind, int(size), folder)
    prof = cProfile.Profile()
    prof.runcall(KINDS[kind][1], path)
    pstats.Stats(prof).sort_stats("cumulative").print_stats(top)


def sizes(text: str) -> list:
    return [int(s) for s in text.split(",") if s]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mlp", type=sizes, default=[100, 1000, 10000])
    ap.add_argument("--chain", type=sizes, default=[1000, 10000, 100000])
    ap.add_argument("--cli", action="store_true", help="also time the command in a process")
    ap.add_argument("--profile", metavar="KIND:N", help="cProfile one spec, e.g. mlp:1000")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.profile:
            profile(args.profile, Path(tmp))
            return
        rows = [measure(kind, n, Path(tmp), args.cli)
                for kind, ns in (("mlp", args.mlp), ("chain", args.chain)) for n in ns]
    env = {"graphc": str(TREE), "python": sys.version.split()[0], "cpus": os.cpu_count(), **blas_info()}
    if args.json:
        print(json.dumps({"environment": env, "rows": rows}))
        return
    print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    print(table(rows))


if __name__ == "__main__":
    main()
