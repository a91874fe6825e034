"""The Python API: `graphc.load(spec)` -> a `Model` to fit, predict with, differentiate,
plan and save, on in-memory NumPy arrays. docs/api.md shows a whole round trip.

Each method runs the code of the matching command, so the API and the command line
agree to the bit: `fit` is `graphc train` (train.py), `predict` is `graphc predict`
(predict.py), `grad` is `graphc grad` (model.run_grads), `plan` is `graphc plan`, and
`save` writes the checkpoint `graphc eval/predict --params` and `train --resume` read.
Bad input raises `graphc.errors.SpecError`, whose message is the command line's
`error:` line; an input the computation needs and the arrays lack is an error, never
zeros.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np

from . import checkpoint as C
from .data import COMMON_KEYS, apply_stats
from .datasources import check_not_inputs
from .errors import SpecError, clip, short
from .model import GradResult, load_model, run_grads
from .plan import Plan
from .remat import parse_size
from .predict import CHUNK, Predictor, class_outputs, given_arrays, normalization, \
    not_a_mapping
from .optim import LR, parse_optimizer
from .evaluation import read_checkpoint
from .train import EpochLog, TrainResult, step_runner, train
from .trainconfig import memory_policy, parse_train, positive_int, training_plan, training_step

PathLike = Union[str, os.PathLike]
ArrayLike = Union[np.ndarray, Sequence]

__all__ = ["load", "Model", "TrainResult", "GradResult", "Plan"]


def load(spec: PathLike, params: Optional[PathLike] = None, *, seed: Optional[int] = None,
         dtype: Optional[str] = None) -> "Model":
    """The spec at `spec` as a Model. Params come from the checkpoint `params` when given
    (with its normalization statistics), else from the spec's initializers drawn with
    `seed` (default: train.seed), as `graphc train --seed` draws them. `dtype`
    ("float32" or "float64") replaces the spec's `dtype:`."""
    return Model(spec, params, seed=seed, dtype=dtype)


def _path(value, what: str) -> PathLike:
    """`value`, a file path (str or os.PathLike); else a SpecError naming the argument
    `what` (an int would be opened as a file descriptor: 0 reads stdin)."""
    if isinstance(value, (str, os.PathLike)):
        return value
    raise SpecError(f"{what} must be a file path (str or os.PathLike), got {clip(repr(value))}")


def _flag(value, what: str) -> bool:
    """`value`, a bool (Python's or NumPy's); else a SpecError naming the keyword `what`:
    a string such as "no" is truthy, so it would switch the flag on."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise SpecError(f"{what} must be True or False, got {short(value)}",
                    hint=f"e.g. {what}=True")


class Model:
    """A loaded spec with its params: `fit`, `predict`, `grad`, `plan`, `save`."""

    def __init__(self, spec: PathLike, params: Optional[PathLike] = None, *,
                 seed: Optional[int] = None, dtype: Optional[str] = None):
        self._model = load_model(_path(spec, "spec"), seed, dtype)
        self._seed = seed
        self._predictors: dict = {}
        self._step = None       # the compiled training step's runner, made by `step`
        self._fed = frozenset(self._model.fed_inputs)
        # the last checkpoint's arrays besides params (optimizer state, position, stats)
        self._saved: dict = {} if params is None else read_checkpoint(
            self._model, _path(params, "params"))

    @property
    def name(self) -> str:
        """The spec's `name:`."""
        return self._model.spec.name

    @property
    def dtype(self) -> str:
        """The float dtype of every param and node."""
        return self._model.graph.dtype

    @property
    def inputs(self) -> dict:
        """Fed input -> declared shape (symbolic dims as strings, e.g. ('batch', 64))."""
        return {n: self._model.graph[n].shape for n in self._model.fed_inputs}

    @property
    def outputs(self) -> tuple:
        """The spec's `outputs:`, what `predict` returns by default."""
        return self._model.graph.outputs

    @property
    def params(self) -> dict:
        """Param name -> a copy of its current value."""
        return {k: v.copy() for k, v in C.params_of(self._model).items()}

    @property
    def state(self) -> dict:
        """State leaf name (running statistics) -> a copy of its current value."""
        return {k: v.copy() for k, v in C.state_of(self._model).items()}

    def fit(self, data: Optional[Mapping[str, ArrayLike]] = None, *,
            epochs: Optional[int] = None, lr: Optional[float] = None,
            batch_size: Optional[int] = None, seed: Optional[int] = None,
            out: Optional[PathLike] = None,
            log: Optional[Callable[[EpochLog], None]] = None) -> TrainResult:
        """Train from the current params, as `graphc train` does, on `data` ({input: array},
        raw: the spec's `normalize:` and `validation:` apply to it) or else the spec's
        `train.data`. `epochs`, `lr`, `batch_size` and `seed` override the spec (`seed`
        defaults to load's). Each fit is a new run: optimizer state starts afresh. With
        `out`, checkpoints are written there as train writes them; `log` gets each epoch."""
        model = self._model
        if log is not None and not callable(log):      # else a TypeError after an epoch
            raise SpecError(f"log must be a function taking an EpochLog, got {short(log)}",
                            hint="e.g. log=print")
        source = None if data is None else self._data_source(data)
        cfg = parse_train(model, epochs=epochs, batch_size=batch_size, lr=lr,
                          seed=self._seed if seed is None else seed, data=source)
        result = train(model, cfg, out=None if out is None else self._target(out, "out"),
                       log=log or (lambda e: None))
        self._saved = result.checkpoint
        self._step = None       # the fit's step replaced the lr and optimizer state arrays
        return result

    def _data_source(self, data: Mapping[str, ArrayLike]) -> dict:
        """`{arrays: data}` with the spec's own split and normalization settings."""
        if not isinstance(data, Mapping):
            raise not_a_mapping(data, sorted(self._fed))
        spec_data = self._model.spec.train.get("data")
        common = {k: spec_data[k] for k in COMMON_KEYS
                  if isinstance(spec_data, Mapping) and k in spec_data}
        return {"arrays": dict(data), **common}

    def predict(self, inputs: Mapping[str, ArrayLike], outputs: Optional[Sequence[str]] = None,
                *, classes: bool = False, batch_size: int = CHUNK) -> dict:
        """{output: array} of the eval-mode forward pass on raw samples `inputs` ({input:
        array}, labels not needed), normalized as in training, as `graphc predict` does.
        `outputs` defaults to the spec's; `classes` adds NAME.class, each sample's class."""
        classes = _flag(classes, "classes")         # before the work
        key = (None if outputs is None else tuple(outputs), batch_size)
        if key not in self._predictors:
            self._predictors[key] = Predictor(self._model, outputs, batch_size)
        predictor = self._predictors[key]
        stats = normalization(self._model, self._saved, "the model (neither fitted nor "
                                                        "loaded from a checkpoint)")
        result = predictor(apply_stats(given_arrays(predictor, inputs), stats))
        if classes:
            result.update(class_outputs(self._model, result))
        return result

    def grad(self, feeds: Mapping[str, ArrayLike]) -> GradResult:
        """One forward and backward pass, as `graphc grad --inputs` does: `.loss` and
        `.grads` ({leaf: d loss / d leaf}) at the fed values `feeds` ({input: array}, taken
        as they are: no normalization)."""
        predictor = Predictor(self._model, [self._model.graph.loss])
        return run_grads(self._model, given_arrays(predictor, feeds))

    def step(self, feeds: Mapping[str, np.ndarray]) -> float:
        """One training step (forward, backward, update at the spec's optimizer and lr) on the
        batch `feeds`, as `graphc train` and `graphc time` run each batch; returns the
        batch's loss. The arrays must have the inputs' dtypes (nothing else is checked: this
        is the timed path); one with its input's dtype, shape and C layout is read in place
        where the step code can (backends/numpy/feeding.py), else copied. Each step
        advances the step count that keys dropout's masks."""
        if self._step is None:
            raw = self._model.spec.train
            step = training_step(self._model)[0]
            self._step = step_runner(self._model, step, memory_policy(self._model))
            self._model.store[LR][...] = parse_optimizer(raw.get("optimizer"),
                                                         raw.mark_of("optimizer")).lr
        try:
            if feeds.keys() != self._fed:
                missing, extra = self._fed - feeds.keys(), feeds.keys() - self._fed
                what = f"missing: {', '.join(sorted(missing))}" if missing else \
                    f"not fed inputs: {', '.join(sorted(map(str, extra)))}"
                raise SpecError(f"step feeds exactly the fed inputs "
                                f"({', '.join(sorted(self._fed))}); {what}",
                                hint="a param or stored value is not fed")
            loss = float(self._step.run(feeds)[self._model.graph.loss])
        except (AttributeError, TypeError, ValueError) as exc:
            raise self._bad_feed(feeds) or exc
        key = self._model.rng_key
        if key is not None:         # the next step draws the next dropout masks
            key[1] += 1
        return loss

    def _bad_feed(self, feeds) -> Optional[SpecError]:
        """Why `feeds` cannot be a step's batch, looked for once the step failed on it (the
        timed path checks nothing up front): not a mapping, or an input given no NumPy
        array of its dtype. None when the feeds are not to blame."""
        if not isinstance(feeds, Mapping):
            return not_a_mapping(feeds, sorted(self._fed))
        for name in sorted(self._fed):      # float64 into float32 is cast: not to blame
            arr, node = feeds[name], self._model.graph[name]
            if not isinstance(arr, np.ndarray) or not np.can_cast(arr.dtype, node.dtype,
                                                                  "same_kind"):
                got = f"dtype {arr.dtype}" if isinstance(arr, np.ndarray) else \
                    f"a {type(arr).__name__}"
                return SpecError(f"step feeds '{name}' {got}, but the input is {node.dtype}",
                                 mark=node.mark, node=name,
                                 hint=f"feed np.asarray(..., dtype='{node.dtype}')")
        return None

    def plan(self, batch: int = 64, *, reuse: bool = True,
             memory_budget: Optional[str] = None) -> Plan:
        """The memory plan of the training step at batch size `batch`, as `graphc plan
        --batch-size` prints it (`plan_json` and `plan_table` in graphc.plan), under the
        spec's `train.memory` policy or `memory_budget` (such as "64MiB")."""
        budget = None if memory_budget is None else parse_size(memory_budget, "memory_budget")
        return training_plan(self._model, positive_int(batch, "batch"), _flag(reuse, "reuse"),
                             memory_budget=budget)[1]

    def save(self, path: PathLike) -> Path:
        """Write a checkpoint atomically: the params, the spec, and what the last fit or
        loaded checkpoint had (normalization statistics, optimizer state, position)."""
        saved = self._saved
        settings = C.saved_settings(saved, "the model's last checkpoint")
        arrays = {**saved, **C.spec_arrays(self._model, settings), **C.leaves_of(self._model)}
        C.write(self._target(path, "path"), arrays)
        return Path(path)

    def _target(self, path, what: str) -> PathLike:
        """`path` for a checkpoint, unless it is the spec file or a file the spec's
        `train.data` names (as `graphc train --out` checks): SpecError naming `what`."""
        spec = self._model.spec
        check_not_inputs(_path(path, what), what, spec.path, spec.train.get("data"))
        return path
