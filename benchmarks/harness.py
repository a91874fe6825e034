"""What the benchmark scripts share: one BLAS thread, the BLAS report, interleaved timing,
the models loop and the aligned table.

A script calls `pin_one_thread()` before anything imports NumPy, so this module imports
NumPy only inside the functions that run after it (never at import time).
"""
from __future__ import annotations

import ctypes
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
BLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") + THREAD_VARS + ("XLA_FLAGS",)


def pin_one_thread() -> None:
    """One BLAS (and OpenMP) thread: only takes effect before NumPy loads its BLAS."""
    for var in THREAD_VARS:
        os.environ[var] = "1"


def blas_info() -> dict:
    """Which BLAS NumPy was built with, the kernel it runs, and the variables that steer it."""
    import numpy as np
    info = {"numpy": np.__version__}
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["blas"] = f"{blas.get('name')} {blas.get('version')}"
    except Exception:                        # older NumPy: no dict form; not worth failing for
        info["blas"] = "unknown"
    info.update(_openblas_runtime())
    for var in BLAS_VARS:
        info[var] = os.environ.get(var, "(unset)")
    return info


def _openblas_runtime() -> dict:
    """OpenBLAS's own word on its core type and threads, from the loaded library (Linux)."""
    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f if "openblas" in line.lower()}
    except OSError:
        return {}
    for path in sorted(libs):
        lib = ctypes.CDLL(path)
        for prefix, suffix in (("scipy_openblas", "64_"), ("openblas", "64_"), ("openblas", "")):
            core = getattr(lib, f"{prefix}_get_corename{suffix}", None)
            threads = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            if core is not None and threads is not None:
                core.restype, threads.restype = ctypes.c_char_p, ctypes.c_int
                return {"openblas_core": core().decode(), "openblas_threads": threads()}
    return {}


def time_interleaved(calls: dict, reps: int) -> dict:
    """name -> per-rep seconds; each rep times one call of each, the order reversed every
    other rep (machine drift hits all alike). Each timed call comes right after an untimed
    call of its own, as a training step follows its model's previous step: without it the
    cache held the data of whichever call ran before, which favoured some (a hand-written
    step timed after its own matmul floor; the first and last calls, run twice in a row
    where the order turns): the medium MLP's hand-written step ran 6% faster after its
    floor than after another model's step."""
    import numpy as np
    names = list(calls)
    times = {n: np.empty(reps) for n in names}
    clock = time.perf_counter
    enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(reps):
            for n in (names if r % 2 == 0 else names[::-1]):
                f = calls[n]
                f()
                t = clock()
                f()
                times[n][r] = clock() - t
    finally:
        if enabled:
            gc.enable()
    return times


def auto_reps(calls: dict, seconds: float) -> int:
    """Reps that fill about `seconds`, from one timed round of every call (a rep runs
    each call twice: time_interleaved)."""
    start = time.perf_counter()
    for f in calls.values():
        f()
    per_rep = 2 * (time.perf_counter() - start)
    return int(min(5000, max(30, seconds / max(per_rep, 1e-9))))


def timed(calls: dict, reps: int, seconds: float) -> tuple:
    """(per-rep seconds of each call, reps) after a warm-up (compile, caches, BLAS);
    reps 0 means about `seconds` of them."""
    for _ in range(5):
        for f in calls.values():
            f()
    reps = reps or auto_reps(calls, seconds)
    return time_interleaved(calls, reps), reps


def median_p10_us(times: dict) -> dict:
    """name -> (median, 10th percentile) of its per-rep seconds, in microseconds."""
    import numpy as np
    return {n: (float(np.median(t)) * 1e6, float(np.percentile(t, 10)) * 1e6)
            for n, t in times.items()}


def add_model_args(p, models) -> None:
    """The options every models benchmark takes: --models, --reps, --seconds, --json."""
    p.add_argument("--models", default=",".join(models),
                   help="comma-separated, from: " + ", ".join(models))
    p.add_argument("--reps", type=int, default=0,
                   help="steps timed per model and contender (default: about --seconds)")
    p.add_argument("--seconds", type=float, default=6.0,
                   help="time per model when --reps is not given")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")


def check_model_args(p, args, models) -> None:
    """--models as a list of known names and --reps >= 0, or argparse's usage error."""
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in models]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(models)}")
    if args.reps < 0:
        p.error("--reps must be >= 0")


def run_models(args, bench, table) -> int:
    """Print the environment, run `bench(name, workdir)` for each model (a row each), then
    the table of the rows, or one JSON object of both under --json."""
    import numpy as np
    info = blas_info()
    if not args.json:
        for key, value in info.items():
            print(f"{key}: {value}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, np.errstate(over="ignore", under="ignore"):
        for name in args.models:
            rows.append(bench(name, Path(tmp)))
            if not args.json:
                print(f"... {name} done ({rows[-1]['reps']} reps)", file=sys.stderr)
    if args.json:
        print(json.dumps({"environment": info, "rows": rows}, indent=2))
        return 0
    print(table(rows))
    return 0


def aligned(lines, left: int = 1) -> str:
    """Rows of cells as columns two spaces apart: the first `left` columns to the left,
    the rest to the right; trailing blanks stripped."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(c.rjust(w) if i >= left else c.ljust(w)
                               for i, (c, w) in enumerate(zip(line, widths))).rstrip()
                     for line in lines)


def relu_layers(layers: int) -> tuple:
    """(spec lines `hI: relu(prev @ WI + bI)` of an MLP's hidden layers 1 .. layers-1 on
    input x, the name of the last one): the output layer and loss are the caller's."""
    lines, prev = [], "x"
    for i in range(1, layers):
        lines.append(f"  h{i}: relu({prev} @ W{i} + b{i})")
        prev = f"h{i}"
    return lines, prev
