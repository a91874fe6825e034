"""`graphc time`: the compiled training step timed on synthetic data of the spec's shapes.

Like `caffe time`: warm up, then time whole steps (median and p10) on the step code
executors run (executor.py) and, in a separate pass, each call of that path (a bound
kernel, or a run of steps fused into one call), summed per (op, phase) of its first step.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from . import shapes as S
from .executor import Executor
from .limits import check_memory
from .model import Model, Runner, label_classes, zero_state
from .optim import LR, StepGraph
from .remat import NONE, MemoryPolicy


@dataclass(frozen=True)
class Timing:
    batch_size: int
    steps: int
    step_us_median: float
    step_us_p10: float
    per_op: list          # [{"op", "phase", "us"}], us per step, slowest first
    step_code: str = "reference"    # which path ran (executor.STEP_CODES)
    plan_steps: int = 0             # the plan's steps (one bound kernel each)
    kernel_calls: int = 0           # kernel calls one training step makes on that path
    numba_steps: int = 0            # plan steps it runs in numba kernels

    def json(self) -> dict:
        """The contract's object (contract §2): the step code is reported beside it."""
        return {"batch_size": self.batch_size, "steps": self.steps,
                "step_us_median": self.step_us_median, "step_us_p10": self.step_us_p10,
                "per_op": self.per_op}


def synthetic_batch(model: Model, dims: Mapping[str, int], seed: int = 0) -> dict:
    """Standard-normal floats and in-range integer labels for every fed input, its
    symbolic dims sized by `dims`."""
    rng = np.random.default_rng(seed)
    graph, feeds = model.graph, {}
    for name in model.fed_inputs:
        n = graph[name]
        shape = S.bind(n.shape, dims)
        check_memory(int(np.prod(shape, dtype=object)) * np.dtype(n.dtype).itemsize,
                     f"a synthetic batch of shape {list(shape)} for input '{name}'",
                     mark=n.mark, node=name)
        if n.dtype.startswith("int"):
            feeds[name] = rng.integers(0, _classes(model, name), shape).astype(n.dtype)
        else:
            feeds[name] = rng.standard_normal(shape).astype(n.dtype)
    return feeds


def _classes(model: Model, labels: str) -> int:
    """The class count the graph reads `labels` against (model.label_classes), else 2."""
    return label_classes(model.graph).get(labels, (2,))[0]


def time_step(model: Model, step: StepGraph, batch: int, dims: Mapping[str, int],
              steps: int = 200, warmup: int = 20, reuse: bool = True,
              memory: MemoryPolicy = NONE) -> Timing:
    """Median/p10 of whole training steps with its symbolic dims sized by `dims` (`batch`
    is the batch size they give), planned under `memory`, then per-kernel time summed by
    (op, phase)."""
    ex = step_executor(model, step, dims, reuse, memory)
    check_memory(8 * steps * (1 + len(ex.timed_runs)), f"timing {steps} steps (a time per "
                 f"step and per kernel call)")
    feeds = synthetic_batch(model, dims)
    ex.feed(feeds)
    for _ in range(warmup):
        ex.run()
    samples = np.empty(steps)
    for i in range(steps):
        t0 = time.perf_counter()
        ex.run()
        samples[i] = time.perf_counter() - t0
    return Timing(batch, steps, float(np.median(samples)) * 1e6,
                  float(np.percentile(samples, 10)) * 1e6, _per_op(ex, steps),
                  ex.step_code, len(ex.plan.steps), ex.kernel_calls, ex.numba_steps)


def step_executor(model: Model, step: StepGraph, dims: Mapping[str, int],
                  reuse: bool = True, memory: MemoryPolicy = NONE) -> Executor:
    """The training step's executor with its symbolic dims sized by `dims`, planned under
    `memory`, over the store `seed_store` fills."""
    seed_store(model, step)
    return Runner(step.graph, model.store, {model.graph.loss}, step.forward, reuse,
                  memory).executor(dims)


def seed_store(model: Model, step: StepGraph) -> None:
    """Optimizer state at zeros, laid out as training lays it (model.zero_state), where the
    store has none, and the learning rate at 1e-6 where it has none."""
    if any(n.name not in model.store for n in step.graph.leaves("state")):
        zero_state(model, step.graph, step.states)
    model.store.setdefault(LR, np.asarray(1e-6, dtype=model.graph.dtype))


def _per_op(ex, steps: int) -> list:
    """Median time of each bound call (robust to a busy machine), summed per (op, phase)."""
    runs = ex.timed_runs
    samples = np.zeros((steps, len(runs)))
    clock = time.perf_counter
    with np.errstate(all="ignore"):
        for r in range(steps):
            for i, (_, call) in enumerate(runs):
                t0 = clock()
                call()
                samples[r, i] = clock() - t0
    by_op: dict = {}
    for (run, _), t in zip(runs, np.median(samples, axis=0)):
        key = (run[0].op, run[0].phase)
        by_op[key] = by_op.get(key, 0.0) + float(t) * 1e6
    rows = [{"op": op, "phase": phase, "us": us} for (op, phase), us in by_op.items()]
    return sorted(rows, key=lambda r: -r["us"])
