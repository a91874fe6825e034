"""Parameter initializers: a spec's `init:` value -> an array of the param's shape.

    initialize(init, shape, dtype, rng, *, mark=None, node=None) -> np.ndarray

`init` is a name (`he_normal`) or a one-key mapping of a name to its arguments
(`{normal: {std: 0.01}}`); `None` means `default_init(shape)`. graphc's dense weights
are [in, out] (y = x @ W), so a 2-D shape has fan_in = shape[0], fan_out = shape[1];
conv weights are PyTorch's [out, in, *kernel]; see `fans`. Defaults follow torch.nn.init, and every normal draw
is a plain (untruncated) normal as in PyTorch. docs/data.md has the formulas.
"""
from __future__ import annotations

import functools
import inspect
import math
import typing
from typing import Callable, Mapping, Optional

import numpy as np

from .errors import Mark, SpecError, did_you_mean, short
from .limits import check_memory, memory_limit
from .shapes import is_number, is_whole

Shape = tuple[int, ...]


def fans(shape: Shape) -> tuple[int, int]:
    """(fan_in, fan_out): (in, out) for graphc's dense weights [in, out]; for conv weights
    [out, in, *kernel] (rank >= 3, PyTorch's layout) (in * rf, out * rf), rf = prod(kernel)
    as torch.nn.init computes them; (n, n) for [n]; (1, 1) for []."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive_field = math.prod(shape[2:])
    return shape[1] * receptive_field, shape[0] * receptive_field


def default_init(shape: Shape) -> str:
    """The init of a param that names none: zeros for 0-D and 1-D (biases), else glorot_uniform."""
    return "zeros" if len(shape) <= 1 else "glorot_uniform"


def zeros(shape: Shape, rng: np.random.Generator) -> np.ndarray:
    """W = 0."""
    return np.zeros(shape)


def ones(shape: Shape, rng: np.random.Generator) -> np.ndarray:
    """W = 1."""
    return np.ones(shape)


def constant(shape: Shape, rng: np.random.Generator, *, value: float) -> np.ndarray:
    """W = value."""
    return np.full(shape, float(value))


def normal(shape: Shape, rng: np.random.Generator, *, mean: float = 0.0,
           std: float = 1.0) -> np.ndarray:
    """W ~ N(mean, std^2)."""
    _require(std >= 0, f"std must be >= 0, got {std}")
    return rng.normal(mean, std, shape)


def uniform(shape: Shape, rng: np.random.Generator, *, low: float = 0.0,
            high: float = 1.0) -> np.ndarray:
    """W ~ U[low, high)."""
    _require(low <= high, f"low must be <= high, got low={low}, high={high}")
    return rng.uniform(low, high, shape)


def glorot_uniform(shape: Shape, rng: np.random.Generator, *, gain: float = 1.0) -> np.ndarray:
    """W ~ U[-a, a), a = gain * sqrt(6 / (fan_in + fan_out))  (Glorot & Bengio 2010)."""
    bound = gain * math.sqrt(6.0 / _fan_sum(shape))
    return rng.uniform(-bound, bound, shape)


def glorot_normal(shape: Shape, rng: np.random.Generator, *, gain: float = 1.0) -> np.ndarray:
    """W ~ N(0, s^2), s = gain * sqrt(2 / (fan_in + fan_out))."""
    return rng.normal(0.0, gain * math.sqrt(2.0 / _fan_sum(shape)), shape)


def he_uniform(shape: Shape, rng: np.random.Generator, *, mode: str = "fan_in",
               negative_slope: float = 0.0) -> np.ndarray:
    """W ~ U[-a, a), a = sqrt(3) * s with s the he_normal std; a = sqrt(6 / fan_in) by default."""
    bound = math.sqrt(3.0) * _he_std(shape, mode, negative_slope)
    return rng.uniform(-bound, bound, shape)


def he_normal(shape: Shape, rng: np.random.Generator, *, mode: str = "fan_in",
              negative_slope: float = 0.0) -> np.ndarray:
    """W ~ N(0, s^2), s = sqrt(2 / ((1 + negative_slope^2) * fan))  (He et al. 2015)."""
    return rng.normal(0.0, _he_std(shape, mode, negative_slope), shape)


def lecun_uniform(shape: Shape, rng: np.random.Generator) -> np.ndarray:
    """W ~ U[-a, a), a = sqrt(3 / fan_in)."""
    bound = math.sqrt(3.0 / max(fans(shape)[0], 1))
    return rng.uniform(-bound, bound, shape)


def lecun_normal(shape: Shape, rng: np.random.Generator) -> np.ndarray:
    """W ~ N(0, s^2), s = sqrt(1 / fan_in)  (LeCun et al. 1998)."""
    return rng.normal(0.0, math.sqrt(1.0 / max(fans(shape)[0], 1)), shape)


def orthogonal(shape: Shape, rng: np.random.Generator, *, gain: float = 1.0) -> np.ndarray:
    """W = gain * Q, Q from the QR of a normal draw viewed as [prod(shape[:-1]), shape[-1]]:
    orthonormal columns if rows >= cols (W.T @ W = gain^2 I), else rows  (Saxe et al. 2014)."""
    _require(len(shape) >= 2, f"orthogonal needs at least 2 dimensions, got shape {list(shape)}")
    rows, cols = math.prod(shape[:-1]), shape[-1]
    if rows * cols == 0:
        return np.zeros(shape)
    q, r = np.linalg.qr(rng.standard_normal((max(rows, cols), min(rows, cols))))
    # Fixing the signs of R's diagonal makes Q uniform (Haar) over orthogonal matrices.
    q = q * np.where(np.diag(r) < 0, -1.0, 1.0)
    if rows < cols:
        q = q.T
    return gain * q.reshape(shape)


INITIALIZERS: dict[str, Callable[..., np.ndarray]] = {
    "zeros": zeros,
    "ones": ones,
    "constant": constant,
    "normal": normal,
    "uniform": uniform,
    "glorot_uniform": glorot_uniform,
    "xavier_uniform": glorot_uniform,
    "glorot_normal": glorot_normal,
    "xavier_normal": glorot_normal,
    "he_uniform": he_uniform,
    "kaiming_uniform": he_uniform,
    "he_normal": he_normal,
    "kaiming_normal": he_normal,
    "lecun_uniform": lecun_uniform,
    "lecun_normal": lecun_normal,
    "orthogonal": orthogonal,
}


FLOAT64_COPIES = {"orthogonal": 5}     # measured peaks; every other initializer draws once


def initialize(init, shape: Shape, dtype, rng: np.random.Generator, *,
               mark: Optional[Mark] = None, node: Optional[str] = None) -> np.ndarray:
    """A new array of `shape` and `dtype` drawn by the initializer `init` (None: default_init);
    its peak memory (init_nbytes) is checked against the memory limit before drawing."""
    shape = _check_shape(shape, mark, node)
    name, kwargs = parse_init(default_init(shape) if init is None else init, mark=mark, node=node)
    nbytes = init_nbytes(name, shape, dtype)
    if nbytes > memory_limit():     # the message (np.dtype's text) only where it is shown
        check_memory(nbytes, f"initializer '{name}' of a {list(shape)} {np.dtype(dtype)} "
                     f"param", mark=mark, node=node)
    try:
        values = INITIALIZERS[name](shape, rng, **kwargs)
    except ValueError as e:
        raise SpecError(f"initializer '{name}': {e}", mark=mark, node=node) from None
    return np.asarray(values).astype(np.dtype(dtype))


def init_nbytes(name: str, shape: Shape, dtype) -> int:
    """Peak bytes of drawing `shape` with initializer `name`: its float64 temporaries (the
    draw; QR's copies for orthogonal) plus the result cast to `dtype`."""
    n = math.prod(shape)
    return n * 8 * FLOAT64_COPIES.get(name, 1) + n * np.dtype(dtype).itemsize


def parse_init(init, *, mark: Optional[Mark] = None,
               node: Optional[str] = None) -> tuple[str, dict]:
    """A spec's init value -> (name, kwargs), the name, argument names and types checked."""
    if isinstance(init, str):
        name, kwargs = init, {}
    elif isinstance(init, Mapping) and len(init) == 1:
        ((name, kwargs),) = init.items()
        kwargs = {} if kwargs is None else kwargs
    else:
        hint = "e.g. init: he_normal, or init: {normal: {std: 0.01}}"
        if isinstance(init, (int, float)) and not isinstance(init, bool):
            hint = f"for a constant write init: {{constant: {{value: {init}}}}}"
        raise SpecError(f"init must be a name or a one-key mapping {{NAME: {{ARG: VALUE}}}}, "
                        f"got {short(init)}", mark=mark, node=node, hint=hint)
    name = str(name)
    if name not in INITIALIZERS:
        raise SpecError(f"unknown initializer '{name}'", mark=mark, node=node,
                        hint=did_you_mean(name, INITIALIZERS)
                        or f"known: {', '.join(sorted(INITIALIZERS))}")
    if not isinstance(kwargs, (dict, Mapping)):      # dict first: Mapping is an ABC check
        raise SpecError(f"arguments of initializer '{name}' must be a mapping, got {short(kwargs)}",
                        mark=mark, node=node, hint=f"write {{{name}: {{ARG: VALUE}}}}")
    _check_args(name, dict(kwargs), mark, node)
    return name, dict(kwargs)


def _check_args(name: str, kwargs: dict, mark, node) -> None:
    """Every argument is one the initializer takes, of the type its signature declares."""
    params = _arguments(INITIALIZERS[name])
    accepted = ", ".join(params) or "no arguments"
    for key, value in kwargs.items():
        if key not in params:
            raise SpecError(f"initializer '{name}' has no argument '{key}'; "
                            f"it accepts: {accepted}", mark=mark, node=node,
                            hint=did_you_mean(str(key), params))
        kind = params[key][0]
        if not _has_type(value, kind):
            raise SpecError(f"argument '{key}' of initializer '{name}' must be "
                            f"{_type_word(kind)}, got {short(value)}", mark=mark, node=node)
    for key, (_, default) in params.items():
        if default is inspect.Parameter.empty and key not in kwargs:
            raise SpecError(f"initializer '{name}' needs argument '{key}'; it accepts: {accepted}",
                            mark=mark, node=node, hint=f"e.g. {{{name}: {{{key}: 0.5}}}}")


@functools.lru_cache(maxsize=None)
def _arguments(fn) -> dict[str, tuple[type, object]]:
    """name -> (type, default) of an initializer's keyword-only parameters: what a spec sets.
    Read once per initializer (type hints cost ~1 ms; a 1,000-layer MLP has 2,000 params);
    callers only read the dict."""
    types = typing.get_type_hints(fn)  # not signature(eval_str=True): that needs Python 3.10
    return {k: (types[k], p.default) for k, p in inspect.signature(fn).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _has_type(value, annotation) -> bool:
    if annotation is float:
        # YAML bools are Python ints; `std: yes` is a typo, not 1.0.
        return is_number(value)
    return isinstance(value, annotation)


def _type_word(annotation) -> str:
    return "a finite number" if annotation is float else f"a {annotation.__name__}"


def _check_shape(shape, mark, node) -> Shape:
    dims = tuple(shape)
    if not all(is_whole(d) and d >= 0 for d in dims):
        raise SpecError(f"cannot initialize a param of shape {list(dims)}: dims must be "
                        f"non-negative integers", mark=mark, node=node)
    return tuple(int(d) for d in dims)


def _fan_sum(shape: Shape) -> int:
    fan_in, fan_out = fans(shape)
    return max(fan_in + fan_out, 1)  # an empty param draws nothing; avoid 0/0


def _he_std(shape: Shape, mode: str, negative_slope: float) -> float:
    """s = gain / sqrt(fan), gain = sqrt(2 / (1 + negative_slope^2)) as for (leaky) ReLU."""
    _require(mode in ("fan_in", "fan_out"), f"mode must be 'fan_in' or 'fan_out', got '{mode}'")
    fan = fans(shape)[0 if mode == "fan_in" else 1]
    gain = math.sqrt(2.0 / (1.0 + negative_slope ** 2))
    return gain / math.sqrt(max(fan, 1))


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)
