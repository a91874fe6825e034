"""What each pass of the NumPy backend over the bound steps saves, measured with and without it.

    python benchmarks/bench_passes.py [--seconds 8] [--json]

Each row compiles one MLP of bench_mlp.py's ladder twice in this process, with the pass
and without it (the pass switched off for the second compile only), and times both
training steps (`Model.step`, the default step code) interleaved rep by rep
(harness.time_interleaved). `saved us` is the median over reps of the paired difference
(without - with) of the two steps timed next to each other; `with/without` the ratio of
their medians. Both give the same numbers bit for bit (tests/test_blas.py,
tests/test_optim.py). BLAS runs on one thread.

- `blas`: a large weight's plain-SGD update and its gradient's GEMM as one BLAS call
  (backends/numpy/blas.py); the medium MLP under plain SGD.
- `flat stash`: gradients computed into the flat update's stash instead of copied into
  it (backends/numpy/flat.py, `stash_gradients`); the deep MLP under Adam.
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    from harness import pin_one_thread   # the script's folder is sys.path[0]
    pin_one_thread()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_mlp import LADDER, batch_of, build_graphc, mlp_spec  # noqa: E402
from harness import aligned, blas_info, timed  # noqa: E402

from graphc.backends.numpy import blas, flat  # noqa: E402


def _no_gemm_update(monkey: dict) -> None:
    monkey["GEMM_UPDATE_BYTES"] = (blas, blas.GEMM_UPDATE_BYTES)
    blas.GEMM_UPDATE_BYTES = 1 << 62


def _stash_plain_sgd_only(monkey: dict) -> None:
    """stash_gradients as it was before every optimizer's gradients went into the stash."""
    place = flat.stash_gradients
    monkey["stash_gradients"] = (flat, place)
    flat.stash_gradients = lambda steps, values, buffers: place(
        [s for s in steps if s.attrs.get("folded")], values, buffers)


PASSES = {    # name -> (model, optimizer, switch it off)
    "blas": ("medium", "sgd: {lr: 0.01}", _no_gemm_update),
    "flat stash": ("deep", "adam: {lr: 0.001}", _stash_plain_sgd_only),
}


def compiled(spec: Path, feeds: dict, switch_off=None):
    """The model's compiled step (one step taken), with the pass switched off if asked."""
    monkey: dict = {}
    if switch_off:
        switch_off(monkey)
    try:
        step = build_graphc(spec)
        step.run(feeds)
    finally:
        for name, (module, value) in monkey.items():
            setattr(module, name, value)
    return step


def bench_pass(name: str, seconds: float, workdir: Path) -> dict:
    model, optimizer, switch_off = PASSES[name]
    sizes, batch = LADDER[model]
    spec = workdir / f"{model}.yaml"
    text = mlp_spec(model, sizes)
    assert "{sgd: {lr: 0.01}}" in text
    spec.write_text(text.replace("sgd: {lr: 0.01}", optimizer))
    feeds = batch_of(sizes, batch)
    with_it, without = compiled(spec, feeds), compiled(spec, feeds, switch_off)
    times, reps = timed({"with": lambda: with_it.run(feeds),
                         "without": lambda: without.run(feeds)}, 0, seconds)
    return {"pass": name, "model": model, "optimizer": optimizer.split(":")[0],
            "reps": reps, "with_us": float(np.median(times["with"])) * 1e6,
            "without_us": float(np.median(times["without"])) * 1e6,
            "saved_us": float(np.median(times["without"] - times["with"])) * 1e6,
            "kernel_calls": [with_it.kernel_calls, without.kernel_calls]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=8.0, help="time per pass")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench_pass(name, args.seconds, Path(tmp)) for name in PASSES]
    if args.json:
        print(json.dumps({"environment": blas_info(), "rows": rows}))
        return 0
    for key, value in blas_info().items():
        print(f"{key}: {value}")
    lines = [("pass", "model", "optimizer", "reps", "with us", "without us", "saved us",
              "with/without", "calls with/without")]
    lines += [(r["pass"], r["model"], r["optimizer"], str(r["reps"]), f"{r['with_us']:.1f}",
               f"{r['without_us']:.1f}", f"{r['saved_us']:.1f}",
               f"{r['with_us'] / r['without_us']:.3f}",
               "/".join(map(str, r["kernel_calls"]))) for r in rows]
    print(aligned(lines, left=3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
