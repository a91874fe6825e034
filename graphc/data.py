"""Training data for a spec's `train.data`: built-in datasets, CSV, .npz and .npy files.

    load_data(cfg, *, spec_dir, inputs, input_dtypes=None, seed=0, classes=None,
              label_kinds=None, mark=None) -> Dataset

`cfg` is the `train.data` mapping. `inputs` maps each fed input to its declared
shape (ints, or strings for symbolic dims; dim 0 is the batch dim) and
`input_dtypes` maps it to a numpy dtype name (float32 where absent). `seed` is the
spec's seed; a `seed:` in cfg overrides it. `classes` maps a label input to the
number of classes the graph expects, to check labels against, and `label_kinds` maps it
to what its op calls those integers in errors (ops.record.LabelKind: class labels where
absent, embedding ids). Every array of the result has N samples first, then the input's
declared dims, in its declared dtype.

Mapping, normalization and splitting rules are in docs/data.md; `batches`,
`first_batch` and `apply_stats` serve training and eval. The sources themselves are
read by graphc/datasources.py (with datasets.py's generators and datafiles.py's
readers); this module fits their arrays to the inputs, splits and normalizes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Optional

import numpy as np

from .datasets import DATASETS, options
from .datasources import (DEFAULT_SAMPLES, LOADERS, Arrays, Raw, generator,
                          key_mark, value_mark)
from .errors import Mark, SpecError, did_you_mean, short
from .leaves import misfit, misfit_message
from .ops.record import CLASS_LABELS, LabelKind
from .shapes import is_number, is_whole

__all__ = ["load_data", "Dataset", "batches", "first_batch", "n_samples", "compute_stats",
           "apply_stats", "stats_to_arrays", "stats_from_arrays", "Arrays", "Stats",
           "SOURCES", "SOURCE_KEYS", "COMMON_KEYS", "DATASETS", "LOADERS", "DEFAULT_SAMPLES"]

Stats = dict[str, dict[str, np.ndarray]]

SOURCES = ("dataset", "csv", "npz", "npy", "arrays")
COMMON_KEYS = ("normalize", "validation", "shuffle", "seed")
SOURCE_KEYS = {
    "dataset": ("dataset", "samples", "map"),
    "csv": ("csv", "columns", "classes"),
    "npz": ("npz", "map", "classes"),
    "npy": ("npy", "classes"),
    "arrays": ("arrays", "classes"),
}
_SPLIT_STREAM = 1  # the split draws from its own stream so it never shifts the generator's


@dataclass(frozen=True)
class Dataset:
    """Arrays keyed by input name, samples first; `stats` is the train split's normalization."""
    train: Arrays
    valid: Optional[Arrays]
    stats: Stats
    n_classes: Optional[int]


# --- entry point -------------------------------------------------------------------------

def load_data(cfg: Mapping, *, spec_dir: Path, inputs: Mapping[str, tuple],
              input_dtypes: Optional[Mapping[str, str]] = None, seed: int = 0,
              classes: Optional[Mapping[str, int]] = None,
              label_kinds: Optional[Mapping[str, LabelKind]] = None,
              mark: Optional[Mark] = None) -> Dataset:
    """Read `train.data`, fit each array to its input, split off validation, normalize."""
    try:
        return _load(cfg, Path(spec_dir), dict(inputs), dict(input_dtypes or {}), seed,
                     dict(classes or {}), dict(label_kinds or {}))
    except SpecError as e:
        if e.mark is not None or mark is None:
            raise
        raise SpecError(e.message, mark=mark, node=e.node, hint=e.hint,
                        context=e.context) from None


def _load(cfg, spec_dir: Path, inputs: dict, dtypes: dict, seed: int, classes: dict,
          kinds: dict) -> Dataset:
    if not isinstance(cfg, Mapping):
        raise SpecError(f"train.data must be a mapping, got {short(cfg)}",
                        hint="e.g. data: {dataset: spiral, samples: 300}")
    kind = _source_kind(cfg)
    allowed = SOURCE_KEYS[kind] + COMMON_KEYS
    if kind == "dataset":
        allowed += tuple(options(generator(cfg)))
    _check_keys(cfg, allowed, _what(cfg, kind))
    seed = _seed(cfg.get("seed", seed), cfg)
    dtypes = {name: _dtype(dtypes.get(name, "float32"), name) for name in inputs}
    raw = LOADERS[kind](cfg, spec_dir, inputs, seed)
    # both the graph's K and a declared `classes:` hold: labels must fit the smaller
    label_classes = {name: min((k for k in (classes.get(name), raw.n_classes) if k),
                               default=None) for name in inputs}
    arrays = {name: _fit(name, raw, inputs[name], dtypes[name], label_classes[name],
                         kinds.get(name, CLASS_LABELS)) for name in inputs}
    n_samples(arrays)
    train, valid = _split(arrays, cfg, seed)
    stats = compute_stats(train, _normalized_inputs(cfg, dtypes, raw.targets))
    valid = None if valid is None else apply_stats(valid, stats)
    return Dataset(apply_stats(train, stats), valid, stats, raw.n_classes)


def _source_kind(cfg: Mapping) -> str:
    kinds = [k for k in SOURCES if k in cfg]
    if len(kinds) == 1:
        return kinds[0]
    if kinds:
        raise SpecError(f"train.data names {len(kinds)} sources ({', '.join(kinds)}); give one",
                        mark=key_mark(cfg, kinds[1]))
    raise SpecError("train.data needs a source: one of dataset, csv, npz, npy",
                    mark=getattr(cfg, "mark", None),
                    hint="e.g. {dataset: spiral, samples: 300} or {csv: data.csv, columns: {...}}")


def _what(cfg: Mapping, kind: str) -> str:
    return f"dataset '{cfg['dataset']}'" if kind == "dataset" else f"{kind} data"


# --- fitting arrays to inputs --------------------------------------------------------------

def _fit(name: str, raw: Raw, shape: tuple, dtype: np.dtype, n_classes: Optional[int],
         kind: LabelKind):
    """Check one input's raw array (finite, castable, labels in range), then reshape and cast."""
    arr = raw.arrays[name]
    if len(arr) == 0:
        raise SpecError(f"{raw.origin[name]} has no samples (its first dimension is 0)",
                        node=name, hint="each row along the first dimension is one sample")
    check_values(name, arr, dtype, raw.where)
    if dtype.kind in "iu" and n_classes is not None:
        _check_labels(name, arr, n_classes, raw.where, kind, raw.n_classes is not None)
    return _fit_shape(name, arr, tuple(shape), raw.origin[name]).astype(dtype)


def _fit_shape(name: str, arr: np.ndarray, shape: tuple, origin: str) -> np.ndarray:
    """Match [N, *got] to the declared [batch, *want]; size-1 dims may be added or dropped."""
    if len(shape) == 0:
        raise SpecError(f"input '{name}' has no batch dimension, so it cannot be fed data",
                        node=name, hint="declare it as [batch, ...]")
    want, got = shape[1:], arr.shape[1:]
    if len(want) == len(got) and all(isinstance(w, str) or w == g for w, g in zip(want, got)):
        return arr
    concrete = all(not isinstance(w, str) for w in want)
    if concrete and [w for w in want if w != 1] == [g for g in got if g != 1]:
        return arr.reshape((arr.shape[0],) + tuple(want))
    if len(want) == 1 and len(got) <= 1:
        have = got[0] if got else 1
        raise SpecError(f"input '{name}' expects {want[0]} features per sample, "
                        f"{origin} has {have}", node=name)
    raise SpecError(f"input '{name}' expects samples of shape {list(want)}, "
                    f"{origin} gives {list(got)}", node=name)


def _check_finite(name: str, arr: np.ndarray, where) -> None:
    if arr.dtype.kind != "f" or np.isfinite(arr).all():
        return
    index = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
    what = "NaN" if np.isnan(arr[index]) else "an infinite value"
    raise SpecError(f"{where(name, index)}: {what} in the data", node=name,
                    hint="drop or fill the missing values first")


def check_values(name: str, arr: np.ndarray, dtype: np.dtype, where) -> None:
    """Every value of `arr` is one input `name` of `dtype` holds as it is: finite, whole for
    an integer dtype, and in range (1e39 in float32 would be inf); `where(name, index)`
    says where a value sits in its file."""
    _check_finite(name, arr, where)
    if dtype.kind in "iu":
        _check_integral(name, arr, dtype, where)
    index = misfit(arr, dtype)
    if index is not None:
        raise SpecError(f"{where(name, index)}: the data {misfit_message(arr[index], dtype)}",
                        node=name, hint=f"scale the data, or declare '{name}' as float64"
                        if dtype.kind == "f" else None)


def _check_integral(name: str, arr: np.ndarray, dtype: np.dtype, where) -> None:
    if arr.dtype.kind != "f":
        return
    bad = np.argwhere(arr != np.round(arr))
    if len(bad):
        index = tuple(int(i) for i in bad[0])
        raise SpecError(f"{where(name, index)}: {arr[index]:g} is not an integer, but input "
                        f"'{name}' is {dtype}", node=name,
                        hint=f"declare '{name}' with a float dtype for regression targets")


def label_outside(arr: np.ndarray, n_classes: int) -> Optional[tuple]:
    """The index of the first label outside 0..n_classes-1, or None (min/max first: the
    common case costs a tenth of argwhere's time, which the per-step check pays)."""
    if arr.size == 0 or (arr.min() >= 0 and arr.max() < n_classes):
        return None
    bad = np.argwhere((arr < 0) | (arr >= n_classes))    # none where min/max were NaN
    return tuple(int(i) for i in bad[0]) if len(bad) else None


def _check_labels(name: str, arr: np.ndarray, n_classes: int, where, kind: LabelKind,
                  declared: bool) -> None:
    """SpecError for the first value outside 0..n_classes-1, in the words of `kind`; the
    hint names the data's `classes:` where it `declared` one."""
    index = label_outside(arr, n_classes)
    if index is not None:
        raise SpecError(f"{where(name, index)}: {kind.out_of_range(f'{arr[index]:g}', n_classes)}",
                        node=name, hint="check `classes:` against the model's number of "
                        "outputs" if declared else kind.hint(name))


def n_samples(arrays: Mapping[str, np.ndarray]) -> int:
    """N, the length of dim 0 shared by every array."""
    counts = {name: len(a) for name, a in arrays.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"'{k}' has {v}" for k, v in counts.items())
        raise SpecError(f"inputs have different numbers of samples: {listed}")
    return next(iter(counts.values()), 0)


# --- validation split and normalization -----------------------------------------------------

def _split(arrays: Arrays, cfg: Mapping, seed: int) -> tuple[Arrays, Optional[Arrays]]:
    """Hold out round(f*N) samples: a seeded permutation's tail (the rows' tail if no shuffle)."""
    fraction, shuffle = cfg.get("validation"), cfg.get("shuffle", True)
    if not isinstance(shuffle, bool):
        raise SpecError(f"shuffle must be true or false, got {short(shuffle)}",
                        mark=value_mark(cfg, "shuffle"))
    if fraction is None:
        return arrays, None
    if not is_number(fraction) or not 0 < fraction < 1:
        raise SpecError(f"validation must be a fraction strictly between 0 and 1, "
                        f"got {short(fraction)}", mark=value_mark(cfg, "validation"),
                        hint="omit `validation` to train on every sample")
    n = n_samples(arrays)
    n_valid = max(1, round(fraction * n))
    if n - n_valid < 1:
        raise SpecError(f"validation {fraction} of {n} samples leaves none to train on",
                        mark=value_mark(cfg, "validation"))
    order = np.arange(n)
    if shuffle:
        order = np.random.default_rng([seed, _SPLIT_STREAM]).permutation(n)
    train_idx, valid_idx = order[:n - n_valid], order[n - n_valid:]
    return ({k: v[train_idx] for k, v in arrays.items()},
            {k: v[valid_idx] for k, v in arrays.items()})


def _normalized_inputs(cfg: Mapping, dtypes: dict, targets: tuple) -> tuple[str, ...]:
    """`standard`: every float input but the targets; `{standard: [INPUT, ...]}`: those."""
    rule = cfg.get("normalize")
    if rule is None or rule is False or rule == "none":
        return ()
    if rule == "standard":
        return tuple(n for n, d in dtypes.items() if d.kind == "f" and n not in targets)
    listed = isinstance(rule, Mapping) and list(rule) == ["standard"]
    if listed and isinstance(rule["standard"], list):
        for name in rule["standard"]:
            if not isinstance(name, str) or name not in dtypes:
                raise SpecError(f"normalize names '{name}', which is not a fed input",
                                mark=value_mark(cfg, "normalize"),
                                hint=did_you_mean(str(name), dtypes))
            if dtypes[name].kind != "f":
                raise SpecError(f"input '{name}' is {dtypes[name]}: labels are never normalized",
                                mark=value_mark(cfg, "normalize"))
        return tuple(rule["standard"])
    raise SpecError(f"normalize must be 'standard' or {{standard: [INPUT, ...]}}, "
                    f"got {short(rule)}",
                    mark=value_mark(cfg, "normalize"),
                    hint=did_you_mean(str(rule), ["standard"]))


def compute_stats(train: Arrays, names) -> Stats:
    """Per-feature mean and std over the samples of `train[name]`; std 0 becomes 1 (as sklearn)."""
    stats = {}
    for name in names:
        values = train[name].astype(np.float64)
        std = values.std(axis=0)
        stats[name] = {"mean": values.mean(axis=0), "std": np.where(std > 0, std, 1.0)}
    return stats


def apply_stats(arrays: Mapping[str, np.ndarray], stats: Stats) -> Arrays:
    """x' = (x - mean) / std, in x's dtype, for each input with stats; others pass through."""
    out = dict(arrays)
    for name, s in stats.items():
        if name not in out:
            continue
        a = out[name]
        if a.shape[1:] != np.shape(s["mean"]):
            raise SpecError(f"normalization stats for '{name}' are for samples of shape "
                            f"{list(np.shape(s['mean']))}, the data has {list(a.shape[1:])}",
                            node=name, hint="were the stats saved for a different spec?")
        out[name] = ((a - s["mean"]) / s["std"]).astype(a.dtype)
    return out


def stats_to_arrays(stats: Stats, prefix: str = "stats/") -> Arrays:
    """Flatten stats for a checkpoint: {prefix + 'x/mean': ..., prefix + 'x/std': ...}."""
    return {f"{prefix}{name}/{part}": np.asarray(v)
            for name, s in stats.items() for part, v in s.items()}


def stats_from_arrays(arrays: Mapping[str, np.ndarray], prefix: str = "stats/") -> Stats:
    """The inverse of stats_to_arrays; keys without `prefix` are ignored."""
    stats: Stats = {}
    for key, value in arrays.items():
        if key.startswith(prefix):
            name, _, part = key[len(prefix):].rpartition("/")
            stats.setdefault(name, {})[part] = np.asarray(value)
    return stats


# --- mini-batches ---------------------------------------------------------------------------

def batches(arrays: Mapping[str, np.ndarray], batch_size: int,
            rng: np.random.Generator) -> Iterator[Arrays]:
    """One epoch: a new permutation from `rng` in batch_size pieces; the last may be smaller."""
    rows = batch_rows(n_samples(arrays), batch_size, rng)
    return ({k: v[r] for k, v in arrays.items()} for r in rows)


def batch_rows(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """The row indices of `batches`, as views of one permutation: the trainer gathers them
    straight into its input buffers, so a step copies no batch."""
    _check_batch_size(batch_size)
    order = rng.permutation(n)
    return (order[start:start + batch_size] for start in range(0, n, batch_size))


def first_batch(arrays: Mapping[str, np.ndarray], batch_size: int) -> Arrays:
    """The first batch_size samples in file order (all of them if fewer)."""
    _check_batch_size(batch_size)
    return {k: v[:batch_size] for k, v in arrays.items()}


def _check_batch_size(batch_size) -> None:
    if not is_whole(batch_size) or batch_size < 1:
        raise SpecError(f"batch_size must be a positive integer, got {short(batch_size)}")


# --- small checks ----------------------------------------------------------------------------

def _check_keys(cfg: Mapping, allowed: tuple, what: str) -> None:
    for key in cfg:
        if key not in allowed:
            raise SpecError(f"unknown key '{key}' for {what}; it accepts: {', '.join(allowed)}",
                            mark=key_mark(cfg, key), hint=did_you_mean(str(key), allowed))


def _seed(value, cfg: Mapping) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SpecError(f"seed must be a non-negative integer, got {short(value)}",
                        mark=value_mark(cfg, "seed"))
    return value


def _dtype(name, input_name: str) -> np.dtype:
    try:
        return np.dtype(name)
    except TypeError:
        raise SpecError(f"input '{input_name}' has unknown dtype {short(name)}",
                        node=input_name) from None
