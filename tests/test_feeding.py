"""Feeding a batch (graphc/backends/numpy/feeding.py): an array the step code can read where
it lies is not copied, and every number is the copied batch's.

Oracle: the same steps fed through the copy, forced by feeding each float array in
Fortran order (the same values, another layout: never read in place). Each test fails
on a feeder that reads in place what it must not (an array the step writes, a batch
refilled in place, bad labels in a bound array, a program with kernels holding
buffers), or that never reads in place at all.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

import graphc
from graphc.errors import SpecError
from graphc.executor import using_step_code
from graphc.timing import synthetic_batch
from graphc.trainconfig import training_step
from graphc.backends.numpy.bind import source
from graphc.backends.numpy.feeding import by_arguments

REPO = Path(__file__).resolve().parents[1]
SPECS = sorted((REPO / "specs").glob("*.yaml"))
READ_IN_PLACE = {"spiral_mlp": "x", "digits_mlp": "x", "digits_cnn": "x",
                 "spiral_bn_dropout": "x", "sort_transformer": "y"}   # spec -> an input it binds
MLP = ("inputs: {x: [batch, 3], y: {shape: [batch], dtype: int64}}\n"
       "params: {W: {shape: [3, 4], init: he_normal}, b: [4]}\n"
       "nodes:\n  s: x @ W + b\n  loss: softmax_cross_entropy(s, y)\n"
       "train: {optimizer: {sgd: {lr: 0.1}}, seed: 0}\n")


def batches(model: graphc.Model, count: int, size: int = 8) -> list:
    """`count` synthetic batches of `size` rows (in-range labels) for `model`'s inputs."""
    dims = training_step(model._model, size)[2]
    return [synthetic_batch(model._model, dims, seed=i) for i in range(count)]


def copied(feeds: dict) -> dict:
    """The same batch in a layout the step code cannot read in place (float arrays of
    two or more dims in Fortran order; a 1-D array is C and Fortran at once)."""
    return {k: np.asfortranarray(v) if v.ndim > 1 else v for k, v in feeds.items()}


def bound(model: graphc.Model) -> dict:
    """input -> whether the step code reads the caller's array now."""
    (ex,) = model._step.cache.values()
    return {n: b.bound is not None for n, b in ex.backend.feeding.bindings.items()}


def run(spec, code: str, feeds: list) -> tuple:
    model = graphc.load(spec)
    with using_step_code(code):
        losses = [model.step(f) for f in feeds]
    return losses, model.params, model


@pytest.mark.parametrize("code", ["generated", "numpy"])
@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_a_batch_read_in_place_gives_the_copied_batch_bits(spec, code):
    model = graphc.load(spec)
    feeds = batches(model, 3)
    in_place_losses, in_place, m = run(spec, code, feeds)
    if spec.stem in READ_IN_PLACE:
        assert bound(m)[READ_IN_PLACE[spec.stem]]
    losses, params, _ = run(spec, code, [copied(f) for f in feeds])
    assert in_place_losses == losses
    for name, value in params.items():
        assert value.tobytes() == in_place[name].tobytes(), name


def test_the_medium_mlp_reads_its_batch_in_place_on_every_step_code(tmp_path):
    pytest.importorskip("numba", reason="the fused step code needs numba (graphc[numba])")
    (tmp_path / "s.yaml").write_text(MLP)
    feeds = batches(graphc.load(tmp_path / "s.yaml"), 2)
    for code in ("generated", "fused", "numpy"):
        _, _, m = run(tmp_path / "s.yaml", code, feeds)
        assert bound(m) == {"x": True, "y": True}, code
    _, _, m = run(tmp_path / "s.yaml", "reference", feeds)
    assert bound(m) == {}


def test_a_batch_refilled_in_place_is_read_anew(tmp_path):
    """A loader that refills one array each step: the second step sees the new rows."""
    (tmp_path / "s.yaml").write_text(MLP)
    first, second = batches(graphc.load(tmp_path / "s.yaml"), 2)
    expected, params, _ = run(tmp_path / "s.yaml", "generated", [first, second])
    model, feeds = graphc.load(tmp_path / "s.yaml"), {k: v.copy() for k, v in first.items()}
    losses = [model.step(feeds)]
    for k in feeds:
        feeds[k][...] = second[k]
    losses.append(model.step(feeds))
    assert losses == expected and bound(model) == {"x": True, "y": True}
    (ex,) = model._step.cache.values()
    assert not ex.program.namespace["x"].flags.writeable      # the caller's rows, read-only
    assert feeds["x"].flags.writeable
    assert all(np.array_equal(v, params[k]) for k, v in model.params.items())


def test_a_read_only_batch_is_read_in_place(tmp_path):
    (tmp_path / "s.yaml").write_text(MLP)
    feeds = batches(graphc.load(tmp_path / "s.yaml"), 2)
    expected, params, _ = run(tmp_path / "s.yaml", "generated", feeds)
    for f in feeds:
        for v in f.values():
            v.flags.writeable = False
    losses, got, model = run(tmp_path / "s.yaml", "generated", feeds)
    assert losses == expected and bound(model) == {"x": True, "y": True}
    assert all(np.array_equal(v, params[k]) for k, v in got.items())


def test_bad_labels_written_into_a_bound_array_are_caught(tmp_path):
    (tmp_path / "s.yaml").write_text(MLP)
    model = graphc.load(tmp_path / "s.yaml")
    (feeds,) = batches(model, 1)
    model.step(feeds)
    before = model.params
    feeds["y"][3] = 4
    with pytest.raises(SpecError, match="label 4 at index \\[3\\] is out of range for 4 "):
        model.step(feeds)
    feeds["y"][3] = -1
    with pytest.raises(SpecError, match="label -1 at index \\[3\\]"):
        model.step(feeds)
    assert all(np.array_equal(v, before[k]) for k, v in model.params.items())


def test_an_array_the_step_writes_is_copied_not_read_in_place(tmp_path):
    """A batch that is a view of a param the step updates: read in place, the forward
    pass would see the update of an earlier line. Copied, it is the batch as fed."""
    (tmp_path / "s.yaml").write_text(MLP.replace("[batch, 3]", "[batch, 4]")
                                     .replace("[3, 4]", "[4, 4]"))
    model = graphc.load(tmp_path / "s.yaml")
    (feeds,) = batches(model, 1, size=4)
    model.step(feeds)
    (ex,) = model._step.cache.values()
    weights = ex.backend.values["W"]
    view = {"x": weights, "y": feeds["y"]}
    snapshot = {"x": weights.copy(), "y": feeds["y"]}
    twin = graphc.load(tmp_path / "s.yaml")
    twin.step(feeds)
    assert model.step(view) == twin.step(snapshot)
    assert bound(model) == {"x": False, "y": True}


def test_training_after_steps_writes_the_buffers_not_the_callers_array(tmp_path):
    """feed_rows (the trainer's gather) points the step code back at its buffers first."""
    (tmp_path / "s.yaml").write_text(MLP)
    model = graphc.load(tmp_path / "s.yaml")
    (feeds,) = batches(model, 1)
    kept = {k: v.copy() for k, v in feeds.items()}
    model.step(feeds)
    (ex,) = model._step.cache.values()
    ex.feed_rows(kept, np.arange(8)[::-1])
    assert bound(model) == {"x": False, "y": False}
    assert all(np.array_equal(feeds[k], kept[k]) for k in feeds)
    assert np.array_equal(ex["x"], kept["x"][::-1])


def test_a_reader_whose_kernel_holds_arrays_itself_never_reads_in_place():
    arr = np.zeros(3)
    plain = source("np.negative(x, out=x)", x=arr, lr=np.float32(1), n=3, np=np)
    assert by_arguments(plain)
    for opaque in (functools.partial(np.negative, arr), lambda: arr, arr.dot, [arr]):
        assert not by_arguments(source("k()", k=opaque)), opaque
    assert not by_arguments(lambda: np.negative(arr, out=arr))      # no source text
