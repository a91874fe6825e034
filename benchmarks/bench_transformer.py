"""The transformer's training step (specs/sort_transformer.yaml) against PyTorch eager.

    python benchmarks/bench_transformer.py [--batch 64] [--reps N | --seconds S] [--json]
                                           [--no-torch]

graphc runs the spec's compiled training step (`graphc.load(spec).step(feeds)`: forward,
backward, Adam) twice, each its own model from the same initial weights: its default
step code (`generated`, NumPy kernels only: the `graphc` column) and, where numba
imports, the `fused` step code (numba kernels for gelu, layer_norm, softmax_grad, Adam
and softmax cross-entropy, backends/numpy/fused_seq.py and fusion.py: the `fused`
column). PyTorch runs the same model written as a module (same shapes, same ops: tanh-GELU, pre-norm, causal `F.scaled_dot_product_attention`, tied output
embedding, Adam) in eager mode, when torch is importable (an optional column, never a
dependency). Both run on one thread, interleaved rep by rep in the same process, so
machine noise hits both alike (each timed step right after an untimed one of its own); the table shows medians, p10s and their ratio. It also
reports the plan's arena against its lower bound (the largest sum of bytes live at one
step), and which BLAS kernel NumPy ran (harness.blas_info).
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
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cnn import graphc_step  # noqa: E402
from bench_mlp import available_paths  # noqa: E402
from harness import blas_info, median_p10_us, timed  # noqa: E402

import graphc  # noqa: E402
from graphc.datasets import sort_digits  # noqa: E402

SPEC = Path(__file__).resolve().parent.parent / "specs" / "sort_transformer.yaml"
WIDTH, HEADS, BLOCKS, TOKENS, LENGTH, LR = 64, 4, 2, 11, 6, 0.003


def batch_of(batch: int) -> dict:
    x, y, _ = sort_digits(batch, np.random.default_rng(0))
    return {"x": x.astype(np.int64), "y": y.astype(np.int64)}


def torch_step(batch: dict):
    """A no-argument PyTorch eager training step of the spec's model, or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    model = _torch_model(torch)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    x, y = torch.from_numpy(batch["x"]), torch.from_numpy(batch["y"])

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x).reshape(-1, 10), y.reshape(-1))
        loss.backward()
        opt.step()
    return step


def _torch_model(torch):
    nn, F = torch.nn, torch.nn.functional

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
            self.qkv = nn.Linear(WIDTH, 3 * WIDTH, bias=False)
            self.out = nn.Linear(WIDTH, WIDTH)
            self.mlp = nn.Sequential(nn.Linear(WIDTH, 4 * WIDTH), nn.GELU(approximate="tanh"),
                                     nn.Linear(4 * WIDTH, WIDTH))

        def forward(self, x):
            n, t, _ = x.shape
            q, k, v = (a.view(n, t, HEADS, -1).transpose(1, 2)
                       for a in self.qkv(self.norm1(x)).split(WIDTH, dim=-1))
            heads = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.out(heads.transpose(1, 2).reshape(n, t, WIDTH))
            return x + self.mlp(self.norm2(x))

    class Sorter(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = nn.Parameter(0.1 * torch.randn(10, WIDTH))
            self.pos = nn.Parameter(0.1 * torch.randn(TOKENS, WIDTH))
            self.blocks = nn.Sequential(*(Block() for _ in range(BLOCKS)))
            self.norm, self.out_b = nn.LayerNorm(WIDTH), nn.Parameter(torch.zeros(10))

        def forward(self, x):
            h = self.norm(self.blocks(self.tok[x] + self.pos))
            return (h @ self.tok.T + self.out_b)[:, TOKENS - LENGTH:]

    torch.manual_seed(0)
    return Sorter()


def run(batch_size: int, reps: int, seconds: float, with_torch: bool = True) -> dict:
    model, feeds = graphc.load(SPEC), batch_of(batch_size)
    calls = {"graphc": lambda: model.step(feeds)}
    if available_paths(["fused"]):
        calls["fused"] = graphc_step(SPEC, "fused", feeds)
    other = torch_step(feeds) if with_torch else None
    if other is not None:
        calls["torch"] = other
    times, reps = timed(calls, reps, seconds)
    plan = model.plan(batch_size)
    us = median_p10_us(times)
    return {"batch": batch_size, "reps": reps, "us": us, **over_torch(us),
            "arena_bytes": plan.arena_bytes, "lower_bound_bytes": plan.lower_bound_bytes,
            "naive_bytes": plan.naive_bytes}


def over_torch(us: dict) -> dict:
    """graphc/torch and fused/torch of the medians (and `_p10` of the p10s); None where a
    column did not run."""
    out = {}
    for name in ("graphc", "fused"):
        ran = name in us and "torch" in us
        out[f"{name}_over_torch"] = us[name][0] / us["torch"][0] if ran else None
        if ran:
            out[f"{name}_over_torch_p10"] = us[name][1] / us["torch"][1]
    return out


def table(r: dict) -> str:
    lines = [f"batch {r['batch']}, {r['reps']} reps, one thread"]
    for name, (median, p10) in r["us"].items():
        lines.append(f"{name:7s} {median:10.1f} us/step (p10 {p10:.1f})")
    for name in ("graphc", "fused"):
        ratio = r[f"{name}_over_torch"]
        why = "numba is not importable" if name not in r["us"] else \
            "no torch column: --no-torch, or torch is not importable"
        lines.append(f"{name}/torch".ljust(14) + (
            f"{ratio:.2f} (p10 {r[f'{name}_over_torch_p10']:.2f}; target <= 0.70)" if ratio
            else f"- ({why})"))
    arena, bound = r["arena_bytes"], r["lower_bound_bytes"]
    lines.append(f"arena {arena / 2**20:.3f} MiB, lower bound {bound / 2**20:.3f} MiB, naive "
                 f"{r['naive_bytes'] / 2**20:.3f} MiB: arena/bound {arena / bound:.3f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--reps", type=int, default=0, help="steps timed per contender")
    p.add_argument("--seconds", type=float, default=10.0, help="time budget without --reps")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.add_argument("--no-torch", action="store_true", help="leave out the PyTorch column")
    args = p.parse_args(argv)
    info = blas_info()
    with np.errstate(over="ignore", under="ignore"):
        result = run(args.batch, args.reps, args.seconds, with_torch=not args.no_torch)
    if args.json:
        print(json.dumps({"environment": info, **result}, indent=2))
    else:
        print("\n".join(f"{k}: {v}" for k, v in info.items()))
        print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
