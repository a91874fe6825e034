"""graphc's compiled CNN training step against a hand-written NumPy im2col step (and PyTorch).

    python benchmarks/bench_cnn.py [--models digits,lenet5] [--reps N] [--json]

For each model the script writes a graphc spec, compiles its training step (forward,
backward, plain SGD) through the Python API (`graphc.load(spec).step(feeds)`) and times
it next to benchmarks/handwritten_cnn.py on the same layers, batch and initial weights,
in the same process, interleaved rep by rep (A B, B A, ...) so machine noise hits all
alike, each timed step right after an untimed one of its own (harness.time_interleaved); PyTorch eager joins as a column when `import torch` works (never a
dependency). graphc runs three ways, each its own model from the same initial weights:
its default step code (`generated`: the `graphc` column; where numba imports, its window
steps run on the numba kernels of backends/numpy/fused_conv.py, bit for bit NumPy's:
`numba steps` says how many), the `numpy` step code (NumPy kernels alone: `plain`), and,
where numba imports, the `fused` step code (`fused`). The table shows medians, p10s and
the ratios; BLAS (and torch) run on one thread, set before NumPy loads.
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    from harness import pin_one_thread   # the script's folder is sys.path[0]
    pin_one_thread()                # before NumPy loads its BLAS: one thread
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (add_model_args, aligned, check_model_args, median_p10_us,  # noqa: E402
                     run_models, timed)
from bench_mlp import available_paths  # noqa: E402
from handwritten_cnn import HandwrittenCNN  # noqa: E402

import graphc  # noqa: E402
from graphc.executor import using_step_code  # noqa: E402
from graphc.model import load_model  # noqa: E402
from graphc.timing import step_executor  # noqa: E402
from graphc.trainconfig import training_step  # noqa: E402

# name -> (input [C, H, W], batch, layers); ReLU after every conv and dense but the last
MODELS = {
    "digits": ((1, 8, 8), 64, [("conv", 32, 3, 1), ("pool", 2), ("conv", 64, 3, 1),
                               ("pool", 2), ("flatten",), ("dense", 128), ("dense", 10)]),
    "lenet5": ((1, 28, 28), 64, [("conv", 6, 5, 2), ("pool", 2), ("conv", 16, 5, 0),
                                 ("pool", 2), ("flatten",), ("dense", 120), ("dense", 84),
                                 ("dense", 10)]),
}
LR = 0.01


def cnn_spec(name: str, in_shape, layers, lr: float = LR) -> str:
    """The graphc spec of the model with params P1, P2, ... in layer order, as YAML text."""
    params, nodes, prev, shape, k = [], [], "x", list(in_shape), 0
    last_dense = max(i for i, spec in enumerate(layers) if spec[0] == "dense")
    for i, spec in enumerate(layers):
        node = f"h{i}"
        if spec[0] == "conv":
            _, out, kernel, pad = spec
            params += [f"  P{k}: {{shape: [{out}, {shape[0]}, {kernel}, {kernel}], init: "
                       f"{{normal: {{std: {np.sqrt(2 / (shape[0] * kernel * kernel)):.6f}}}}}}}",
                       f"  P{k + 1}: [{out}]"]
            nodes.append(f"  {node}: relu(conv2d({prev}, P{k}, P{k + 1}, padding={pad}))")
            shape, k = [out] + [s + 2 * pad - kernel + 1 for s in shape[1:]], k + 2
        elif spec[0] == "pool":
            nodes.append(f"  {node}: max_pool2d({prev}, kernel=2)")
            shape = [shape[0]] + [s // 2 for s in shape[1:]]
        elif spec[0] == "flatten":
            nodes.append(f"  {node}: flatten({prev})")
            shape = [int(np.prod(shape))]
        else:
            params += [f"  P{k}: {{shape: [{shape[0]}, {spec[1]}], init: he_normal}}",
                       f"  P{k + 1}: [{spec[1]}]"]
            body = f"{prev} @ P{k} + P{k + 1}"
            nodes.append(f"  {node}: {body if i == last_dense else f'relu({body})'}")
            shape, k = [spec[1]], k + 2
        prev = node
    return "\n".join([f"name: cnn_{name}", "inputs:", f"  x: [batch, {', '.join(map(str, in_shape))}]",
                      "  y: {shape: [batch], dtype: int64}", "params:", *params, "nodes:",
                      *nodes, f"  loss: softmax_cross_entropy({prev}, y)", "loss: loss",
                      "train:", f"  optimizer: {{sgd: {{lr: {lr!r}}}}}", "  seed: 0"]) + "\n"


def params_of(model: graphc.Model) -> list:
    """graphc's params P0, P1, ... as arrays the hand-written step updates itself (copies)."""
    params = model.params
    return [params[f"P{i}"].copy() for i in range(len(params))]


def torch_step(layers, params: list, lr: float):
    """PyTorch eager on the same layers and initial weights, one thread; None without torch."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    torch.set_num_threads(1)
    ts = [torch.tensor(p, requires_grad=True) for p in params]

    def step(x, y):
        h, k = x, 0
        dense = sum(1 for spec in layers if spec[0] == "dense")
        for spec in layers:
            if spec[0] == "conv":
                h, k = F.relu(F.conv2d(h, ts[k], ts[k + 1], padding=spec[3])), k + 2
            elif spec[0] == "pool":
                h = F.max_pool2d(h, 2)
            elif spec[0] == "flatten":
                h = torch.flatten(h, 1)
            else:
                dense -= 1
                h, k = h @ ts[k] + ts[k + 1], k + 2
                h = F.relu(h) if dense else h
        loss = F.cross_entropy(h, y)
        loss.backward()
        with torch.no_grad():
            for t in ts:
                t -= lr * t.grad
                t.grad = None
        return loss.item()
    return step, torch


def graphc_step(path: Path, step_code: str, feeds: dict):
    """One training step of the spec at `path` under `step_code` (its own model)."""
    model = graphc.load(path)

    def step():
        with using_step_code(step_code):        # the first step compiles the plan
            return model.step(feeds)
    return step


def numba_steps(path: Path, batch: int) -> int:
    """How many steps of the spec's training step the default step code runs in numba."""
    model = load_model(path)
    step, _, dims = training_step(model, batch)
    return step_executor(model, step, dims).numba_steps


def bench_model(name: str, reps: int, seconds: float, workdir: Path, with_torch: bool) -> dict:
    in_shape, batch, layers = MODELS[name]
    path = workdir / f"cnn_{name}.yaml"
    path.write_text(cnn_spec(name, in_shape, layers))
    model = graphc.load(path)
    hand = HandwrittenCNN(layers, params_of(model), (batch,) + in_shape, LR)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch,) + in_shape).astype(np.float32)
    y = rng.integers(0, 10, batch).astype(np.int64)
    calls = {"graphc": lambda: model.step({"x": x, "y": y}),
             "plain": graphc_step(path, "numpy", {"x": x, "y": y}),
             "numpy": lambda: hand.step(x, y)}
    if available_paths(["fused"]):
        calls["fused"] = graphc_step(path, "fused", {"x": x, "y": y})
    torch_run = torch_step(layers, params_of(model), LR) if with_torch else None
    if torch_run is not None:
        step, torch = torch_run
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)
        calls["torch"] = lambda: step(tx, ty)
    times, reps = timed(calls, reps, seconds)
    us = median_p10_us(times)
    plan = model.plan(batch)
    out = {"model": name, "batch": batch, "reps": reps,
           **{f"{n}_us": v[0] for n, v in us.items()},
           **{f"{n}_p10_us": v[1] for n, v in us.items()},
           "graphc_over_numpy": us["graphc"][0] / us["numpy"][0],
           "graphc_over_numpy_p10": us["graphc"][1] / us["numpy"][1],
           "arena_bytes": plan.arena_bytes, "lower_bound_bytes": plan.lower_bound_bytes,
           "naive_bytes": plan.naive_bytes, "numba_steps": numba_steps(path, batch)}
    for a, b in (("plain", "numpy"), ("fused", "numpy"), ("graphc", "torch"),
                 ("plain", "torch"), ("fused", "torch")):
        if a in us and b in us:
            out[f"{a}_over_{b}"] = us[a][0] / us[b][0]
            out[f"{a}_over_{b}_p10"] = us[a][1] / us[b][1]
    return out


def _cell(r: dict, key: str) -> str:
    """`median (p10)` of a time or ratio in the row, "-" where that contender did not run."""
    if key not in r:
        return "-"
    p10 = r[key.replace("_us", "_p10_us") if key.endswith("_us") else key + "_p10"]
    return f"{r[key]:.0f} ({p10:.0f})" if key.endswith("_us") else f"{r[key]:.2f} ({p10:.2f})"


def table(rows) -> str:
    """graphc's default step (`graphc`, with its numba steps), its step on NumPy alone
    (`plain`), its fused step (`fused`), the hand-written NumPy step and PyTorch: times and
    ratios, median (p10)."""
    keys = ["graphc_us", "plain_us", "fused_us", "numpy_us", "torch_us", "graphc_over_numpy",
            "plain_over_numpy", "fused_over_numpy", "graphc_over_torch", "plain_over_torch",
            "fused_over_torch"]
    head = ["model", "batch", "numba steps", "graphc us (p10)", "plain us (p10)",
            "fused us (p10)", "numpy us (p10)", "torch us (p10)", "graphc/numpy",
            "plain/numpy", "fused/numpy", "graphc/torch", "plain/torch", "fused/torch",
            "arena MiB", "naive/arena"]
    lines = [head]
    for r in rows:
        lines.append([r["model"], str(r["batch"]), str(r["numba_steps"]),
                      *(_cell(r, k) for k in keys),
                      f"{r['arena_bytes'] / 2**20:.2f}",
                      f"{r['naive_bytes'] / r['arena_bytes']:.2f}"])
    return aligned(lines, left=1)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(p, MODELS)
    p.add_argument("--no-torch", action="store_true", help="leave out the PyTorch column")
    args = p.parse_args(argv)
    check_model_args(p, args, MODELS)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_models(args, lambda name, workdir: bench_model(
        name, args.reps, args.seconds, workdir, with_torch=not args.no_torch), table)

if __name__ == "__main__":
    sys.exit(main())
