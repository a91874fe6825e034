"""Training data for a spec's `train.data`: built-in datasets, CSV, .npz and .npy files.

    load_data(cfg, *, spec_dir, inputs, input_dtypes=None, seed=0, classes=None,
              mark=None) -> Dataset

`cfg` is the `train.data` mapping. `inputs` maps each fed input to its declared
shape (ints, or strings for symbolic dims; dim 0 is the batch dim) and
`input_dtypes` maps it to a numpy dtype name (float32 where absent). `seed` is the
spec's seed; a `seed:` in cfg overrides it. `classes` maps a label input to the
number of classes the graph expects, to check labels against. Every array of the
result has N samples first, then the input's declared dims, in its declared dtype.

Mapping, normalization and splitting rules are in docs/data.md; `batches`,
`first_batch` and `apply_stats` serve training and eval.
"""
from __future__ import annotations

import csv
import inspect
import math
import typing
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional

import numpy as np

from .errors import Mark, SpecError, did_you_mean

Arrays = dict[str, np.ndarray]
Stats = dict[str, dict[str, np.ndarray]]

SOURCES = ("dataset", "csv", "npz", "npy")
COMMON_KEYS = ("normalize", "validation", "shuffle", "seed")
SOURCE_KEYS = {
    "dataset": ("dataset", "samples", "map"),
    "csv": ("csv", "columns", "classes"),
    "npz": ("npz", "map", "classes"),
    "npy": ("npy", "classes"),
}
DEFAULT_SAMPLES = 300
_SPLIT_STREAM = 1  # the split draws from its own stream so it never shifts the generator's


@dataclass(frozen=True)
class Dataset:
    """Arrays keyed by input name, samples first; `stats` is the train split's normalization."""
    train: Arrays
    valid: Optional[Arrays]
    stats: Stats
    n_classes: Optional[int]


@dataclass(frozen=True)
class _Raw:
    """A source's arrays per input before shape and dtype fitting, and how to point into them."""
    arrays: Arrays
    origin: Mapping[str, str]              # input -> "dataset 'blobs'", "data.npz array 'x'"
    where: Callable[[str, tuple], str]     # input, index -> "data.csv line 7, column 'a'"
    targets: tuple[str, ...]               # inputs that `normalize: standard` leaves alone
    n_classes: Optional[int]


# --- entry point -------------------------------------------------------------------------

def load_data(cfg: Mapping, *, spec_dir: Path, inputs: Mapping[str, tuple],
              input_dtypes: Optional[Mapping[str, str]] = None, seed: int = 0,
              classes: Optional[Mapping[str, int]] = None,
              mark: Optional[Mark] = None) -> Dataset:
    """Read `train.data`, fit each array to its input, split off validation, normalize."""
    try:
        return _load(cfg, Path(spec_dir), dict(inputs), dict(input_dtypes or {}), seed,
                     dict(classes or {}))
    except SpecError as e:
        if e.mark is not None or mark is None:
            raise
        raise SpecError(e.message, mark=mark, node=e.node, hint=e.hint,
                        context=e.context) from None


def _load(cfg, spec_dir: Path, inputs: dict, dtypes: dict, seed: int, classes: dict) -> Dataset:
    if not isinstance(cfg, Mapping):
        raise SpecError(f"train.data must be a mapping, got {cfg!r}",
                        hint="e.g. data: {dataset: spiral, samples: 300}")
    kind = _source_kind(cfg)
    allowed = SOURCE_KEYS[kind] + COMMON_KEYS
    if kind == "dataset":
        allowed += tuple(_arguments(_generator(cfg)))
    _check_keys(cfg, allowed, _what(cfg, kind))
    seed = _seed(cfg.get("seed", seed), cfg)
    dtypes = {name: _dtype(dtypes.get(name, "float32"), name) for name in inputs}
    raw = LOADERS[kind](cfg, spec_dir, inputs, seed)
    label_classes = {name: classes.get(name, raw.n_classes) for name in inputs}
    arrays = {name: _fit(name, raw, inputs[name], dtypes[name], label_classes[name])
              for name in inputs}
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
                        mark=_key_mark(cfg, kinds[1]))
    raise SpecError("train.data needs a source: one of dataset, csv, npz, npy",
                    mark=getattr(cfg, "mark", None),
                    hint="e.g. {dataset: spiral, samples: 300} or {csv: data.csv, columns: {...}}")


def _what(cfg: Mapping, kind: str) -> str:
    return f"dataset '{cfg['dataset']}'" if kind == "dataset" else f"{kind} data"


# --- fitting arrays to inputs --------------------------------------------------------------

def _fit(name: str, raw: _Raw, shape: tuple, dtype: np.dtype, n_classes: Optional[int]):
    """Check one input's raw array (finite, castable, labels in range), then reshape and cast."""
    arr = raw.arrays[name]
    _check_finite(name, arr, raw.where)
    if dtype.kind in "iu":
        _check_integral(name, arr, dtype, raw.where)
        if n_classes is not None:
            _check_labels(name, arr, n_classes, raw.where)
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
                    hint="drop or fill missing values before training")


def _check_integral(name: str, arr: np.ndarray, dtype: np.dtype, where) -> None:
    if arr.dtype.kind != "f":
        return
    bad = np.argwhere(arr != np.round(arr))
    if len(bad):
        index = tuple(int(i) for i in bad[0])
        raise SpecError(f"{where(name, index)}: {arr[index]:g} is not an integer, but input "
                        f"'{name}' is {dtype}", node=name,
                        hint=f"declare '{name}' with a float dtype for regression targets")


def _check_labels(name: str, arr: np.ndarray, n_classes: int, where) -> None:
    bad = np.argwhere((arr < 0) | (arr >= n_classes))
    if len(bad):
        index = tuple(int(i) for i in bad[0])
        raise SpecError(f"{where(name, index)}: label {arr[index]:g} is out of range for "
                        f"{n_classes} classes (expected 0..{n_classes - 1})", node=name,
                        hint="check `classes:` against the model's number of outputs")


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
        raise SpecError(f"shuffle must be true or false, got {shuffle!r}",
                        mark=_value_mark(cfg, "shuffle"))
    if fraction is None:
        return arrays, None
    if not _is_number(fraction) or not 0 < fraction < 1:
        raise SpecError(f"validation must be a fraction strictly between 0 and 1, "
                        f"got {fraction!r}", mark=_value_mark(cfg, "validation"),
                        hint="omit `validation` to train on every sample")
    n = n_samples(arrays)
    n_valid = max(1, round(fraction * n))
    if n - n_valid < 1:
        raise SpecError(f"validation {fraction} of {n} samples leaves none to train on",
                        mark=_value_mark(cfg, "validation"))
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
                                mark=_value_mark(cfg, "normalize"),
                                hint=did_you_mean(str(name), dtypes))
            if dtypes[name].kind != "f":
                raise SpecError(f"input '{name}' is {dtypes[name]}: labels are never normalized",
                                mark=_value_mark(cfg, "normalize"))
        return tuple(rule["standard"])
    raise SpecError(f"normalize must be 'standard' or {{standard: [INPUT, ...]}}, got {rule!r}",
                    mark=_value_mark(cfg, "normalize"),
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
    _check_batch_size(batch_size)
    return _epoch(dict(arrays), batch_size, rng.permutation(n_samples(arrays)))


def _epoch(arrays: Arrays, batch_size: int, order: np.ndarray) -> Iterator[Arrays]:
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield {k: v[idx] for k, v in arrays.items()}


def first_batch(arrays: Mapping[str, np.ndarray], batch_size: int) -> Arrays:
    """The first batch_size samples in file order (all of them if fewer)."""
    _check_batch_size(batch_size)
    return {k: v[:batch_size] for k, v in arrays.items()}


def _check_batch_size(batch_size) -> None:
    integer = isinstance(batch_size, (int, np.integer)) and not isinstance(batch_size, bool)
    if not integer or batch_size < 1:
        raise SpecError(f"batch_size must be a positive integer, got {batch_size!r}")


# --- built-in datasets ------------------------------------------------------------------------

def _spiral(n: int, rng: np.random.Generator, *, classes: int = 3, noise: float = 0.2):
    """CS231n spiral, arm j: r = linspace(0, 1), t = linspace(4j, 4j+4) + noise*N(0,1),
    x = r*(sin t, cos t)."""
    _require(classes >= 1, f"classes must be >= 1, got {classes}")
    _require(n >= classes, f"samples ({n}) must be at least classes ({classes})")
    sizes = _even_sizes(n, classes)
    arms = []
    for j, m in enumerate(sizes):
        r = np.linspace(0.0, 1.0, m)
        t = np.linspace(4.0 * j, 4.0 * (j + 1), m) + noise * rng.standard_normal(m)
        arms.append(np.stack([r * np.sin(t), r * np.cos(t)], axis=1))
    return np.concatenate(arms), np.repeat(np.arange(classes), sizes), classes


def _moons(n: int, rng: np.random.Generator, *, noise: float = 0.1):
    """sklearn make_moons: two interleaved half circles, each plus noise*N(0, I)."""
    _require(n >= 2, f"samples must be at least 2, got {n}")
    n_out, n_in = n // 2, n - n // 2
    t_out, t_in = np.linspace(0, np.pi, n_out), np.linspace(0, np.pi, n_in)
    x = np.concatenate([np.stack([np.cos(t_out), np.sin(t_out)], axis=1),
                        np.stack([1 - np.cos(t_in), 0.5 - np.sin(t_in)], axis=1)])
    return x + noise * rng.standard_normal(x.shape), _labels(n_out, n_in), 2


def _circles(n: int, rng: np.random.Generator, *, noise: float = 0.05, factor: float = 0.5):
    """sklearn make_circles: a unit circle (label 0) around one of radius `factor` (label 1)."""
    _require(n >= 2, f"samples must be at least 2, got {n}")
    _require(0 < factor < 1, f"factor must be between 0 and 1, got {factor}")
    n_out, n_in = n // 2, n - n // 2
    t_out = np.linspace(0, 2 * np.pi, n_out, endpoint=False)
    t_in = np.linspace(0, 2 * np.pi, n_in, endpoint=False)
    x = np.concatenate([np.stack([np.cos(t_out), np.sin(t_out)], axis=1),
                        factor * np.stack([np.cos(t_in), np.sin(t_in)], axis=1)])
    return x + noise * rng.standard_normal(x.shape), _labels(n_out, n_in), 2


def _xor(n: int, rng: np.random.Generator, *, noise: float = 0.0):
    """x ~ U[-1, 1]^2, label 1 where x0 * x1 < 0 (the signs differ), then x += noise*N(0, I)."""
    x = rng.uniform(-1.0, 1.0, (n, 2))
    y = (x[:, 0] * x[:, 1] < 0).astype(np.int64)
    return x + noise * rng.standard_normal(x.shape), y, 2


def _blobs(n: int, rng: np.random.Generator, *, features: int = 2, classes: int = 3,
           std: float = 1.0):
    """sklearn make_blobs: centers ~ U[-10, 10]^features, x = center[y] + std*N(0, I)."""
    _require(features >= 1, f"features must be >= 1, got {features}")
    _require(classes >= 1 and n >= classes, f"need 1 <= classes <= samples, got classes={classes}")
    centers = rng.uniform(-10.0, 10.0, (classes, features))
    y = np.repeat(np.arange(classes), _even_sizes(n, classes))
    return centers[y] + std * rng.standard_normal((n, features)), y, classes


def _linear(n: int, rng: np.random.Generator, *, features: int = 1, noise: float = 0.1):
    """Regression: x ~ N(0, I), y = x @ w + b + noise*N(0, 1), with w, b ~ N(0, 1)."""
    _require(features >= 1, f"features must be >= 1, got {features}")
    w_true, b_true = rng.standard_normal(features), rng.standard_normal()
    x = rng.standard_normal((n, features))
    return x, x @ w_true + b_true + noise * rng.standard_normal(n), None


def _sine(n: int, rng: np.random.Generator, *, noise: float = 0.1):
    """Regression: x ~ U[-pi, pi], y = sin(x) + noise*N(0, 1)."""
    x = rng.uniform(-np.pi, np.pi, (n, 1))
    return x, np.sin(x[:, 0]) + noise * rng.standard_normal(n), None


DATASETS = {"spiral": _spiral, "moons": _moons, "circles": _circles, "xor": _xor,
            "blobs": _blobs, "linear": _linear, "sine": _sine}


def _generator(cfg: Mapping) -> Callable:
    name = cfg["dataset"]
    if not isinstance(name, str) or name not in DATASETS:
        raise SpecError(f"unknown dataset '{name}'", mark=_value_mark(cfg, "dataset"),
                        hint=did_you_mean(str(name), DATASETS) or f"known: {', '.join(DATASETS)}")
    return DATASETS[name]


def _load_dataset(cfg: Mapping, spec_dir: Path, inputs: dict, seed: int) -> _Raw:
    name, fn = cfg["dataset"], _generator(cfg)
    kwargs = {k: cfg[k] for k in _arguments(fn) if k in cfg}
    _check_types(cfg, {"samples": int, **_arguments(fn)}, f"dataset '{name}'")
    n = cfg.get("samples", DEFAULT_SAMPLES)
    if n < 1:
        raise SpecError(f"samples must be positive, got {n}", mark=_value_mark(cfg, "samples"))
    rng = np.random.default_rng(seed)
    try:
        x, y, n_classes = fn(n, rng, **kwargs)
    except ValueError as e:
        raise SpecError(f"dataset '{name}': {e}", mark=getattr(cfg, "mark", None)) from None
    order = rng.permutation(n)  # rows come shuffled, like sklearn's shuffle=True
    generated = {"x": x[order], "y": y[order]}
    mapping = _dataset_map(cfg, inputs, name)
    return _Raw({i: generated[a] for i, a in mapping.items()},
                {i: f"dataset '{name}'" for i in inputs},
                lambda i, idx: f"dataset '{name}' sample {idx[0]}",
                tuple(i for i, a in mapping.items() if a == "y"), n_classes)


def _dataset_map(cfg: Mapping, inputs: dict, dataset: str) -> dict[str, str]:
    """input -> 'x' | 'y': `map:` if given, else by name, else (two inputs) by position."""
    if "map" in cfg:
        return _explicit_map(cfg, inputs, ("x", "y"), f"dataset '{dataset}'")
    if all(name in ("x", "y") for name in inputs):
        return {name: name for name in inputs}
    if len(inputs) == 2:
        return dict(zip(inputs, ("x", "y")))
    raise SpecError(f"cannot tell which of the inputs {', '.join(inputs)} get dataset "
                    f"'{dataset}''s features x and labels y", mark=getattr(cfg, "mark", None),
                    hint="add map: {INPUT: x, INPUT: y}")


def _explicit_map(cfg: Mapping, inputs: dict, choices, what: str) -> dict[str, str]:
    """Check `map: {INPUT: ARRAY}`; fed inputs it leaves out keep their own name."""
    given = cfg["map"]
    mark = _value_mark(cfg, "map")
    if not isinstance(given, Mapping):
        raise SpecError(f"map must be a mapping {{INPUT: ARRAY}}, got {given!r}", mark=mark)
    for name, array in given.items():
        if name not in inputs:
            raise SpecError(f"map names '{name}', which is not a fed input", mark=mark,
                            hint=_suggest(name, inputs, "fed inputs"))
        if choices is not None and array not in choices:
            raise SpecError(f"map: {what} has no array '{array}' (it has {', '.join(choices)})",
                            mark=mark, node=name, hint=did_you_mean(str(array), choices))
    mapping = {name: given.get(name, name) for name in inputs}
    for name, array in mapping.items():
        if choices is not None and array not in choices:
            raise SpecError(f"input '{name}' is not in map, and {what} has no array named so",
                            mark=mark, node=name, hint=f"add map: {{{name}: ARRAY}}")
    return mapping


# --- files --------------------------------------------------------------------------------------

def _load_csv(cfg: Mapping, spec_dir: Path, inputs: dict, seed: int) -> _Raw:
    shown = str(cfg["csv"])
    header, rows, lines = _read_csv(_data_path(cfg, "csv", spec_dir), shown)
    columns = _csv_columns(cfg, header, inputs, shown)
    index = {c: j for j, c in enumerate(header)}
    arrays = {}
    for name, (cols, single) in columns.items():
        table = _parse_cells(rows, lines, [index[c] for c in cols], cols, shown)
        arrays[name] = table[:, 0] if single else table

    def where(name, idx):
        cols = columns[name][0]
        column = cols[idx[1]] if len(idx) > 1 else cols[0]
        return f"{shown} line {lines[idx[0]]}, column '{column}'"

    origin = {name: f"{shown} (columns {', '.join(cols)})" for name, (cols, _) in columns.items()}
    return _Raw(arrays, origin, where, _file_targets(inputs), _classes_option(cfg))


def _read_csv(path: Path, shown: str) -> tuple[list[str], list[list[str]], list[int]]:
    """Header, data rows and each row's 1-based line; blank lines skipped, widths checked."""
    rows, lines, header = [], [], None
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            for row in reader:
                if not row or all(not cell.strip() for cell in row):
                    continue
                if header is None:
                    header = [cell.strip() for cell in row]
                    _check_header(header, shown, reader.line_num)
                elif len(row) != len(header):
                    raise SpecError(f"{shown} line {reader.line_num}: {len(row)} fields, but the "
                                    f"header has {len(header)}")
                else:
                    rows.append(row)
                    lines.append(reader.line_num)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise SpecError(f"cannot read {shown}: {e}") from None
    if not rows:
        raise SpecError(f"{shown} has no data rows" if header else f"{shown} is empty",
                        hint="the first row names the columns; each later row is one sample")
    return header, rows, lines


def _check_header(header: list[str], shown: str, line: int) -> None:
    seen = set()
    for name in header:
        if not name or name in seen:
            raise SpecError(f"{shown} line {line}: header has "
                            f"{'an empty' if not name else 'a repeated'} column name "
                            f"{name!r}", hint="give every column a distinct name")
        seen.add(name)


def _csv_columns(cfg: Mapping, header: list[str], inputs: dict, shown: str):
    """input -> (column names, single): its `columns:` entry, else the column of its name."""
    spec = cfg.get("columns") or {}
    mark = _value_mark(cfg, "columns")
    if not isinstance(spec, Mapping):
        raise SpecError(f"columns must be a mapping {{INPUT: COLUMN | [COLUMNS] | rest}}, "
                        f"got {spec!r}", mark=mark)
    for name in spec:
        if name not in inputs:
            raise SpecError(f"columns names '{name}', which is not a fed input", mark=mark,
                            hint=_suggest(name, inputs, "fed inputs"))
    chosen, rest = {}, None
    for name in inputs:
        choice = spec.get(name, name if name in header else None)
        if choice is None:
            raise SpecError(f"input '{name}' has no columns in {shown}", mark=mark, node=name,
                            hint=f"add columns: {{{name}: COLUMN | [COLUMNS] | rest}}")
        if choice == "rest":
            if rest is not None:
                raise SpecError(f"both '{rest}' and '{name}' ask for the rest of the columns",
                                mark=mark)
            rest = name
            continue
        chosen[name] = _column_list(name, choice, header, shown, mark)
    _check_disjoint(chosen, mark)
    if rest is not None:
        used = {c for cols, _ in chosen.values() for c in cols}
        left = [c for c in header if c not in used]
        if not left:
            raise SpecError(f"input '{rest}' takes the rest of the columns, but none are left",
                            mark=mark, node=rest)
        chosen[rest] = (left, False)
    return {name: chosen[name] for name in inputs}


def _column_list(name: str, choice, header: list[str], shown: str, mark) -> tuple[list[str], bool]:
    single = isinstance(choice, str)
    cols = [choice] if single else choice
    if not isinstance(cols, list) or not cols or not all(isinstance(c, str) for c in cols):
        raise SpecError(f"columns of '{name}' must be a column name, a list of them, or rest; "
                        f"got {choice!r}", mark=mark, node=name)
    for c in cols:
        if c not in header:
            raise SpecError(f"{shown} has no column '{c}' (wanted by input '{name}')", mark=mark,
                            node=name, hint=_suggest(c, header, "its columns"))
    return cols, single


def _check_disjoint(chosen: dict, mark) -> None:
    owner = {}
    for name, (cols, _) in chosen.items():
        for c in cols:
            if c in owner:
                raise SpecError(f"column '{c}' is given to both '{owner[c]}' and '{name}'",
                                mark=mark)
            owner[c] = name


def _parse_cells(rows, lines, picks: list[int], cols: list[str], shown: str) -> np.ndarray:
    """The picked columns as float64 [rows, len(picks)]; a cell float() rejects is an error."""
    out = np.empty((len(rows), len(picks)))
    for i, row in enumerate(rows):
        for j, pick in enumerate(picks):
            cell = row[pick].strip()
            try:
                out[i, j] = float(cell)
            except ValueError:
                what = "empty cell" if not cell else f"{cell!r} is not a number"
                raise SpecError(f"{shown} line {lines[i]}, column '{cols[j]}': {what}",
                                hint="every data cell must be a number") from None
    return out


def _load_npz(cfg: Mapping, spec_dir: Path, inputs: dict, seed: int) -> _Raw:
    shown = str(cfg["npz"])
    mapping = _explicit_map(cfg, inputs, None, shown) if "map" in cfg else {n: n for n in inputs}
    with _np_load(_data_path(cfg, "npz", spec_dir), shown, archive=True) as archive:
        for name, key in mapping.items():
            if key not in archive.files:
                raise SpecError(f"{shown} has no array '{key}' for input '{name}'; it has: "
                                f"{', '.join(archive.files) or 'no arrays'}", node=name,
                                hint=did_you_mean(str(key), archive.files))
        arrays = {name: _numeric(_member(archive, key, shown), f"{shown} array '{key}'")
                  for name, key in mapping.items()}
    return _Raw(arrays, {n: f"{shown} array '{k}'" for n, k in mapping.items()},
                lambda n, idx: f"{shown} array '{mapping[n]}' at index {_index(idx)}",
                _file_targets(inputs), _classes_option(cfg))


def _load_npy(cfg: Mapping, spec_dir: Path, inputs: dict, seed: int) -> _Raw:
    files = cfg["npy"]
    if isinstance(files, str) and len(inputs) == 1:
        files = {next(iter(inputs)): files}
    if not isinstance(files, Mapping):
        raise SpecError(f"npy must map each fed input to a .npy file, got {files!r}",
                        mark=_value_mark(cfg, "npy"), hint="e.g. npy: {x: x.npy, y: y.npy}")
    for name in inputs:
        if name not in files:
            raise SpecError(f"input '{name}' has no file in npy", mark=_value_mark(cfg, "npy"),
                            node=name, hint=f"add {name}: FILE.npy")
    for name in files:
        if name not in inputs:
            raise SpecError(f"npy names '{name}', which is not a fed input",
                            mark=_value_mark(cfg, "npy"), hint=did_you_mean(str(name), inputs))
    arrays = {}
    for name in inputs:
        shown = str(files[name])
        arrays[name] = _numeric(_np_load(_resolve(spec_dir, shown), shown, archive=False), shown)
    return _Raw(arrays, {n: str(files[n]) for n in inputs},
                lambda n, idx: f"{files[n]} at index {_index(idx)}",
                _file_targets(inputs), _classes_option(cfg))


LOADERS = {"dataset": _load_dataset, "csv": _load_csv, "npz": _load_npz, "npy": _load_npy}


def _np_load(path: Path, shown: str, *, archive: bool):
    """np.load without pickles (data files must not run code); an .npz archive or one array."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise SpecError(f"cannot read {shown}: {e}") from None
    is_archive = isinstance(loaded, np.lib.npyio.NpzFile)
    if is_archive and not archive:
        loaded.close()
        raise SpecError(f"{shown} is an .npz archive; npy wants one array per file",
                        hint="use {npz: FILE.npz} for archives")
    if archive and not is_archive:
        raise SpecError(f"{shown} holds one array, not an .npz archive of named arrays",
                        hint="use {npy: {INPUT: FILE.npy}} for single arrays")
    return loaded


def _member(archive, key: str, shown: str) -> np.ndarray:
    try:
        return archive[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise SpecError(f"cannot read array '{key}' of {shown}: {e}") from None


def _numeric(arr: np.ndarray, what: str) -> np.ndarray:
    """A samples-first array of numbers (bools read as 0/1)."""
    if arr.dtype.kind not in "biuf":
        raise SpecError(f"{what} has dtype {arr.dtype}; data must be numbers")
    if arr.ndim == 0:
        raise SpecError(f"{what} is a scalar; data arrays hold one sample per row")
    return arr.astype(np.int64) if arr.dtype.kind == "b" else arr


def _file_targets(inputs: dict) -> tuple[str, ...]:
    """The input left out of `normalize: standard`: 'y' if fed, else the second of two."""
    if "y" in inputs:
        return ("y",)
    return (list(inputs)[1],) if len(inputs) == 2 else ()


def _classes_option(cfg: Mapping) -> Optional[int]:
    k = cfg.get("classes")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise SpecError(f"classes must be a positive integer, got {k!r}",
                        mark=_value_mark(cfg, "classes"))
    return k


def _data_path(cfg: Mapping, key: str, spec_dir: Path) -> Path:
    if not isinstance(cfg[key], str):
        raise SpecError(f"{key} must be a file path, got {cfg[key]!r}", mark=_value_mark(cfg, key))
    return _resolve(spec_dir, cfg[key])


def _resolve(spec_dir: Path, text: str) -> Path:
    """Relative paths are relative to the spec's folder, not the working directory."""
    path = Path(text).expanduser()
    path = path if path.is_absolute() else spec_dir / path
    if not path.is_file():
        raise SpecError(f"data file not found: {text}", hint=f"looked for {path}")
    return path


def _index(idx: tuple) -> str:
    return str(idx[0]) if len(idx) == 1 else str(idx)


# --- small checks ----------------------------------------------------------------------------

def _check_keys(cfg: Mapping, allowed: tuple, what: str) -> None:
    for key in cfg:
        if key not in allowed:
            raise SpecError(f"unknown key '{key}' for {what}; it accepts: {', '.join(allowed)}",
                            mark=_key_mark(cfg, key), hint=did_you_mean(str(key), allowed))


def _check_types(cfg: Mapping, types: dict, what: str) -> None:
    for key, kind in types.items():
        if key in cfg and not _has_type(cfg[key], kind):
            word = "an integer" if kind is int else "a finite number"
            raise SpecError(f"{key} of {what} must be {word}, got {cfg[key]!r}",
                            mark=_value_mark(cfg, key))


def _has_type(value, kind) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return _is_number(value)


def _is_number(value) -> bool:
    # YAML bools are Python ints; `noise: yes` is a typo, not 1.
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _seed(value, cfg: Mapping) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SpecError(f"seed must be a non-negative integer, got {value!r}",
                        mark=_value_mark(cfg, "seed"))
    return value


def _dtype(name, input_name: str) -> np.dtype:
    try:
        return np.dtype(name)
    except TypeError:
        raise SpecError(f"input '{input_name}' has unknown dtype {name!r}",
                        node=input_name) from None


def _arguments(fn) -> dict[str, type]:
    """name -> type of a generator's keyword-only parameters: the options a `dataset:` may set."""
    types = typing.get_type_hints(fn)  # not signature(eval_str=True): that needs Python 3.10
    return {k: types[k] for k, p in inspect.signature(fn).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _even_sizes(n: int, k: int) -> list[int]:
    """n split into k parts differing by at most one, larger parts first."""
    return [n // k + (1 if j < n % k else 0) for j in range(k)]


def _labels(n0: int, n1: int) -> np.ndarray:
    return np.concatenate([np.zeros(n0, np.int64), np.ones(n1, np.int64)])


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _suggest(word, choices, what: str) -> str:
    """'did you mean X?' when one is close, else the whole list."""
    return did_you_mean(str(word), choices) or f"{what}: {', '.join(choices)}"


def _key_mark(cfg: Mapping, key) -> Optional[Mark]:
    """Where a key sits in the spec, when cfg came from graphc's marked YAML loader."""
    marks = getattr(cfg, "key_marks", None)
    return marks.get(key) if marks else None


def _value_mark(cfg: Mapping, key) -> Optional[Mark]:
    mark_of = getattr(cfg, "mark_of", None)
    return mark_of(key) if mark_of else None
