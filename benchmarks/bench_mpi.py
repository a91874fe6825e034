"""Data-parallel training on this machine: samples/s at N=1 and N ranks, and the allreduce.

    python benchmarks/bench_mpi.py [--models small,medium] [--ranks 2] [--epochs 3] [--json]

For each MLP of bench_mlp's ladder the script trains the same spec on the same
synthetic data (`Model.fit`, docs/api.md: what `graphc train` runs) once in one
process and once under `mpiexec -n RANKS`, each process on one BLAS thread, and
reads `samples_per_s` (the training loop's, global samples). Each worker then times,
on its own, the per-step collectives of a data-parallel step: the allreduce of the
gradient bytes (one MPI_Allreduce over a buffer of the step's size) and the
one-integer stop agreement. The table prints ratios measured in the same run, so a
noisy machine shifts both sides alike; docs/scaling.md has the cost model.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import pin_one_thread  # noqa: E402

pin_one_thread()                # before NumPy loads its BLAS: one thread per process

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from bench_mlp import LADDER, batch_of, mlp_spec  # noqa: E402
from harness import blas_info  # noqa: E402

BATCHES = 64                    # the synthetic data set: this many batches per epoch
COLLECTIVE_REPS = 200


def worker(spec: str, model: str, epochs: int) -> dict:
    """Train once (under mpiexec: this rank's part of a data-parallel run); time the
    collectives of one step. Rank 0's numbers are the run's."""
    import graphc
    from graphc.parallel import world
    sizes, batch = LADDER[model]
    m = graphc.load(spec)
    data = batch_of(sizes, batch * BATCHES)
    m.fit(data, epochs=1, batch_size=batch)                   # warm-up: compile, caches
    result = m.fit(data, epochs=epochs, batch_size=batch)
    grad_bytes = sum(v.nbytes for v in m.params.values())
    w = world()
    buffer = np.ones(grad_bytes // 4, np.float32)
    return {"samples_per_s": result.samples_per_s, "grad_bytes": grad_bytes,
            "ranks": w.size, "allreduce_us": _median_us(lambda: w.allreduce(buffer), w),
            "agree_us": _median_us(lambda: w.agree(0), w), "rank": w.rank}


def _median_us(call, w) -> float:
    times = []
    for _ in range(COLLECTIVE_REPS):
        w.agree(0)                      # start together: time the collective, not the skew
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e6)


def launch(spec: Path, model: str, epochs: int, ranks: int) -> dict:
    """Run the worker in a fresh process (under mpiexec for ranks > 1); rank 0's JSON."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(spec), "--models", model,
           "--epochs", str(epochs)]
    if ranks > 1:
        cmd = [shutil.which("mpiexec") or "mpiexec", "-n", str(ranks), *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"bench_mpi: {' '.join(cmd)} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_model(model: str, epochs: int, ranks: int, workdir: Path) -> dict:
    sizes, batch = LADDER[model]
    spec = workdir / f"{model}.yaml"
    spec.write_text(mlp_spec(model, sizes))
    one, many = launch(spec, model, epochs, 1), launch(spec, model, epochs, ranks)
    step_us = batch / many["samples_per_s"] * 1e6
    return {"model": model, "batch": batch, "grad_bytes": one["grad_bytes"], "ranks": ranks,
            "samples_per_s_1": one["samples_per_s"], "samples_per_s_n": many["samples_per_s"],
            "speedup": many["samples_per_s"] / one["samples_per_s"],
            "step_us_n": step_us, "allreduce_us": many["allreduce_us"],
            "agree_us": many["agree_us"],
            "allreduce_share": (many["allreduce_us"] + many["agree_us"]) / step_us}


def table(rows) -> str:
    n = rows[0]["ranks"] if rows else 2
    head = ("model", "batch", "grad KiB", "N=1 samples/s", f"N={n} samples/s",
            f"N={n}/N=1", f"N={n} step us", "allreduce us", "agree us", "collective share")
    out = [head]
    for r in rows:
        out.append((r["model"], str(r["batch"]), f"{r['grad_bytes'] / 1024:.1f}",
                    f"{r['samples_per_s_1']:.0f}", f"{r['samples_per_s_n']:.0f}",
                    f"{r['speedup']:.2f}x", f"{r['step_us_n']:.0f}",
                    f"{r['allreduce_us']:.1f}", f"{r['agree_us']:.1f}",
                    f"{100 * r['allreduce_share']:.0f}%"))
    widths = [max(len(row[i]) for row in out) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in out)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="tiny,small,medium",
                   help="comma-separated, from: " + ", ".join(LADDER))
    p.add_argument("--ranks", type=int, default=2, help="processes of the parallel run")
    p.add_argument("--epochs", type=int, default=3,
                   help=f"epochs timed (one epoch is {BATCHES} batches)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.add_argument("--worker", metavar="SPEC", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in LADDER]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(LADDER)}")
    if args.ranks < 2 or args.epochs < 1:
        p.error("--ranks must be >= 2 and --epochs >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        result = worker(args.worker, args.models[0], args.epochs)
        if result["rank"] == 0:
            print(json.dumps(result))
        return 0
    if shutil.which("mpiexec") is None:
        print("bench_mpi: mpiexec is not on PATH: pip install 'graphc[mpi]'", file=sys.stderr)
        return 2
    info = {**blas_info(), "cpus": os.cpu_count()}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows.append(bench_model(name, args.epochs, args.ranks, Path(tmp)))
            if not args.json:
                print(f"... {name} done", file=sys.stderr)
    if args.json:
        print(json.dumps({"environment": info, "rows": rows}, indent=2))
        return 0
    for key, value in info.items():
        print(f"{key}: {value}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
