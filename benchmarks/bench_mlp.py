"""graphc's compiled training step against a hand-written, preallocated NumPy step.

    python benchmarks/bench_mlp.py [--models tiny,small] [--reps N] [--json]
                                   [--paths reference,generated,fused] [--no-frameworks]

For each MLP of the ladder the script writes a graphc spec, compiles its
training step (forward + backward + plain SGD) through graphc's Python API
(`graphc.load(spec).step(feeds)`, docs/api.md) and times it next to
benchmarks/handwritten.py on the same model, batch and initial weights, in the same process,
interleaved rep by rep (A B, B A, ...) so machine noise hits both alike, each timed step
right after an untimed one of its own (a training loop's warm cache for every contender:
harness.time_interleaved). One rep is one step; the table shows the
median and p10 over the reps, the step of only the matmuls (the floor), and
the memory figures of graphc's plan. BLAS runs on one thread.

graphc runs each of its step codes (docs/design.md): `reference` (a loop over bound
kernels), `generated` (straight-line code, the default) and `fused` (numba kernels, when
numba imports); the graphc columns are the default's, `ref/np` and `fused/np` the
others', `calls` the kernel calls per step of each. jax.jit and PyTorch eager run the
same step when they import (benchmarks/frameworks.py), on one thread too, each in a
child process of its own next to the hand-written step (their ratio is measured there,
in the same run): loaded into this process, their thread pools slowed NumPy's matmuls
here by 2-4x. jax's child times graphc's fused step too, so `fused/jax` is a ratio of one
run, not of two ratios to NumPy taken minutes apart.
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    from harness import pin_one_thread   # the script's folder is sys.path[0]
    pin_one_thread()                # before NumPy loads its BLAS: one thread, for every model
    os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from frameworks import BUILDERS  # noqa: E402
from harness import (add_model_args, aligned, check_model_args, median_p10_us,  # noqa: E402
                     relu_layers, run_models, timed)
from handwritten import HandwrittenMLP  # noqa: E402

import graphc  # noqa: E402
from graphc.executor import DEFAULT_STEP_CODE, STEP_CODES, using_step_code  # noqa: E402

LADDER = {     # name -> (layer sizes, batch)
    "tiny": ([2, 100, 3], 32),
    "small": ([64, 128, 128, 10], 64),
    "medium": ([784, 512, 512, 10], 256),
    "deep": ([32] + [64] * 16 + [10], 64),
}
LR = 0.01


def mlp_spec(name: str, sizes, lr: float = LR, dtype: str = "float32") -> str:
    """The graphc spec of a ReLU MLP with softmax cross-entropy and plain SGD, as YAML text."""
    layers = len(sizes) - 1
    lines = [f"name: mlp_{name}", f"dtype: {dtype}", "inputs:", f"  x: [batch, {sizes[0]}]",
             "  y: {shape: [batch], dtype: int64}", "params:"]
    for i in range(1, layers + 1):
        lines += [f"  W{i}: {{shape: [{sizes[i - 1]}, {sizes[i]}], init: he_normal}}",
                  f"  b{i}: [{sizes[i]}]"]
    hidden, prev = relu_layers(layers)
    lines += ["nodes:", *hidden]
    lines += [f"  scores: {prev} @ W{layers} + b{layers}",
              "  loss: softmax_cross_entropy(scores, y)", "loss: loss", "outputs: [scores]",
              "train:", f"  optimizer: {{sgd: {{lr: {lr!r}}}}}", "  seed: 0"]
    return "\n".join(lines) + "\n"


@dataclass
class GraphcStep:
    """A compiled graphc training step: `run(feeds)` is one SGD step, returning the loss."""
    model: graphc.Model
    step_code: str = DEFAULT_STEP_CODE

    def run(self, feeds) -> float:
        if self.model._step is None:        # the first step compiles the plan in its step code
            with using_step_code(self.step_code):
                return self.model.step(feeds)
        return self.model.step(feeds)       # as `graphc train` steps: no context per step

    @property
    def kernel_calls(self) -> int:
        """Kernel calls per step of the compiled executor (after the first `run`)."""
        (ex,) = self.model._step.cache.values()     # the runner Model.step compiled
        return ex.kernel_calls

    def params(self, layers: int) -> tuple:
        params = self.model.params
        return ([params[f"W{i}"] for i in range(1, layers + 1)],
                [params[f"b{i}"] for i in range(1, layers + 1)])

    def plan(self, batch: int):
        return self.model.plan(batch)


def build_graphc(spec_path, step_code: str = DEFAULT_STEP_CODE) -> GraphcStep:
    """A spec's training step, run as `graphc train` runs each batch (Model.step)."""
    return GraphcStep(graphc.load(spec_path), step_code)


def available_paths(paths) -> list:
    """The step codes asked for that can run here (fused needs numba)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return [p for p in paths if p != "fused"]
    return list(paths)


def batch_of(sizes, batch: int, seed: int = 0, dtype=np.float32) -> dict:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((batch, sizes[0])).astype(dtype),
            "y": rng.integers(0, sizes[-1], batch).astype(np.int64)}


def bench_model(name: str, reps: int, seconds: float, workdir: Path, paths,
                frameworks: bool = True) -> dict:
    sizes, batch = LADDER[name]
    path = workdir / f"mlp_{name}.yaml"
    path.write_text(mlp_spec(name, sizes))
    steps = {code: build_graphc(path, code) for code in paths}
    weights, biases = next(iter(steps.values())).params(len(sizes) - 1)
    hand = HandwrittenMLP(weights, biases, batch, LR)
    feeds = batch_of(sizes, batch)
    x, y = feeds["x"], feeds["y"]
    calls = {code: (lambda g=g: g.run(feeds)) for code, g in steps.items()}
    calls.update({"numpy": lambda: hand.step(x, y), "floor": lambda: hand.matmul_floor(x)})
    times, reps = timed(calls, reps, seconds)
    default = DEFAULT_STEP_CODE if DEFAULT_STEP_CODE in steps else next(iter(steps))
    kernel_calls = {code: g.kernel_calls for code, g in steps.items()}
    result = row(name, sizes, batch, reps, times, steps[default].plan(batch), default,
                 kernel_calls)
    for framework in (BUILDERS if frameworks else ()):
        ratio = framework_ratio(name, framework, reps, seconds,
                                "fused" in paths and framework == "jax.jit")
        if ratio is not None:
            result["over_numpy"][framework] = ratio["over_numpy"]
            if ratio["fused_over"] is not None:
                result["fused_over"][framework] = ratio["fused_over"]
    return result


def framework_ratio(name: str, framework: str, reps: int, seconds: float, fused: bool):
    """{"over_numpy": framework / hand-written NumPy, "fused_over": graphc's fused step /
    framework (None without numba)}, medians over reps measured in one child process
    (`--contender`), or None when the framework does not import there."""
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--models", name,
                           "--contender", framework, "--reps", str(reps),
                           "--seconds", str(seconds)] + ([] if fused else ["--paths", "generated"]),
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the {framework} contender failed:\n{done.stderr}")
    result = json.loads(done.stdout)
    return None if result["over_numpy"] is None else result


def contender(name: str, framework: str, reps: int, seconds: float, fused: bool) -> dict:
    """{"over_numpy": framework / hand-written NumPy, "fused_over": graphc's fused step /
    framework}, timed in one run (fused: where numba imports, else None), or None as the
    ratio when the framework does not import; the --contender child runs this."""
    sizes, batch = LADDER[name]
    feeds = batch_of(sizes, batch)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"mlp_{name}.yaml"
        path.write_text(mlp_spec(name, sizes))
        graphc_step = build_graphc(path, "fused" if fused else DEFAULT_STEP_CODE)
    weights, biases = graphc_step.params(len(sizes) - 1)      # copied by each contender
    hand = HandwrittenMLP(weights, biases, batch, LR)
    step = BUILDERS[framework](weights, biases, LR, feeds["x"], feeds["y"])
    if step is None:
        return {"over_numpy": None, "fused_over": None}
    calls = {"numpy": lambda: hand.step(feeds["x"], feeds["y"]), framework: step}
    if fused:
        calls["fused"] = lambda: graphc_step.run(feeds)
    times, _ = timed(calls, reps, seconds)
    median = {n: float(np.median(t)) for n, t in times.items()}
    return {"over_numpy": median[framework] / median["numpy"],
            "fused_over": median["fused"] / median[framework] if "fused" in median else None}


def row(name, sizes, batch, reps, times, plan, default, kernel_calls) -> dict:
    us = median_p10_us(times)
    return {
        "model": name, "sizes": list(sizes), "batch": batch, "reps": reps,
        "step_code": default,
        "graphc_us": us[default][0], "graphc_p10_us": us[default][1],
        "numpy_us": us["numpy"][0], "numpy_p10_us": us["numpy"][1],
        "floor_us": us["floor"][0], "floor_p10_us": us["floor"][1],
        "graphc_over_numpy": us[default][0] / us["numpy"][0],
        "graphc_over_numpy_p10": us[default][1] / us["numpy"][1],
        "numpy_over_floor": us["numpy"][0] / us["floor"][0],
        "over_numpy": {n: us[n][0] / us["numpy"][0] for n in us if n not in ("numpy", "floor")},
        "fused_over": {},       # framework -> fused / framework, timed together (contender)
        "us": {n: us[n][0] for n in us},
        "kernel_calls": kernel_calls,
        "naive_bytes": getattr(plan, "naive_bytes", None),
        "lower_bound_bytes": getattr(plan, "lower_bound_bytes", None),
        "arena_bytes": getattr(plan, "arena_bytes", None),
    }


def _mib(nbytes) -> str:
    return "-" if nbytes is None else f"{nbytes / 2**20:.3f}"


def table(rows) -> str:
    head = ("model", "batch", "graphc us/step (p10)", "numpy us/step (p10)",
            "graphc/numpy (p10)", "ref/np", "fused/np", "jax/np", "torch/np", "fused/jax",
            "calls r/g/f",
            "floor us", "numpy/floor", "naive MiB", "bound MiB", "arena MiB", "naive/arena")
    lines = [head]
    for r in rows:
        naive, arena = r["naive_bytes"], r["arena_bytes"]
        ratio = r["over_numpy"]
        lines.append((
            r["model"], str(r["batch"]),
            f"{r['graphc_us']:.1f} ({r['graphc_p10_us']:.1f})",
            f"{r['numpy_us']:.1f} ({r['numpy_p10_us']:.1f})",
            f"{r['graphc_over_numpy']:.2f} ({r['graphc_over_numpy_p10']:.2f})",
            *(f"{ratio[n]:.2f}" if n in ratio else "-"
              for n in ("reference", "fused", "jax.jit", "torch")),
            f"{r['fused_over']['jax.jit']:.2f}" if "jax.jit" in r["fused_over"] else "-",
            "/".join(str(r["kernel_calls"].get(c, "-")) for c in ("reference", "generated",
                                                                   "fused")),
            f"{r['floor_us']:.1f}",
            f"{r['numpy_over_floor']:.2f}", _mib(naive), _mib(r["lower_bound_bytes"]),
            _mib(arena), f"{naive / arena:.2f}" if naive and arena else "-"))
    return aligned(lines, left=2)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(p, LADDER)
    p.add_argument("--paths", default=",".join(c for c in STEP_CODES if c != "numpy"),
                   help="graphc step codes to time (fused only where numba imports; "
                        "numpy is generated on an MLP)")
    p.add_argument("--contender", choices=sorted(BUILDERS), help=argparse.SUPPRESS)
    p.add_argument("--no-frameworks", action="store_true",
                   help="skip the jax.jit and PyTorch columns even when they import")
    args = p.parse_args(argv)
    check_model_args(p, args, LADDER)
    args.paths = [c.strip() for c in args.paths.split(",") if c.strip()]
    wrong = [c for c in args.paths if c not in STEP_CODES]
    if wrong or not args.paths:
        p.error(f"unknown step code(s) {', '.join(wrong)}; known: {', '.join(STEP_CODES)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.contender:
        print(json.dumps(contender(args.models[0], args.contender, args.reps, args.seconds,
                                   "fused" in available_paths(args.paths))))
        return 0
    paths = available_paths(args.paths)
    return run_models(args, lambda name, workdir: bench_model(
        name, args.reps, args.seconds, workdir, paths, not args.no_frameworks), table)

if __name__ == "__main__":
    sys.exit(main())
