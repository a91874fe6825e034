"""The `train:` section of a spec -> a validated TrainConfig, and the data it names.

Command-line overrides (--epochs, --batch-size, --lr, --seed) are applied here,
so every later stage sees one effective configuration.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from typing import Mapping, Optional


from . import shapes as S
from .data import apply_stats, load_data
from .errors import SpecError, did_you_mean, short
from .metrics import EarlyStoppingConfig, parse_early_stopping, parse_metrics
from .model import Model, label_classes, spec_seed
from .ops import OPS
from .plan import batch_dims
from .remat import NONE, MemoryPolicy, parse_memory, remat_plan
from .shapes import is_number
from .schedules import Schedule, parse_schedule
from .yamlload import without
from .spec import TRAIN_KEYS, check_keys
from .optim import Optimizer, parse_optimizer, training_graph


@dataclass(frozen=True)
class TrainConfig:
    data: Mapping
    batch_size: int
    epochs: int
    optimizer: Optimizer
    schedule: Schedule
    metrics: Mapping
    seed: int
    clip_grad_norm: Optional[float] = None
    early_stopping: Optional[EarlyStoppingConfig] = None
    memory: MemoryPolicy = NONE

    def run_settings(self) -> dict:
        """What a resume must share with the run it continues, besides the spec text."""
        return {"batch_size": self.batch_size, "lr": self.optimizer.lr, "seed": self.seed}


def positive_int(value, name: str, mark=None) -> int:
    """`value` as an int >= 1 (NumPy integers too); else a SpecError naming `name`."""
    if not S.is_whole(value) or value < 1:
        raise SpecError(f"{name} must be a positive integer, got {short(value)}", mark=mark)
    return int(value)


def _positive_int(raw: Mapping, key: str, default: int, override=None) -> int:
    """`train.KEY` (else `default`), or the `override` a caller passed as `KEY=`, which an
    error then names: fit(epochs=0) says epochs, where the command line's range check
    speaks first."""
    if override is not None:
        return positive_int(override, key)
    return positive_int(raw.get(key, default), f"train.{key}", raw.mark_of(key))


def parse_train(model: Model, epochs=None, batch_size=None, lr=None, seed=None,
                data: Optional[Mapping] = None, memory_budget=None) -> TrainConfig:
    """Validate `train:` (keys, numbers, names), applying command-line overrides; `data`
    (a `train.data` mapping, from the Python API) replaces the spec's."""
    raw = model.spec.train
    check_keys(raw, TRAIN_KEYS, "train")
    if data is None and "data" not in raw:
        raise SpecError("train.data is missing", mark=raw.mark,
                        hint="e.g. data: {dataset: spiral, samples: 300, classes: 3}")
    optimizer = parse_optimizer(raw.get("optimizer"), raw.mark_of("optimizer"))
    if lr is not None:
        optimizer = Optimizer(optimizer.name, {**optimizer.args, "lr": _lr(lr)})
    total = _positive_int(raw, "epochs", 10, epochs)
    metrics = parse_metrics(raw.get("metrics"), model.graph, raw.mark_of("metrics"))
    return TrainConfig(
        data=raw["data"] if data is None else data,
        batch_size=_positive_int(raw, "batch_size", 32, batch_size),
        epochs=total, optimizer=optimizer,
        schedule=parse_schedule(raw.get("schedule"), raw.mark_of("schedule"),
                                _positive_int(raw, "epochs", total)),
        metrics=metrics, seed=spec_seed(model.spec, seed),
        clip_grad_norm=_clip(raw),
        early_stopping=parse_early_stopping(raw.get("early_stopping"), metrics,
                                            raw.mark_of("early_stopping")),
        memory=memory_policy(model, memory_budget))


def memory_policy(model: Model, budget=None) -> MemoryPolicy:
    """The spec's `train.memory` policy, or a budget given on the command line."""
    raw = model.spec.train
    return parse_memory(raw.get("memory"), list(model.graph.nodes), raw.mark_of("memory"),
                        budget)


def _lr(lr) -> float:
    """An lr override (`--lr`, `fit(lr=)`): a finite number > 0, as the command line's
    FiniteFloat checks it; a negative or NaN rate would train garbage or stop at step 1."""
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not (
            math.isfinite(lr) and lr > 0):
        raise SpecError(f"lr must be a finite number > 0, got {short(lr)}", hint="e.g. lr=0.01")
    return float(lr)


def _clip(raw: Mapping) -> Optional[float]:
    value = raw.get("clip_grad_norm")
    if value is not None and not (is_number(value) and value > 0):
        raise SpecError(f"train.clip_grad_norm must be a finite number > 0, got {short(value)}",
                        mark=raw.mark_of("clip_grad_norm"), hint="e.g. clip_grad_norm: 1.0")
    return None if value is None else float(value)


def training_step(model: Model, batch_size=None, dims=None) -> tuple:
    """(step graph, batch size, dims) of the spec's training step, as `train` builds it.
    The batch dims (each fed input's first dim, which a batch of data sizes) take the
    batch size: `batch_size`, a `dims` entry for one of them, else the spec's, else 32.
    Any other symbolic dim is sized only by `dims` (--dim NAME=SIZE)."""
    raw = model.spec.train
    opt = parse_optimizer(raw.get("optimizer"), raw.mark_of("optimizer"))
    step = training_graph(model.graph, opt, _clip(raw))
    return (step, *_sized_dims(model, batch_size, dict(dims or {})))


def _sized_dims(model: Model, batch_size, dims: dict) -> tuple:
    """(batch size, every symbolic dim's size): `training_step`'s sizing rule."""
    _check_dim_names(model, dims)
    lead = batch_dims(model.graph)
    given = {f"--dim {d}={dims[d]}": dims[d] for d in lead if d in dims}
    if batch_size is not None:
        given[f"--batch-size {batch_size}"] = batch_size
    if len(set(given.values())) > 1:
        raise SpecError(f"{' and '.join(given)} give the batch dim different sizes",
                        hint=f"give one of them ({', '.join(lead)} is the inputs' first dim, "
                             f"which a batch sizes)")
    bs = _positive_int(model.spec.train, "batch_size", 32, next(iter(given.values()), None))
    return bs, {**dict.fromkeys(lead, bs), **dims}


def _check_dim_names(model: Model, dims: Mapping) -> None:
    """Every --dim names a symbolic dim of the spec."""
    known = sorted(set().union(*(S.symbols(n.shape) for n in model.graph.nodes.values())))
    for name, size in dims.items():
        if name not in known:
            raise SpecError(f"--dim {name}={size}: {model.spec.path} has no symbolic dim "
                            f"'{name}'",
                            hint=did_you_mean(name, known) or (
                                f"its symbolic dims are {', '.join(known)}" if known
                                else "it has no symbolic dims"))


def training_plan(model: Model, batch_size=None, reuse: bool = True, dims=None,
                  memory_budget=None) -> tuple:
    """(step graph, verified plan) of the training step at `batch_size` (default the
    spec's) and `dims`, as `graphc plan` compiles it: the loss is the one value kept to
    the end. The step graph holds the recompute nodes of the spec's `train.memory`
    policy (or of `memory_budget`)."""
    step, remat = training_remat(model, batch_size, reuse, dims, memory_budget)
    return step, remat.plan


def training_remat(model: Model, batch_size=None, reuse: bool = True, dims=None,
                   memory_budget=None) -> tuple:
    """(step graph with its recompute nodes, Remat): `training_plan` with what the memory
    policy keeps and recomputes."""
    step, _, dims = training_step(model, batch_size, dims)
    remat = remat_plan(step.graph, dims, {model.graph.loss}, step.forward, reuse,
                       memory_policy(model, memory_budget))
    return replace(step, graph=remat.graph), remat


def fed_labels(model: Model, inputs=None) -> dict:
    """load_data's `classes` and `label_kinds` for the fed label inputs (those of `inputs`
    where given): the count the graph reads each against (the scores' last axis, the
    embedding table's rows), and what its op calls them (class labels, ids)."""
    fed = model.fed_inputs if inputs is None else inputs
    found = {name: v for name, v in label_classes(model.graph).items() if name in fed}
    return {"classes": {name: k for name, (k, _) in found.items()},
            "label_kinds": {name: OPS[model.graph[reader].op].labels_are
                            for name, (_, reader) in found.items()}}


def load_dataset(model: Model, cfg: TrainConfig, stats=None):
    """The spec's data fitted to its fed inputs; `stats` (from a checkpoint) replace the
    normalization statistics computed on this data."""
    graph = model.graph
    fed = model.fed_inputs
    raw = model.spec.train.get("data")      # errors in arrays fit() was given have no line
    cfg_data = cfg.data
    if stats and isinstance(cfg_data, Mapping) and cfg_data.get("normalize"):
        cfg_data = without(cfg_data, ("normalize",))
    data = load_data(cfg_data, spec_dir=model.spec.path.parent,
                     inputs={n: graph[n].shape for n in fed},
                     input_dtypes={n: graph[n].dtype for n in fed}, seed=cfg.seed,
                     mark=model.spec.train.mark_of("data") if cfg.data is raw else None,
                     **fed_labels(model))
    if cfg_data is cfg.data:
        return data
    valid = None if data.valid is None else apply_stats(data.valid, stats)
    return type(data)(apply_stats(data.train, stats), valid, stats, data.n_classes)
