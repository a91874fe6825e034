"""Training: data -> mini-batches -> the compiled training step, per-epoch metrics, checkpoints.

One `StepGraph` (forward + backward + updates) is compiled per batch size; the
learning rate is written into its `hyper` leaf each epoch. Checkpoints are
`.npz` files written atomically (temp file + os.replace).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional

import numpy as np

from .data import batches, load_data
from .errors import SpecError
from .metrics import METRICS, parse_metrics
from .model import Model, Runner, spec_seed
from .schedules import learning_rate, parse_schedule
from .spec import check_keys
from .step import LR, parse_optimizer, training_graph

TRAIN_KEYS = ("data", "batch_size", "epochs", "optimizer", "schedule", "metrics", "seed")
RESERVED = "__graphc__/"


@dataclass(frozen=True)
class TrainConfig:
    data: Mapping
    batch_size: int
    epochs: int
    optimizer: object
    schedule: tuple
    metrics: Mapping
    seed: int


def _positive_int(raw: Mapping, key: str, default: int, override=None) -> int:
    value = override if override is not None else raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpecError(f"train.{key} must be a positive integer, got {value!r}",
                        mark=raw.mark_of(key) if override is None else None)
    return value


def parse_train(model: Model, epochs=None, batch_size=None, lr=None, seed=None) -> TrainConfig:
    """Validate `train:` (keys, numbers, names), applying command-line overrides."""
    raw = model.spec.train
    check_keys(raw, TRAIN_KEYS, "train")
    if "data" not in raw:
        raise SpecError("train.data is missing", mark=raw.mark,
                        hint="e.g. data: {dataset: spiral, samples: 300, classes: 3}")
    optimizer = parse_optimizer(raw.get("optimizer"), raw.mark_of("optimizer"))
    if lr is not None:
        optimizer = type(optimizer)(optimizer.name, {**optimizer.args, "lr": float(lr)})
    names = set(model.graph.nodes)
    return TrainConfig(
        data=raw["data"],
        batch_size=_positive_int(raw, "batch_size", 32, batch_size),
        epochs=_positive_int(raw, "epochs", 10, epochs),
        optimizer=optimizer,
        schedule=parse_schedule(raw.get("schedule"), raw.mark_of("schedule")),
        metrics=parse_metrics(raw.get("metrics"), names, raw.mark_of("metrics")),
        seed=spec_seed(model.spec, seed),
    )


def load_dataset(model: Model, cfg: TrainConfig):
    """The spec's data, fitted to its fed inputs, labels checked against the class count."""
    graph = model.graph
    fed = model.fed_inputs
    classes = {}
    for n in graph.nodes.values():
        if n.op == "softmax_cross_entropy" and n.inputs[1] in fed:
            c = graph[n.inputs[0]].shape[-1]
            if isinstance(c, int):
                classes[n.inputs[1]] = c
    return load_data(cfg.data, spec_dir=model.spec.path.parent,
                     inputs={n: graph[n].shape for n in fed},
                     input_dtypes={n: graph[n].dtype for n in fed}, seed=cfg.seed,
                     classes=classes, mark=model.spec.train.mark_of("data"))


def spec_hash(model: Model) -> str:
    return hashlib.sha256(model.spec.text.encode()).hexdigest()[:16]


def atomic_savez(path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write an .npz via a temp file in the same folder and os.replace: all or nothing."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp",
                               dir=str(path.parent) if str(path.parent) else ".")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: Path, model: Model, extra: Mapping[str, np.ndarray]) -> None:
    """Params and optimizer state by name, plus reserved keys (epoch, spec hash, data stats)."""
    arrays = {k: v for k, v in model.store.items() if k in model.graph.nodes
              and model.graph[k].op == "param"}
    arrays.update({k: v for k, v in model.store.items() if k.endswith(".velocity")})
    arrays.update({RESERVED + k: np.asarray(v) for k, v in extra.items()})
    arrays[RESERVED + "spec_hash"] = np.asarray(spec_hash(model))
    try:
        atomic_savez(path, arrays)
    except OSError as exc:
        raise SpecError(f"cannot write checkpoint {path}: {exc.strerror}") from None


def load_params(path, model: Model) -> None:
    """Overwrite the store's params (and state) with a checkpoint's arrays, shapes checked."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as exc:
        raise SpecError(f"cannot read checkpoint {path}: {exc}") from None
    for name, arr in arrays.items():
        if name.startswith(RESERVED) or name not in model.store:
            continue
        have = model.store[name]
        if have.shape != arr.shape:
            raise SpecError(f"checkpoint {path}: '{name}' has shape {list(arr.shape)}, "
                            f"the spec says {list(have.shape)}", node=name)
        have[...] = arr


@dataclass
class EpochLog:
    epoch: int
    loss: float
    metrics: dict
    lr: float


@dataclass
class TrainResult:
    loss: float
    metrics: dict
    epochs: int
    samples_per_s: float
    history: list = field(default_factory=list)

    def json(self) -> dict:
        return {"loss": self.loss, "metrics": self.metrics, "epochs": self.epochs,
                "samples_per_s": self.samples_per_s}


def evaluate(model: Model, arrays: Mapping[str, np.ndarray], metrics: Mapping,
             batch_size: int = 1024) -> tuple:
    """(loss, {metric: value}) of the current params over all of `arrays`, forward only."""
    keep = {model.graph.loss} | {v for pair in metrics.values() for v in pair}
    runner = Runner(model.graph, model.store, keep)
    n = len(next(iter(arrays.values())))
    total, preds = 0.0, {name: [] for name in metrics}
    for start in range(0, n, batch_size):
        batch = {k: v[start:start + batch_size] for k, v in arrays.items()}
        ex = runner.run(batch)
        m = len(next(iter(batch.values())))
        total += float(ex[model.graph.loss]) * m
        for name, (p, _) in metrics.items():
            preds[name].append(np.array(ex[p]))
    out = {}
    for name, (p, t) in metrics.items():
        target = arrays[t] if t in arrays else None
        out[name] = METRICS[name](np.concatenate(preds[name]), target)
    return total / max(n, 1), out


def train(model: Model, cfg: TrainConfig, *, out: Path,
          log: Callable[[EpochLog], None] = lambda e: None) -> TrainResult:
    """Run cfg.epochs epochs of mini-batch training; save a checkpoint at the end."""
    data = load_dataset(model, cfg)
    step = training_graph(model.graph, cfg.optimizer)
    for n in step.graph.leaves("state"):
        model.store.setdefault(n.name, np.zeros(n.shape, dtype=n.dtype))
    model.store[LR] = np.zeros((), dtype=model.graph.dtype)
    keep = {model.graph.loss}
    runner = Runner(step.graph, model.store, keep, forward=step.forward)
    rng = np.random.default_rng(cfg.seed)
    base_lr = float(cfg.optimizer.args["lr"])
    seen, start, history = 0, time.perf_counter(), []
    for epoch in range(cfg.epochs):
        lr = learning_rate(cfg.schedule, base_lr, epoch)
        model.store[LR][...] = lr
        total = 0.0
        n = 0
        for batch in batches(data.train, cfg.batch_size, rng):
            ex = runner.run(batch)
            m = len(next(iter(batch.values())))
            total += float(ex[model.graph.loss]) * m
            n += m
        seen += n
        _, metrics = evaluate(model, data.train, cfg.metrics)
        entry = EpochLog(epoch + 1, total / max(n, 1), metrics, lr)
        history.append(entry)
        log(entry)
    elapsed = time.perf_counter() - start
    final = data.valid if data.valid is not None else data.train
    loss, metrics = evaluate(model, final, cfg.metrics)
    save_checkpoint(out, model, {"epoch": cfg.epochs})
    return TrainResult(loss, metrics, cfg.epochs, seen / elapsed if elapsed else 0.0, history)
