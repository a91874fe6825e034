"""The built-in datasets of `train.data: {dataset: NAME}`, each generated from a seed.

A generator is `fn(n, rng, **options) -> (x [n, features], y [n], n_classes or None)`;
its keyword-only parameters are the options a spec may set (`options(fn)`). A bad
option value raises ValueError, which the caller turns into a SpecError with the
spec's line. The formulas are in docs/data.md.
"""
from __future__ import annotations

import inspect
import typing

import numpy as np


def spiral(n: int, rng: np.random.Generator, *, classes: int = 3, noise: float = 0.2):
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


def moons(n: int, rng: np.random.Generator, *, noise: float = 0.1):
    """sklearn make_moons: two interleaved half circles, each plus noise*N(0, I)."""
    _require(n >= 2, f"samples must be at least 2, got {n}")
    n_out, n_in = n // 2, n - n // 2
    t_out, t_in = np.linspace(0, np.pi, n_out), np.linspace(0, np.pi, n_in)
    x = np.concatenate([np.stack([np.cos(t_out), np.sin(t_out)], axis=1),
                        np.stack([1 - np.cos(t_in), 0.5 - np.sin(t_in)], axis=1)])
    return x + noise * rng.standard_normal(x.shape), _labels(n_out, n_in), 2


def circles(n: int, rng: np.random.Generator, *, noise: float = 0.05, factor: float = 0.5):
    """sklearn make_circles: a unit circle (label 0) around one of radius `factor` (label 1)."""
    _require(n >= 2, f"samples must be at least 2, got {n}")
    _require(0 < factor < 1, f"factor must be between 0 and 1, got {factor}")
    n_out, n_in = n // 2, n - n // 2
    t_out = np.linspace(0, 2 * np.pi, n_out, endpoint=False)
    t_in = np.linspace(0, 2 * np.pi, n_in, endpoint=False)
    x = np.concatenate([np.stack([np.cos(t_out), np.sin(t_out)], axis=1),
                        factor * np.stack([np.cos(t_in), np.sin(t_in)], axis=1)])
    return x + noise * rng.standard_normal(x.shape), _labels(n_out, n_in), 2


def xor(n: int, rng: np.random.Generator, *, noise: float = 0.0):
    """x ~ U[-1, 1]^2, label 1 where x0 * x1 < 0 (the signs differ), then x += noise*N(0, I)."""
    x = rng.uniform(-1.0, 1.0, (n, 2))
    y = (x[:, 0] * x[:, 1] < 0).astype(np.int64)
    return x + noise * rng.standard_normal(x.shape), y, 2


def blobs(n: int, rng: np.random.Generator, *, features: int = 2, classes: int = 3,
           std: float = 1.0):
    """sklearn make_blobs: centers ~ U[-10, 10]^features, x = center[y] + std*N(0, I)."""
    _require(features >= 1, f"features must be >= 1, got {features}")
    _require(classes >= 1 and n >= classes, f"need 1 <= classes <= samples, got classes={classes}")
    centers = rng.uniform(-10.0, 10.0, (classes, features))
    y = np.repeat(np.arange(classes), _even_sizes(n, classes))
    return centers[y] + std * rng.standard_normal((n, features)), y, classes


def linear(n: int, rng: np.random.Generator, *, features: int = 1, noise: float = 0.1):
    """Regression: x ~ N(0, I), y = x @ w + b + noise*N(0, 1), with w, b ~ N(0, 1)."""
    _require(features >= 1, f"features must be >= 1, got {features}")
    w_true, b_true = rng.standard_normal(features), rng.standard_normal()
    x = rng.standard_normal((n, features))
    return x, x @ w_true + b_true + noise * rng.standard_normal(n), None


def sine(n: int, rng: np.random.Generator, *, noise: float = 0.1):
    """Regression: x ~ U[-pi, pi], y = sin(x) + noise*N(0, 1)."""
    x = rng.uniform(-np.pi, np.pi, (n, 1))
    return x, np.sin(x[:, 0]) + noise * rng.standard_normal(n), None


def digits(n: int, rng: np.random.Generator, *, images: bool = False):
    """scikit-learn's digits: 8x8 images of handwritten digits, pixels 0..16 as 64 features
    (with `images`, as [n, 1, 8, 8] channels-first images for a CNN), labels 0..9;
    `samples` below 1797 keeps a seeded random subset."""
    try:  # optional dependency, imported only when a spec asks for this dataset
        from sklearn.datasets import load_digits
    except ImportError:
        raise ValueError("needs scikit-learn, which is not installed; "
                         "pip install scikit-learn") from None
    bunch = load_digits()
    total = len(bunch.target)
    _require(n <= total, f"samples must be at most {total} (the whole dataset), got {n}")
    keep = np.sort(rng.permutation(total)[:n])
    x = bunch.data[keep].astype(np.float64)
    return (x.reshape(n, 1, 8, 8) if images else x), bunch.target[keep].astype(np.int64), 10


WAVES = ("sine", "square", "sawtooth", "triangle")


def waveforms(n: int, rng: np.random.Generator, *, length: int = 64, classes: int = 3,
              noise: float = 0.3):
    """Sequences [n, 1, length] for a 1-D CNN: class j is the j-th of sine, square, sawtooth,
    triangle, with amplitude ~ U[0.5, 1.5], ~U[1.5, 4] periods per sequence and a random
    phase, plus noise*N(0, 1) per step."""
    _require(1 <= classes <= len(WAVES), f"classes must be 1..{len(WAVES)}, got {classes}")
    _require(length >= 8, f"length must be at least 8, got {length}")
    y = np.repeat(np.arange(classes), _even_sizes(n, classes))
    periods = rng.uniform(1.5, 4.0, (n, 1))
    phase = (periods * np.linspace(0.0, 1.0, length) + rng.uniform(0.0, 1.0, (n, 1))) % 1.0
    shapes = np.stack([np.sin(2 * np.pi * phase), np.where(phase < 0.5, 1.0, -1.0),
                       2 * phase - 1, 1 - 4 * np.abs(phase - 0.5)])
    x = shapes[y, np.arange(n)] * rng.uniform(0.5, 1.5, (n, 1))
    return (x + noise * rng.standard_normal(x.shape))[:, None, :], y, classes


def sort_digits(n: int, rng: np.random.Generator, *, length: int = 6, digits: int = 10):
    """Sequences d of `length` digits ~ U{0..digits-1} to sort, teacher-forced for a causal
    decoder: x = d followed by sorted(d) without its last digit [n, 2 length - 1] (int64),
    y = sorted(d) [n, length]; position length - 1 + i of x predicts y[i]."""
    _require(length >= 1 and digits >= 2, f"need length >= 1 and digits >= 2, got "
                                          f"length={length}, digits={digits}")
    d = rng.integers(0, digits, (n, length))
    y = np.sort(d, axis=1)
    return np.concatenate([d, y[:, :-1]], axis=1), y, digits


def count_ones(n: int, rng: np.random.Generator, *, length: int = 8):
    """Bit strings x ~ U{0, 1}^length (as floats 0.0/1.0) and y = how many ones they hold,
    a class of 0..length: a recurrent net must carry the running count along the sequence."""
    _require(length >= 1, f"length must be >= 1, got {length}")
    x = rng.integers(0, 2, (n, length))
    return x.astype(np.float64), x.sum(axis=1), length + 1


DATASETS = {"spiral": spiral, "moons": moons, "circles": circles, "xor": xor,
            "blobs": blobs, "linear": linear, "sine": sine, "digits": digits,
            "sort_digits": sort_digits, "count_ones": count_ones,
            "waveforms": waveforms}
FULL_SIZE = {"digits": 1797}  # a fixed dataset's default `samples`: all of it (others: 300)


def options(fn) -> dict[str, type]:
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
