"""`train.data`'s sources (dataset, csv, npz, npy) read into raw arrays per fed input.

    LOADERS[kind](cfg, spec_dir, inputs, seed) -> Raw

Each loader decides which generated array, CSV columns or file array feeds which
input (`map:`, `columns:`, `npy:`), and says how to point at a sample in its
errors. Fitting shapes and dtypes, splitting and normalizing are graphc/data.py's.
Also here: where a `train.data` key or value sits in the spec (key_mark, value_mark).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional

import numpy as np

from .datafiles import member, np_load, numeric, parse_cells, read_csv, resolve
from .datasets import DATASETS, FULL_SIZE, options
from .errors import Mark, SpecError, did_you_mean, short
from .limits import check_memory
from .outfiles import not_read, not_same
from .shapes import is_number

Arrays = dict[str, np.ndarray]

DEFAULT_SAMPLES = 300


@dataclass(frozen=True)
class Raw:
    """A source's arrays per input before shape and dtype fitting, and how to point into them."""
    arrays: Arrays
    origin: Mapping[str, str]              # input -> "dataset 'blobs'", "data.npz array 'x'"
    where: Callable[[str, tuple], str]     # input, index -> "data.csv line 7, column 'a'"
    targets: tuple[str, ...]               # inputs that `normalize: standard` leaves alone
    n_classes: Optional[int]


# --- built-in datasets ------------------------------------------------------------------------

def generator(cfg: Mapping) -> Callable:
    """The generator `dataset:` names; an unknown name is an error with a suggestion."""
    name = cfg["dataset"]
    if not isinstance(name, str) or name not in DATASETS:
        raise SpecError(f"unknown dataset {short(name)}", mark=value_mark(cfg, "dataset"),
                        hint=did_you_mean(str(name), DATASETS) or f"known: {', '.join(DATASETS)}")
    return DATASETS[name]


def _load_dataset(cfg: Mapping, spec_dir: Path, inputs: dict, seed: int) -> Raw:
    name, fn = cfg["dataset"], generator(cfg)
    kwargs = {k: cfg[k] for k in options(fn) if k in cfg}
    _check_types(cfg, {"samples": int, **options(fn)}, f"dataset '{name}'")
    n = cfg.get("samples", FULL_SIZE.get(name, DEFAULT_SAMPLES))
    if n < 1:
        raise SpecError(f"samples must be positive, got {n}", mark=value_mark(cfg, "samples"))
    # a float64 row per sample for every input, before the generator allocates anything
    row = sum(math.prod(d for d in shape[1:] if isinstance(d, int)) for shape in inputs.values())
    check_memory(n * 8 * max(row, 1), f"dataset '{name}' of {n} samples",
                 mark=value_mark(cfg, "samples"))
    rng = np.random.default_rng(seed)
    try:
        x, y, n_classes = fn(n, rng, **kwargs)
    except ValueError as e:
        raise SpecError(f"dataset '{name}': {e}", mark=getattr(cfg, "mark", None)) from None
    order = rng.permutation(n)  # rows come shuffled, like sklearn's shuffle=True
    generated = {"x": x[order], "y": y[order]}
    mapping = _dataset_map(cfg, inputs, name)
    return Raw({i: generated[a] for i, a in mapping.items()},
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
    mark = value_mark(cfg, "map")
    if not isinstance(given, Mapping):
        raise SpecError(f"map must be a mapping {{INPUT: ARRAY}}, got {short(given)}", mark=mark)
    for name, array in given.items():
        if not isinstance(array, str):
            raise SpecError(f"map gives input '{name}' the array {short(array)}, expected "
                            "the name of an array in the file", mark=mark, node=name)
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

def _load_csv(cfg: Mapping, spec_dir: Path, inputs: dict, seed: int) -> Raw:
    shown = str(cfg["csv"])
    header, rows, lines = read_csv(_data_path(cfg, "csv", spec_dir), shown)
    columns = _csv_columns(cfg, header, inputs, shown)
    index = {c: j for j, c in enumerate(header)}
    arrays = {}
    for name, (cols, single) in columns.items():
        table = parse_cells(rows, lines, [index[c] for c in cols], cols, shown)
        arrays[name] = table[:, 0] if single else table

    def where(name, idx):
        cols = columns[name][0]
        column = cols[idx[1]] if len(idx) > 1 else cols[0]
        return f"{shown} line {lines[idx[0]]}, column '{column}'"

    origin = {name: f"{shown} (columns {', '.join(cols)})" for name, (cols, _) in columns.items()}
    return Raw(arrays, origin, where, _file_targets(inputs), _classes_option(cfg))


def _csv_columns(cfg: Mapping, header: list[str], inputs: dict, shown: str):
    """input -> (column names, single): its `columns:` entry, else the column of its name."""
    spec = cfg.get("columns") or {}
    mark = value_mark(cfg, "columns")
    if not isinstance(spec, Mapping):
        raise SpecError(f"columns must be a mapping {{INPUT: COLUMN | [COLUMNS] | rest}}, "
                        f"got {short(spec)}", mark=mark)
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
                        f"got {short(choice)}", mark=mark, node=name)
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


def _load_npz(cfg: Mapping, spec_dir: Path, inputs: dict, seed: int) -> Raw:
    shown = str(cfg["npz"])
    mapping = _explicit_map(cfg, inputs, None, shown) if "map" in cfg else {n: n for n in inputs}
    with np_load(_data_path(cfg, "npz", spec_dir), shown, archive=True,
                 hint="use {npy: {INPUT: FILE.npy}} for single arrays") as archive:
        for name, key in mapping.items():
            if key not in archive.files:
                raise SpecError(f"{shown} has no array '{key}' for input '{name}'; it has: "
                                f"{', '.join(archive.files) or 'no arrays'}", node=name,
                                hint=did_you_mean(str(key), archive.files))
        arrays = {name: numeric(member(archive, key, shown), f"{shown} array '{key}'")
                  for name, key in mapping.items()}
    return Raw(arrays, {n: f"{shown} array '{k}'" for n, k in mapping.items()},
               lambda n, idx: f"{shown} array '{mapping[n]}' at index {_index(idx)}",
               _file_targets(inputs), _classes_option(cfg))


def _load_npy(cfg: Mapping, spec_dir: Path, inputs: dict, seed: int) -> Raw:
    files = cfg["npy"]
    if isinstance(files, str) and len(inputs) == 1:
        files = {next(iter(inputs)): files}
    if not isinstance(files, Mapping) or not all(isinstance(f, str) for f in files.values()):
        raise SpecError(f"npy must map each fed input to a .npy file, got {short(files)}",
                        mark=value_mark(cfg, "npy"), hint="e.g. npy: {x: x.npy, y: y.npy}")
    for name in inputs:
        if name not in files:
            raise SpecError(f"input '{name}' has no file in npy", mark=value_mark(cfg, "npy"),
                            node=name, hint=f"add {name}: FILE.npy")
    for name in files:
        if name not in inputs:
            raise SpecError(f"npy names '{name}', which is not a fed input",
                            mark=value_mark(cfg, "npy"), hint=did_you_mean(str(name), inputs))
    arrays = {}
    for name in inputs:
        shown = str(files[name])
        loaded = np_load(resolve(spec_dir, shown), shown, archive=False,
                         hint="use {npz: FILE.npz} for archives")
        arrays[name] = numeric(loaded, shown)
    return Raw(arrays, {n: str(files[n]) for n in inputs},
               lambda n, idx: f"{files[n]} at index {_index(idx)}",
               _file_targets(inputs), _classes_option(cfg))


def _load_arrays(cfg: Mapping, spec_dir: Path, inputs: dict, seed: int) -> Raw:
    """In-memory arrays, `{arrays: {INPUT: array}}`: what the Python API's fit and predict
    pass (nested lists in YAML)."""
    given = cfg["arrays"]
    if not isinstance(given, Mapping):
        raise SpecError(f"arrays must map each fed input to an array, got "
                        f"{type(given).__name__}", mark=value_mark(cfg, "arrays"),
                        hint="e.g. {'x': X, 'y': y}")
    arrays = {}
    for name in inputs:
        if name not in given:
            names = [str(k) for k in given]
            raise SpecError(f"no array for input '{name}'; given: {', '.join(names) or 'none'}",
                            node=name, hint=did_you_mean(name, names))
        try:
            arrays[name] = numeric(np.asarray(given[name]), f"the array for input '{name}'")
        except ValueError as e:     # numpy's words on ragged lists run to three sentences
            why = "its rows differ in length" if "inhomogeneous" in str(e) else str(e)
            raise SpecError(f"the array for input '{name}' is not rectangular: {why}",
                            node=name, hint="give every sample the same shape") from None
    return Raw(arrays, {n: f"the array for '{n}'" for n in inputs},
               lambda n, idx: f"the array for '{n}' at index {_index(idx)}",
               _file_targets(inputs), _classes_option(cfg))


LOADERS = {"dataset": _load_dataset, "csv": _load_csv, "npz": _load_npz, "npy": _load_npy,
           "arrays": _load_arrays}


def _file_targets(inputs: dict) -> tuple[str, ...]:
    """The input left out of `normalize: standard`: 'y' if fed, else the second of two."""
    if "y" in inputs:
        return ("y",)
    return (list(inputs)[1],) if len(inputs) == 2 else ()


def _classes_option(cfg: Mapping) -> Optional[int]:
    k = cfg.get("classes")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise SpecError(f"classes must be a positive integer, got {short(k)}",
                        mark=value_mark(cfg, "classes"))
    return k


def data_files(cfg, spec_dir: Path) -> list[Path]:
    """The files a `train.data` mapping names (csv, npz, each npy), where the loaders look
    for them; nothing is checked here (the loaders do)."""
    if not isinstance(cfg, Mapping):
        return []
    npy = cfg.get("npy")
    named = [cfg.get("csv"), cfg.get("npz")] + (list(npy.values()) if isinstance(npy, Mapping)
                                                else [npy])
    return [spec_dir / Path(p).expanduser() for p in named if isinstance(p, str) and p]


def check_not_inputs(path, what: str, spec_file: Path, cfg) -> None:
    """SpecError where checkpoint `path` (named by `what`) is the spec file or a file its
    `train.data` mapping `cfg` names: writing there would replace the user's input."""
    not_same(path, what, spec_file, "the spec file")
    for data in data_files(cfg, spec_file.parent):
        not_read(path, what, {"train.data": data})


def _data_path(cfg: Mapping, key: str, spec_dir: Path) -> Path:
    if not isinstance(cfg[key], str):
        raise SpecError(f"{key} must be a file path, got {short(cfg[key])}",
                        mark=value_mark(cfg, key))
    return resolve(spec_dir, cfg[key])


def _index(idx: tuple) -> str:
    return str(idx[0]) if len(idx) == 1 else str(idx)


# --- small checks ----------------------------------------------------------------------------

def _check_types(cfg: Mapping, types: dict, what: str) -> None:
    for key, kind in types.items():
        if key in cfg and not _has_type(cfg[key], kind):
            word = {int: "an integer", bool: "true or false"}.get(kind, "a finite number")
            raise SpecError(f"{key} of {what} must be {word}, got {short(cfg[key])}",
                            mark=value_mark(cfg, key))


def _has_type(value, kind) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return is_number(value)


def _suggest(word, choices, what: str) -> str:
    """'did you mean X?' when one is close, else the whole list."""
    return did_you_mean(str(word), choices) or f"{what}: {', '.join(choices)}"


def key_mark(cfg: Mapping, key) -> Optional[Mark]:
    """Where a key sits in the spec, when cfg came from graphc's marked YAML loader."""
    marks = getattr(cfg, "key_marks", None)
    return marks.get(key) if marks else None


def value_mark(cfg: Mapping, key) -> Optional[Mark]:
    """Where a key's value sits in the spec, when cfg came from graphc's marked YAML loader."""
    mark_of = getattr(cfg, "mark_of", None)
    return mark_of(key) if mark_of else None
