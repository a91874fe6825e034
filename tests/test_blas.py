"""Plain SGD's update of a large weight as one BLAS call (graphc/backends/numpy/blas.py).

Oracles: the same two steps unfused (NumPy's GEMM into the gradient buffer, its check,
its subtraction), and the reference step code, which never fuses. The fused call must
give their bits, skip and flag a non-finite gradient as they do, and fall back to them
where its bound cannot vouch for the gradient. Each test fails when the fusion is
missing, changes a number, or fires where it must not.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

import graphc
from graphc.executor import using_step_code
from graphc.backends.numpy import blas
from graphc.backends.numpy.kernels import gemm
from graphc.backends.numpy.updates import b_sgd

pytestmark = pytest.mark.skipif(blas.cblas_gemm(np.dtype(np.float32)) is None,
                                reason="no CBLAS gemm found in NumPy's BLAS here")


def wide(hidden: int = 512, dtype: str = "float32") -> str:
    """x [batch, 256] -> relu -> [hidden] -> 10 classes: W1 is 256 x hidden (512 KiB at
    512, past flat.FLAT_SGD_BYTES: each param updates on its own; at 256 every param
    fits one flat update)."""
    return (f"dtype: {dtype}\n"
            "inputs: {x: [batch, 256], y: {shape: [batch], dtype: int64}}\n"
            f"params:\n  W1: {{shape: [256, {hidden}], init: he_normal}}\n  b1: [{hidden}]\n"
            f"  W2: {{shape: [{hidden}, 10], init: he_normal}}\n  b2: [10]\n"
            "nodes:\n  h: relu(x @ W1 + b1)\n  s: h @ W2 + b2\n"
            "  loss: softmax_cross_entropy(s, y)\n"
            "train: {optimizer: {sgd: {lr: 0.05}}, seed: 0}\n")


def wide_batches(count: int, batch: int, scale: float = 1.0, dtype=np.float32) -> list:
    rng = np.random.default_rng(7)
    return [{"x": (scale * rng.standard_normal((batch, 256))).astype(dtype),
             "y": rng.integers(0, 10, batch)} for _ in range(count)]


def steps(tmp_path, code: str, feeds: list, hidden: int = 512, dtype="float32") -> tuple:
    spec = tmp_path / "wide.yaml"
    spec.write_text(wide(hidden, dtype))
    model = graphc.load(spec)
    with using_step_code(code):
        losses = [model.step(f) for f in feeds]
    (ex,) = model._step.cache.values()
    source = ex.program.source if ex.program is not None else ""
    return losses, {k: np.array(v) for k, v in model.params.items()}, source, model


@pytest.mark.parametrize("batch", [64, 256, 512])
def test_the_fused_update_gives_the_reference_bits(tmp_path, batch):
    """W1 (512 KiB) is updated in one BLAS call where that call gives NumPy's bits for
    these shapes (bind-time check: one BLAS block over the batch); either way the
    generated step code's numbers are the reference's, bit for bit."""
    feeds = wide_batches(3, batch)
    ref_losses, ref_params, _, _ = steps(tmp_path, "reference", feeds)
    losses, params, source, _ = steps(tmp_path, "generated", feeds)
    assert losses == ref_losses
    assert all(np.array_equal(params[k], ref_params[k]) for k in ref_params)
    a_shape, b_shape = (256, batch), (batch, 512)
    assert ("gemm_update(" in source) == blas.same_bits((a_shape, b_shape), ("F", "C"),
                                                  np.dtype(np.float32))
    if batch <= 64:        # one block on every OpenBLAS kernel tried (Prescott: < 256)
        assert source.count("gemm_update(") == 1      # W1 only: W2 (20 KiB) stays as it was


def test_a_float64_weight_is_updated_by_dgemm_with_the_reference_bits(tmp_path):
    feeds = wide_batches(3, 64, dtype=np.float64)
    ref_losses, ref_params, _, _ = steps(tmp_path, "reference", feeds, dtype="float64")
    losses, params, source, _ = steps(tmp_path, "generated", feeds, dtype="float64")
    assert source.count("gemm_update(") == 1        # W1 (1 MiB); W2 (40 KiB) as it was
    assert losses == ref_losses
    assert all(np.array_equal(params[k], ref_params[k]) for k in ref_params)


def test_a_flat_update_of_every_param_is_never_taken_for_one_params_own(tmp_path):
    """Params that fit one flat update (flat._flat_sgd): W1's update step is the update
    of every param, so fusing it with W1's GEMM would skip the others'. The first version
    did, and b1, W2 and b2 came out wrong after one step."""
    feeds = wide_batches(2, 64)
    ref_losses, ref_params, _, _ = steps(tmp_path, "reference", feeds, hidden=256)
    losses, params, source, _ = steps(tmp_path, "generated", feeds, hidden=256)
    assert "gemm_update(" not in source and losses == ref_losses
    assert all(np.array_equal(params[k], ref_params[k]) for k in ref_params)


def test_a_fed_batch_is_still_read_in_place_by_the_fused_call(tmp_path):
    """The fused call takes its arrays as arguments (feeding.by_arguments): the batch is
    not copied, and a batch refilled in place is read anew."""
    feeds = wide_batches(2, 64)
    ref = steps(tmp_path, "reference", [dict(feeds[0]), dict(feeds[1])])
    spec = tmp_path / "wide.yaml"
    model = graphc.load(spec)
    x = feeds[0]["x"].copy()
    losses = [model.step({"x": x, "y": feeds[0]["y"]})]
    (ex,) = model._step.cache.values()
    assert "gemm_update(" in ex.program.source and ex.backend.feeding.bindings["x"].bound is x
    x[...] = feeds[1]["x"]
    losses.append(model.step({"x": x, "y": feeds[1]["y"]}))
    assert losses == ref[0]
    assert all(np.array_equal(model.params[k], ref[1][k]) for k in ref[1])


def test_a_non_finite_batch_skips_and_flags_the_update_as_before(tmp_path):
    feeds = wide_batches(1, 64)
    feeds[0]["x"][3, 5] = np.inf
    ref_losses, ref_params, _, ref_model = steps(tmp_path, "reference", feeds)
    losses, params, _, model = steps(tmp_path, "generated", feeds)
    assert math.isnan(losses[0]) and math.isnan(ref_losses[0])
    assert all(np.array_equal(params[k], ref_params[k], equal_nan=True) for k in ref_params)
    flag = [m._model.store["opt:grad_check"] for m in (model, ref_model)]
    assert math.isnan(flag[0]) and math.isnan(flag[1])


def pair(a, b, w, grad_readers: int = 1):
    """A matmul_gb step and its folded plain-SGD update, bound by the real kernels, as
    runs, with the gradient buffer `d` and the guard."""
    d, guard = np.full(w.shape, -7.0, w.dtype), np.zeros((), w.dtype)
    lr = np.array(0.1, w.dtype)
    gb = SimpleNamespace(op="matmul_gb", inputs=("a", "g"), outputs=("d",), attrs={},
                         index=0)
    sgd = SimpleNamespace(op="sgd", inputs=("w", "d", "guard", "lr"), outputs=("w",),
                          attrs={"folded": True, "max_norm": 0.0}, index=1)
    runs = [((gb,), gemm(d, a, b)),
            ((sgd,), b_sgd(w, w, d, guard, lr, momentum=0.0, nesterov=False,
                           weight_decay=0.0, max_norm=0.0, folded=True))]
    runs += [((SimpleNamespace(op="neg", inputs=("d",), outputs=("e",), attrs={},
                               index=2 + i),), None) for i in range(grad_readers - 1)]
    buffers = {"d": SimpleNamespace(last_step=1 + grad_readers - 1)}
    return runs, {"w": w, "d": d, "guard": guard}, buffers


def operands(scale_a: float = 1.0, scale_b: float = 1.0, rows: int = 256):
    rng = np.random.default_rng(3)
    a = (scale_a * rng.standard_normal((64, rows))).astype(np.float32).T    # x.T: F order
    b = (scale_b * rng.standard_normal((64, 300))).astype(np.float32)
    return a, b, rng.standard_normal((rows, 300)).astype(np.float32)


def run_both(a, b, w):
    """(fused run's w, d, guard) and (unfused runs' w, d, guard) from the same start."""
    fused_runs, fv, buffers = pair(a, b, w.copy())
    out = blas.gemm_updates(fused_runs, fv, buffers)
    assert len(out) == 1 and len(out[0][0]) == 2
    plain_runs, pv, _ = pair(a, b, w.copy())
    with np.errstate(all="ignore"):         # as a plan runs (Backend.running)
        out[0][1]()
        for _, call in plain_runs:
            call()
    return (fv["w"], fv["d"], fv["guard"]), (pv["w"], pv["d"], pv["guard"])


def test_the_fused_call_leaves_the_gradient_unwritten_and_gives_numpys_bits():
    (w, d, guard), (w0, d0, guard0) = run_both(*operands())
    assert np.array_equal(w, w0) and guard == guard0 == 0
    assert (d == -7.0).all() and not (d0 == -7.0).all()     # the one-call branch ran


def test_a_bound_that_cannot_vouch_falls_back_to_the_checked_steps():
    """a . a overflows float32 (|a| ~ 1e20) while the gradient itself is small and
    finite: the unfused steps run (d written), with their numbers."""
    (w, d, guard), (w0, d0, _) = run_both(*operands(scale_a=1e20, scale_b=1e-30))
    assert np.isfinite(d0).all() and np.array_equal(d, d0) and np.array_equal(w, w0)
    assert guard == 0


def test_an_infinite_gradient_skips_the_update_and_sets_the_guard():
    a, b, w = operands()
    b[5, 7] = np.inf
    (w1, _, guard), (w0, _, guard0) = run_both(a, b, w)
    assert np.array_equal(w1, w) and np.array_equal(w0, w)
    assert math.isnan(guard) and math.isnan(guard0)


@pytest.mark.parametrize("why", ["small weight", "second reader", "no gemm found"])
def test_steps_the_fusion_must_leave_alone(monkeypatch, why):
    a, b, w = operands(rows=100 if why == "small weight" else 256)
    if why == "no gemm found":
        monkeypatch.setattr(blas, "same_bits", lambda *args: False)
    runs, values, buffers = pair(a, b, w, grad_readers=2 if why == "second reader" else 1)
    assert blas.gemm_updates(runs, values, buffers) == runs


def test_gemm_update_subtracts_the_product_for_each_layout():
    rng = np.random.default_rng(5)
    for order_a in "CF":
        for order_b in "CF":
            a = blas._random(rng, (5, 3), order_a, np.float64)
            b = blas._random(rng, (3, 4), order_b, np.float64)
            w = rng.standard_normal((5, 4))
            want = w - a @ b
            blas.GemmUpdate(blas.cblas_gemm(np.dtype(np.float64)), a, b, w)(a, b, w)
            np.testing.assert_allclose(w, want, rtol=1e-12)
