"""Checkpoints: `.npz` files of plain arrays (no pickle), written atomically.

Params and state leaves (running statistics) are stored under their own names, so a
checkpoint is also a plain parameter file; everything else lives under `__graphc__/` (optimizer state,
position, RNG state, spec text, hash and file, normalization stats). Writes go
through outfiles.atomic_write (a temp file in the same folder, fsynced, then
`os.replace`d): a crash at any instant leaves the previous checkpoint whole.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import zipfile
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from .data import stats_from_arrays
from .datafiles import archive_nbytes, member, np_load
from .errors import SpecError, short
from .limits import check_memory
from .leaves import misfit, misfit_message
from .outfiles import NPZ, atomic_write
from .model import Model

RESERVED = "__graphc__/"
MAX_DIFF_LINES = 12


def write(path, arrays: Mapping[str, np.ndarray], what: str = "checkpoint") -> Path:
    """An .npz of `arrays`, written atomically (outfiles.atomic_write) to a path named
    .npz; failures are user errors naming `what`."""
    return atomic_write(path, lambda f: _savez(f, arrays), what, NPZ)


def _savez(f, arrays: Mapping[str, np.ndarray]) -> None:
    """np.savez's format (one NAME.npy per array in a stored zip), without its keyword
    arguments: np.savez(f, **arrays) takes an array named `file` or `allow_pickle` for
    its own parameter (a TypeError, or a file with no arrays)."""
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        for name, arr in arrays.items():
            with z.open(f"{name}.npy", "w", force_zip64=True) as out:
                np.lib.format.write_array(out, np.asanyarray(arr), allow_pickle=False)


def read(path, what: str = "checkpoint") -> dict:
    """Every array of an .npz, loaded without pickle; errors call it `what` and its path."""
    shown = f"{what} {path}"
    with np_load(path, shown, archive=True,
                 hint="write named arrays with np.savez(FILE, NAME=array, ...)") as archive:
        check_memory(archive_nbytes(archive, archive.files, shown), f"reading {shown}")
        return {k: member(archive, k, shown) for k in archive.files}


def params_of(model: Model) -> dict:
    """The model's trained params by name (copies are not made: save right away)."""
    return {n.name: model.store[n.name] for n in model.graph.leaves("param")}


def state_of(model: Model) -> dict:
    """The spec's state leaves by name (running statistics), saved beside the params."""
    return {n.name: model.store[n.name] for n in model.graph.leaves("state")}


def leaves_of(model: Model) -> dict:
    """Params and state: the leaves a checkpoint holds under their own names, and what
    `--resume` and early stopping restore."""
    return {**params_of(model), **state_of(model)}


DAMAGED = "the file was edited or damaged: use a checkpoint graphc wrote"


def entry(arrays: Mapping, key: str, path, shape=None, dtype=None,
          nonnegative: bool = False) -> np.ndarray:
    """The checkpoint array `key`, checked before use: present, real numbers, of `shape`
    (None: any), (where `dtype` is given) numbers that dtype holds, and >= 0 where
    `nonnegative` (counts, sums of squares); else a SpecError naming the file and key."""
    if key not in arrays:
        raise SpecError(f"checkpoint {path} has no '{key}'", hint=DAMAGED)
    problem = _problem(arrays[key], shape, dtype, nonnegative)
    if problem:
        raise SpecError(f"checkpoint {path}: '{key}' {problem}", hint=DAMAGED)
    return arrays[key]


def _problem(arr: np.ndarray, shape, dtype, nonnegative: bool) -> Optional[str]:
    """What is wrong with a checkpoint array, as entry() checks it, or None."""
    if arr.dtype.kind not in "biuf":
        return f"has dtype {arr.dtype}, expected real numbers"
    if shape is not None and arr.shape != tuple(shape):
        return f"has shape {list(arr.shape)}, expected {list(shape)}"
    index = None if dtype is None else misfit(arr, dtype)
    if index is not None:
        bad = nonfinite(arr)
        return f"holds {bad}" if bad else misfit_message(arr[index], dtype)
    if nonnegative and np.any(arr < 0):
        return f"holds {short(float(arr[arr < 0].flat[0]))}, expected numbers >= 0"
    return None


def nonfinite(arr: np.ndarray) -> Optional[str]:
    """'NaN at index [0, 1]' for the first NaN or infinity of a float array, else None."""
    if arr.dtype.kind != "f":
        return None
    bad = np.argwhere(~np.isfinite(arr))
    if not len(bad):
        return None
    index = bad[0].tolist()
    return f"{'NaN' if np.isnan(arr[tuple(index)]) else 'an infinite value'} at index {index}"


def text_array(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)


def array_text(arr: np.ndarray) -> str:
    return np.asarray(arr, dtype=np.uint8).tobytes().decode("utf-8", errors="replace")


def spec_hash(model: Model) -> str:
    return hashlib.sha256(model.spec.text.encode()).hexdigest()[:16]


def spec_arrays(model: Model, config: Mapping) -> dict:
    """The spec's text, hash and file and the run's effective settings, to check a resume
    (and a later run's --out) against."""
    return {RESERVED + "spec": text_array(model.spec.text),
            RESERVED + "spec_file": text_array(spec_file(model)),
            RESERVED + "spec_hash": np.asarray(spec_hash(model)),
            RESERVED + "config": text_array(json.dumps(dict(config), sort_keys=True))}


def spec_file(model: Model) -> str:
    return str(Path(model.spec.path).resolve())


def check_same_spec_file(path, model: Model) -> None:
    """Refuse to replace a training checkpoint that another spec file saved (a copied spec
    keeps its `name:`, so both default to the same checkpoint). A file that is missing,
    unreadable, or saved without its spec file is not refused."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            saved = array_text(archive[RESERVED + "spec_file"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return
    if saved != spec_file(model):
        raise SpecError(f"{path} was saved by training another spec file, {saved}; "
                        "training would replace it",
                        hint="choose another checkpoint with --out, or replace it with --force")


def check_not_a_checkpoint(keys, shown: str) -> None:
    """SpecError where a file given as samples (`shown`, e.g. "--inputs FILE") holds the
    reserved keys of a checkpoint graphc wrote."""
    if any(str(k).startswith(RESERVED) for k in keys):
        raise SpecError(f"{shown} is a checkpoint graphc wrote, not samples",
                        hint="pass it with --params, and the samples with --inputs")


def check_not_a_run(path, writer: str) -> None:
    """Refuse to let `writer` (a command writing plain params) replace a checkpoint that a
    training run or `Model.save` wrote (it holds a saved spec). A file that is missing,
    unreadable, or holds plain params (an earlier import's) is not refused."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            trained = RESERVED + "spec" in archive.files
    except (OSError, ValueError, zipfile.BadZipFile):
        return
    if trained:
        raise SpecError(f"{path} holds a training run's checkpoint; {writer} would replace "
                        "it with plain params", hint="write the spec elsewhere with --out, or "
                        "replace the checkpoint with --force")


def check_same_run(arrays: Mapping, model: Model, config: Mapping, path) -> None:
    """Refuse to resume from a checkpoint of another spec (with a diff) or other settings."""
    if RESERVED + "spec" not in arrays:
        raise SpecError(f"{path} is not a graphc training checkpoint (no saved spec)",
                        hint="--init-from loads its params without resuming")
    old, new = array_text(entry(arrays, RESERVED + "spec", path)), model.spec.text
    if old != new:
        diff = list(difflib.unified_diff(old.splitlines(), new.splitlines(), "checkpoint",
                                         str(model.spec.path), n=0, lineterm=""))
        shown = diff[2:2 + MAX_DIFF_LINES] + (["..."] if len(diff) > 2 + MAX_DIFF_LINES else [])
        raise SpecError(f"cannot resume from {path}: the spec changed since it was saved",
                        context=shown, hint="use --init-from to start from its params "
                        "with the changed spec")
    saved = saved_settings(arrays, path)
    changed = [f"{k}: {short(saved.get(k))} in the checkpoint, {short(v)} now"
               for k, v in config.items()
               if saved.get(k) != v]
    if changed:
        raise SpecError(f"cannot resume from {path}: the command line changed the run",
                        context=changed, hint="resume with the same --batch-size, --lr and --seed")


def saved_settings(arrays: Mapping, path) -> dict:
    """The run settings a training checkpoint was saved with ({} for a plain param file)."""
    if RESERVED + "config" not in arrays:
        return {}
    try:
        config = json.loads(array_text(entry(arrays, RESERVED + "config", path)))
    except ValueError:
        config = None
    if not isinstance(config, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in config.values()):
        raise SpecError(f"checkpoint {path}: '{RESERVED}config' is not the JSON settings "
                        "graphc saves", hint=DAMAGED)
    return config


def saved_stats(arrays: Mapping, path, prefix: str) -> dict:
    """The normalization statistics saved under `prefix` (data.stats_from_arrays), checked:
    per input a finite mean and a std > 0 of the same shape, nothing else."""
    stats = stats_from_arrays(arrays, prefix)
    for name, parts in stats.items():
        mean = entry(arrays, f"{prefix}{name}/mean", path, dtype=np.float64)
        std = entry(arrays, f"{prefix}{name}/std", path, mean.shape, np.float64)
        extra = sorted(set(parts) - {"mean", "std"})
        if extra or not (std > 0).all():
            what = f"has '{prefix}{name}/{extra[0]}'" if extra else \
                f"'{prefix}{name}/std' holds a value <= 0"
            raise SpecError(f"checkpoint {path} {what}", hint=DAMAGED)
    return stats


def load_params(path, model: Model, arrays: Optional[Mapping] = None) -> None:
    """Overwrite the store's values (params, and state such as running statistics) with a
    checkpoint's arrays of the same names, shapes checked; `arrays`: the checkpoint's,
    where the caller has read them already."""
    arrays = read(path) if arrays is None else arrays
    for name in arrays:
        if name.startswith(RESERVED) or name not in model.store:
            continue
        have = model.store[name]
        if have.shape != arrays[name].shape:
            raise SpecError(f"checkpoint {path}: '{name}' has shape "
                            f"{list(arrays[name].shape)}, the spec says {list(have.shape)}",
                            node=name)
        have[...] = entry(arrays, name, path, have.shape, have.dtype)


def init_from(path, model: Model) -> list:
    """Load the params and state leaves whose name and shape match; returns a note per one
    left as it was. SpecError, listing why each one did not match, where none does."""
    arrays = read(path)
    params = leaves_of(model)
    misses, loaded = [], 0
    for name, have in params.items():
        if name not in arrays:
            misses.append(f"'{name}' is not in {path}")
        elif arrays[name].shape != have.shape:
            misses.append(f"'{name}' has shape {list(arrays[name].shape)} in {path}, the spec "
                          f"says {list(have.shape)}")
        else:
            have[...] = entry(arrays, name, path, have.shape, have.dtype)
            loaded += 1
    if not loaded:
        raise SpecError(f"--init-from {path}: no parameter of the spec matches the "
                        "checkpoint's by name and shape", context=misses)
    return [f"{miss}; it keeps its initializer" for miss in misses]


def rng_array(state: Mapping) -> np.ndarray:
    """numpy's PCG64 bit_generator.state as six uint64: state and inc (128-bit, hi/lo), the
    buffered uint32 flag and value."""
    if state.get("bit_generator") != "PCG64":
        raise ValueError(f"cannot save a {state.get('bit_generator')} generator")
    s, inc = state["state"]["state"], state["state"]["inc"]
    mask = (1 << 64) - 1
    return np.array([s >> 64, s & mask, inc >> 64, inc & mask, state["has_uint32"],
                     state["uinteger"]], dtype=np.uint64)


def rng_state(arr: np.ndarray) -> dict:
    """The inverse of rng_array."""
    v = [int(x) for x in np.asarray(arr, dtype=np.uint64)]
    return {"bit_generator": "PCG64", "state": {"state": (v[0] << 64) | v[1],
                                                "inc": (v[2] << 64) | v[3]},
            "has_uint32": v[4], "uinteger": v[5]}
