"""Evaluation: the loss and metrics of the current params over a whole split, in eval mode
(`graphc eval`, and training's per-epoch numbers), and a checkpoint loaded into a model.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from . import checkpoint as C
from .checkpoint import RESERVED, load_params
from .errors import SpecError
from .metrics import Accumulator, metric_nodes
from .model import Model, Runner
from .parallel import SOLO, World
from .trainconfig import load_dataset, parse_train

STATS = RESERVED + "stats/"     # the checkpoint keys of the data's normalization statistics


class Evaluator:
    """(loss, {metric: value}) of the current params over a whole split, in eval mode; over
    several ranks each takes its share of the split's rows and the sums are gathered."""

    def __init__(self, model: Model, metrics: Mapping, batch_size: int = 1024,
                 world: World = SOLO):
        self.loss, self.metrics, self.batch_size = model.graph.loss, metrics, batch_size
        graph = model.in_mode("eval").graph
        self.runner = Runner(graph, model.store, {self.loss} | metric_nodes(metrics))
        self.world = world

    def __call__(self, arrays: Mapping[str, np.ndarray]) -> tuple:
        n = len(next(iter(arrays.values())))
        first, stop = self.world.share(n)
        total, parts = 0.0, Accumulator(self.metrics)
        for start in range(first, stop, self.batch_size):
            batch = {k: v[start:min(start + self.batch_size, stop)] for k, v in arrays.items()}
            ex = self.runner.run(batch)
            samples = len(next(iter(batch.values())))
            total += float(ex[self.loss]) * samples
            parts.add(lambda v: batch[v] if v in batch else ex[v], samples)
        if self.world.size > 1:
            shares = self.world.allgather((total, parts))
            total, parts = sum(t for t, _ in shares), Accumulator.merged([p for _, p in shares])
        return total / max(n, 1), parts.result()


def evaluate(model: Model, arrays: Mapping[str, np.ndarray], metrics: Mapping,
             batch_size: int = 1024) -> tuple:
    """(loss, {metric: value}) of the current params over all of `arrays`."""
    return Evaluator(model, metrics, batch_size)(arrays)


def evaluate_checkpoint(model: Model, path) -> dict:
    """`graphc eval`: a checkpoint's loss and metrics on the spec's data (its validation
    split where it has one, drawn with the run's seed), with the checkpoint's statistics."""
    arrays = read_checkpoint(model, path)
    cfg = parse_train(model, seed=C.saved_settings(arrays, path).get("seed"))
    data = load_dataset(model, cfg, C.saved_stats(arrays, path, STATS) or None)
    split = data.valid if data.valid is not None else data.train
    loss, metrics = evaluate(model, split, cfg.metrics)
    return {"loss": loss, "metrics": metrics, "samples": len(next(iter(split.values())))}


def read_checkpoint(model: Model, path) -> dict:
    """Load a checkpoint's params and state into the model (every one must be there,
    shapes checked); returns all of its arrays (normalization stats, settings, ...)."""
    arrays = C.read(path)
    missing = [p for p in C.leaves_of(model) if p not in arrays]
    if missing:
        kind = "parameter" if missing[0] in C.params_of(model) else "state leaf"
        raise SpecError(f"checkpoint {path} has no {kind} '{missing[0]}'", node=missing[0],
                        hint="was it saved from another spec?")
    load_params(path, model, arrays)
    return arrays
