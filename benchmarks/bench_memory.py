"""Peak memory against step time under each rematerialization policy (train.memory).

    python benchmarks/bench_memory.py [--quick] [--reps N] [--spec FILE ...] [--json]

For each spec of the list (a deep ReLU MLP whose batch is much larger than its width,
64 layers of 256 at batch 4096, or 32 of 64 at batch 2048 with --quick; plus every
--spec FILE, the hook for the CNN and transformer specs) the script compiles the
training step (plain SGD, as `graphc train` runs each batch) once per policy, on a
fresh copy of the model, and times the steps interleaved rep by rep in one process, so machine noise hits every policy alike. The table gives each
policy's peak arena and step time as ratios to `none` (keep every saved value), and
the recomputation as a share of the forward pass's flops. For the MLP it then reports
the largest batch whose plan fits 256 MiB with and without recomputation (a bisection
over plans; nothing is run). BLAS runs on one thread; the BLAS kernel is reported.
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    from harness import pin_one_thread   # the script's folder is sys.path[0]
    pin_one_thread()                # before NumPy loads its BLAS
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_mlp import mlp_spec  # noqa: E402
from harness import blas_info, time_interleaved  # noqa: E402

from graphc.errors import SpecError  # noqa: E402
from graphc.model import load_model  # noqa: E402
from graphc.optim import LR  # noqa: E402
from graphc.remat import (NONE, MemoryPolicy, candidates, plan_keeping,  # noqa: E402
                          remat_plan, smallest_arena)
from graphc.remat_report import forward_flops  # noqa: E402
from graphc.timing import synthetic_batch  # noqa: E402
from graphc.train import step_runner  # noqa: E402
from graphc.trainconfig import training_step  # noqa: E402

FULL = (64, 256, 4096)        # hidden layers, width, batch
QUICK = (32, 64, 2048)
BUDGET = 256 * 2**20          # the budget of the largest-batch question
# name -> policy; "budget/4" asks for a quarter of none's arena, "smallest" for the least
# arena the budget search reaches
POLICIES = {"none": NONE, "every 4": MemoryPolicy("every", every=4),
            "sqrt": MemoryPolicy("sqrt"), "budget/4": None, "smallest": None}


def deep_mlp(layers: int, width: int, classes: int = 10) -> str:
    """The deep ReLU MLP's spec text (bench_mlp's generator)."""
    return mlp_spec(f"deep{layers}x{width}", [width] * (layers + 1) + [classes])


def policy_step(path: Path, batch: int, policy: MemoryPolicy) -> tuple:
    """(executor of the training step under `policy`, its Remat): a fresh model each, so
    the policies' updates never share params."""
    model = load_model(path)
    step, _, dims = training_step(model, batch)
    runner = step_runner(model, step, policy)
    model.store[LR][...] = 1e-6
    remat = remat_plan(step.graph, dims, runner.keep, step.forward, True, policy)
    ex = runner.executor(dims)
    ex.feed(synthetic_batch(model, dims))
    return ex, remat


def smallest(path: Path, batch: int) -> int:
    model = load_model(path)
    step, _, dims = training_step(model, batch)
    return smallest_arena(step.graph, dims, {model.graph.loss, step.guard}, step.forward)


def measure(path: Path, name: str, batch: int, reps: int) -> list:
    """One row per policy: peak arena, step time (interleaved reps) and recompute share."""
    steps, rows = {}, []
    for label, policy in POLICIES.items():
        if label == "budget/4":
            policy = MemoryPolicy("budget", budget=rows[0]["arena_bytes"] // 4)
        elif label == "smallest":
            policy = MemoryPolicy("budget", budget=smallest(path, batch))
        try:
            ex, remat = policy_step(path, batch, policy)
        except SpecError as err:                  # a budget no plan reaches: say so
            rows.append({"spec": name, "policy": label, "error": str(err)})
            continue
        steps[label] = ex
        fwd = forward_flops(remat)
        rows.append({"spec": name, "policy": label, "arena_bytes": remat.plan.arena_bytes,
                     "recompute_share": remat.recompute_flops / fwd if fwd else 0.0})
    for ex in steps.values():
        ex.run()                                   # warm up outside the clock
    times = time_interleaved({label: ex.run for label, ex in steps.items()}, reps)
    base = float(np.median(times["none"]))
    for row in rows:
        if row["policy"] in times:
            row["step_ms"] = float(np.median(times[row["policy"]])) * 1e3
            row["peak_ratio"] = rows[0]["arena_bytes"] / row["arena_bytes"]
            row["time_ratio"] = row["step_ms"] / (base * 1e3)
    return rows


def largest_batch(path: Path, recompute: bool, budget: int = BUDGET,
                  high: int = 1 << 18) -> int:
    """The largest batch whose plan fits `budget` bytes, keeping every saved value or
    under `--memory-budget budget` (a bisection over plans; the arena grows with the
    batch)."""
    model = load_model(path)
    policy = MemoryPolicy("budget", budget=budget) if recompute else NONE

    def fits(batch):
        step, _, dims = training_step(model, batch)
        try:
            remat = remat_plan(step.graph, dims, {model.graph.loss}, step.forward, True, policy)
        except SpecError:
            return False
        return remat.plan.arena_bytes <= budget
    low = 0
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low


def against_optimal(path: Path, batch: int, points: int = 6) -> list:
    """The budget search against the exhaustive optimum over every kept set (2^n plans, so
    small graphs only): at budgets spread over the feasible range, the search's
    recomputation and the least any kept set needs, in flops; and the smallest arena of
    each."""
    model = load_model(path)
    step, _, dims = training_step(model, batch)
    keep = {model.graph.loss}
    cands = candidates(step.graph, step.forward, keep)
    every = []
    for mask in range(2 ** len(cands)):
        kept = {c for i, c in enumerate(cands) if mask >> i & 1}
        r = plan_keeping(step.graph, dims, keep, step.forward, True, NONE, kept)
        every.append((r.plan.arena_bytes, r.recompute_flops))
    low, high = min(a for a, _ in every), max(a for a, _ in every)
    rows = []
    for budget in np.linspace(low, high, points).astype(int):
        best = min(f for a, f in every if a <= budget)
        try:
            found = remat_plan(step.graph, dims, keep, step.forward, True,
                               MemoryPolicy("budget", budget=int(budget))).recompute_flops
        except SpecError:
            found = None
        rows.append({"budget_bytes": int(budget), "optimal_flops": best, "found_flops": found})
    return rows


def table(rows: list) -> str:
    head = f"{'spec':<16} {'policy':<9} {'peak MiB':>9} {'peak ÷':>7} {'step ms':>9} " \
           f"{'time ×':>7} {'recompute':>10}"
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['spec']:<16} {r['policy']:<9} {r['error']}")
            continue
        lines.append(f"{r['spec']:<16} {r['policy']:<9} {r['arena_bytes'] / 2**20:>9.1f} "
                     f"{r['peak_ratio']:>7.2f} {r['step_ms']:>9.1f} {r['time_ratio']:>7.2f} "
                     f"{r['recompute_share']:>9.0%}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"layers, width, batch {QUICK}")
    p.add_argument("--reps", type=int, default=0, help="timed steps per policy "
                                                       "[default: 5, 20 with --quick]")
    p.add_argument("--spec", action="append", default=[], type=Path,
                   help="another spec to measure at its train.batch_size (repeatable)")
    p.add_argument("--no-largest", action="store_true",
                   help="skip the largest-batch bisection")
    p.add_argument("--optimal", type=int, metavar="LAYERS", default=0,
                   help="also compare the budget search with the exhaustive optimum on an "
                        "MLP of LAYERS layers of 16 (2^(LAYERS+2) plans; 10 takes a minute)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = p.parse_args(argv)
    layers, width, batch = QUICK if args.quick else FULL
    reps = args.reps or (20 if args.quick else 5)
    mlp = deep_mlp(layers, width)
    result = {"blas": blas_info(), "rows": [], "largest_batch": None}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "deep_mlp.yaml"
        path.write_text(mlp)
        result["rows"] += measure(path, f"mlp {layers}x{width}", batch, reps)
        for spec in args.spec:            # the hook: CNN and transformer specs, when they land
            size = load_model(spec).spec.train.get("batch_size", 32)
            result["rows"] += measure(spec, spec.stem, size, reps)
        if args.optimal:
            small = Path(tmp) / "small_mlp.yaml"
            small.write_text(deep_mlp(args.optimal, 16))
            result["optimal"] = against_optimal(small, 256)
        if not args.no_largest:
            result["largest_batch"] = {"budget_bytes": BUDGET,
                                       "without_recompute": largest_batch(path, False),
                                       "with_recompute": largest_batch(path, True)}
    if args.json:
        print(json.dumps(result))
        return 0
    print("BLAS: " + ", ".join(f"{k}={v}" for k, v in result["blas"].items()))
    print(f"batch {batch} for the MLP; {reps} interleaved steps per policy; ratios are to "
          f"'none' in this run")
    print(table(result["rows"]))
    for r in result.get("optimal", []):
        found = r["found_flops"]
        ratio = "no plan found" if found is None else \
            f"{found / r['optimal_flops']:.2f}x optimal" if r["optimal_flops"] else \
            ("optimal (none)" if found == 0 else "recomputes where none is needed")
        print(f"budget {r['budget_bytes']:>9} B: search recomputes {found} flops, the best "
              f"kept set {r['optimal_flops']} ({ratio})")
    if result["largest_batch"]:
        lb = result["largest_batch"]
        print(f"largest batch whose plan fits 256 MiB: {lb['without_recompute']} without "
              f"recomputation, {lb['with_recompute']} with (--memory-budget 256MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
