"""The benchmark's yardstick is right, and the benchmark runs.

The hand-written NumPy step is checked against central differences in float64
and against graphc's own compiled step (same spec, init and batch). Timings
are never asserted: the smoke run only checks that the table comes out.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_mlp  # noqa: E402
from handwritten import HandwrittenMLP  # noqa: E402

SIZES = [3, 5, 4, 3]
BATCH = 6


def small_model(dtype=np.float64, lr=0.1, seed=0):
    rng = np.random.default_rng(seed)
    weights = [rng.standard_normal((a, b)) for a, b in zip(SIZES, SIZES[1:])]
    biases = [0.1 * rng.standard_normal(b) for b in SIZES[1:]]
    x = rng.standard_normal((BATCH, SIZES[0])).astype(dtype)
    y = rng.integers(0, SIZES[-1], BATCH)
    return HandwrittenMLP(weights, biases, BATCH, lr, dtype), x, y


def reference_loss(weights, biases, x, y) -> float:
    """The MLP's mean softmax cross-entropy, written the plain way."""
    h = x
    for i, (w, b) in enumerate(zip(weights, biases)):
        h = h @ w + b
        if i < len(weights) - 1:
            h = np.maximum(h, 0)
    z = h - h.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]))


def test_handwritten_loss_matches_the_plain_formula():
    m, x, y = small_model()
    loss, _, _ = m.gradients(x, y)
    assert loss == pytest.approx(reference_loss(m.W, m.b, x, y), rel=1e-12)


def test_handwritten_gradients_match_central_differences():
    m, x, y = small_model()
    m.forward(x)
    hidden = np.concatenate([h.ravel() for h in m.h[:-1]])
    assert (hidden == 0).any() and (hidden > 0).any(), "the ReLU masks should be exercised"
    _, dW, db = m.gradients(x, y)
    eps = 1e-6
    for params, grads in ((m.W, dW), (m.b, db)):
        for p, g in zip(params, grads):
            numeric = np.zeros_like(p)
            for i in np.ndindex(p.shape):
                keep = p[i]
                p[i] = keep + eps
                up = reference_loss(m.W, m.b, x, y)
                p[i] = keep - eps
                down = reference_loss(m.W, m.b, x, y)
                p[i] = keep
                numeric[i] = (up - down) / (2 * eps)
            np.testing.assert_allclose(g, numeric, rtol=1e-6, atol=1e-8)


def test_handwritten_step_is_one_sgd_update():
    m, x, y = small_model(lr=0.3)
    loss, dW, db = m.gradients(x, y)
    want = [w - 0.3 * g for w, g in zip(m.W, dW)] + [b - 0.3 * g for b, g in zip(m.b, db)]
    assert m.step(x, y) == pytest.approx(loss, rel=1e-12)
    for got, expect in zip(m.W + m.b, want):
        np.testing.assert_allclose(got, expect, rtol=1e-12, atol=1e-14)


def step_peak_bytes(batch: int) -> int:
    """The most bytes traced at once during a warm step, above what was live before it."""
    rng = np.random.default_rng(0)
    sizes = [4, 8, 8, 10]
    m = HandwrittenMLP([rng.standard_normal((a, b)) for a, b in zip(sizes, sizes[1:])],
                       [np.zeros(b) for b in sizes[1:]], batch, 0.1, np.float32)
    x = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], batch)
    m.step(x, y)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(3):
            m.step(x, y)
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def test_handwritten_step_allocates_nothing_that_grows_with_the_batch():
    # NumPy's ufunc iterator borrows a fixed buffer (np.getbufsize() elements) for
    # broadcasting and casting calls; any array the step made would grow 4x here.
    small, large = step_peak_bytes(4096), step_peak_bytes(4 * 4096)
    assert large <= small + 1024, f"peak {small} B at batch 4096, {large} B at 16384"
    assert small <= 2 * np.getbufsize() * 8 + 4096


def graphc_and_handwritten(tmp_path, sizes, batch, dtype, lr=0.1):
    path = tmp_path / "mlp.yaml"
    path.write_text(bench_mlp.mlp_spec("test", sizes, lr, dtype))
    g = bench_mlp.build_graphc(path)
    weights, biases = g.params(len(sizes) - 1)
    hand = HandwrittenMLP(weights, biases, batch, lr, dtype)
    return g, hand, bench_mlp.batch_of(sizes, batch, seed=1, dtype=dtype)


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-5), ("float64", 1e-12)])
def test_one_graphc_step_matches_the_handwritten_step(tmp_path, dtype, tol):
    sizes = [4, 16, 16, 3]
    g, hand, feeds = graphc_and_handwritten(tmp_path, sizes, 8, dtype)
    before = [w.copy() for w in hand.W]
    loss_g = g.run(feeds)
    loss_h = hand.step(feeds["x"], feeds["y"])
    assert loss_g == pytest.approx(loss_h, rel=tol)
    weights, biases = g.params(len(sizes) - 1)
    assert any(not np.array_equal(w, b) for w, b in zip(hand.W, before)), "no update happened"
    for got, want in zip(weights + biases, hand.W + hand.b):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_graphc_steps_in_the_step_code_it_compiled_without_a_context_per_step(tmp_path,
                                                                            monkeypatch):
    """Only the compiling step enters `using_step_code`: `graphc train` enters it once per
    run, and its two microseconds a step were charged to graphc's tiny step."""
    entered = []
    real = bench_mlp.using_step_code
    monkeypatch.setattr(bench_mlp, "using_step_code", lambda code: entered.append(code)
                        or real(code))
    g, _, feeds = graphc_and_handwritten(tmp_path, [4, 16, 3], 8, "float32")
    g.step_code = "reference"
    for _ in range(3):
        g.run(feeds)
    assert entered == ["reference"]
    (ex,) = g.model._step.cache.values()
    assert ex.step_code == "reference" and ex.program is None


def test_deep_spec_has_sixteen_hidden_layers(tmp_path):
    sizes, batch = bench_mlp.LADDER["deep"]
    g, hand, feeds = graphc_and_handwritten(tmp_path, sizes, batch, "float32")
    params = list(g.model.params)
    assert sorted(params) == sorted([f"W{i}" for i in range(1, 18)] +
                                    [f"b{i}" for i in range(1, 18)])
    assert len(hand.mask) == 16
    assert g.run(feeds) == pytest.approx(hand.step(feeds["x"], feeds["y"]), rel=1e-5)


def run_bench(*args):
    """bench_mlp.py without the jax and torch columns: tests never import them."""
    return subprocess.run([sys.executable, str(BENCH / "bench_mlp.py"), "--no-frameworks",
                           *args], capture_output=True, text=True, timeout=120)


def test_bench_prints_the_table():
    out = run_bench("--models", "tiny", "--reps", "3")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(line.startswith("blas:") for line in lines)
    assert any(line.startswith("OPENBLAS_CORETYPE:") for line in lines)
    head = next(i for i, line in enumerate(lines) if line.startswith("model"))
    assert "graphc/numpy" in lines[head] and "naive/arena" in lines[head]
    cells = lines[head + 1].split()
    assert cells[:2] == ["tiny", "32"]
    assert float(cells[2]) > 0 and float(cells[-1]) >= 1


def test_bench_json_has_one_row_per_model():
    out = run_bench("--models", "tiny", "--reps", "3", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    (r,) = report["rows"]
    assert (r["model"], r["batch"], r["reps"]) == ("tiny", 32, 3)
    assert r["lower_bound_bytes"] <= r["arena_bytes"] <= r["naive_bytes"]
    assert report["environment"]["OMP_NUM_THREADS"] == "1"


def test_bench_times_every_step_code_and_counts_its_kernel_calls():
    pytest.importorskip("numba", reason="the fused column needs graphc[numba]")
    out = run_bench("--models", "tiny", "--reps", "3", "--json")
    assert out.returncode == 0, out.stderr
    (r,) = json.loads(out.stdout)["rows"]
    assert r["step_code"] == "generated"
    assert set(r["over_numpy"]) == {"reference", "generated", "fused"}     # no jax, torch
    calls = r["kernel_calls"]
    # generated: the same calls, but plain SGD's four guarded updates run as one (flat)
    assert calls["reference"] == calls["generated"] + 3 and calls["generated"] > calls["fused"] > 0
    text = run_bench("--models", "tiny", "--reps", "3", "--paths", "reference,generated")
    head, cells = text.stdout.splitlines()[-2:]
    assert "ref/np" in head and "fused/np" in head and "calls r/g/f" in head
    assert "fused/jax" in head
    assert cells.split()[9:14] == ["-", "-", "-", "-",
                                   f"{calls['reference']}/{calls['generated']}/-"]


def test_the_jax_child_times_graphcs_fused_step_in_its_own_run(monkeypatch):
    """`fused/jax` is one run's ratio: the contender times the framework, the hand-written
    step and graphc's fused step together (a stand-in framework here: tests never import
    jax): a framework twice as slow as the fused step shows as about 0.5."""
    pytest.importorskip("numba", reason="the fused column needs graphc[numba]")
    sizes, batch = bench_mlp.LADDER["tiny"]

    def twice_the_fused_step(weights, biases, lr, x, y):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "twin.yaml"
            path.write_text(bench_mlp.mlp_spec("twin", sizes))
            twin = bench_mlp.build_graphc(path, "fused")
        feeds = {"x": x, "y": y}
        return lambda: (twin.run(feeds), twin.run(feeds))
    monkeypatch.setitem(bench_mlp.BUILDERS, "twice", twice_the_fused_step)
    r = bench_mlp.contender("tiny", "twice", 40, 0.0, fused=True)
    assert 0.3 < r["fused_over"] < 0.8 and r["over_numpy"] > 0
    assert bench_mlp.contender("tiny", "twice", 3, 0.0, fused=False)["fused_over"] is None


def test_bench_rejects_an_unknown_model():
    out = run_bench("--models", "tiny,huge")
    assert out.returncode == 2
    assert "huge" in out.stderr


def test_forms_prints_both_tables():
    out = subprocess.run([sys.executable, str(BENCH / "forms.py")], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if ":" in line]
    assert any(r.startswith("relu: np.maximum(a, zeros, out=a)") for r in rows)
    assert any(r.startswith("row max: np.maximum over columns") for r in rows)
    assert all(float(cell) > 0 for r in rows for cell in r.split()[-3:])


def test_bench_transformer_times_both_step_codes_and_keeps_the_arena_at_its_bound():
    pytest.importorskip("numba", reason="the fused column needs graphc[numba]")
    out = subprocess.run([sys.executable, str(BENCH / "bench_transformer.py"), "--reps", "2",
                          "--no-torch", "--batch", "8"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(line.startswith("graphc ") and "us/step" in line for line in lines)
    assert any(line.startswith("fused ") and "us/step" in line for line in lines)
    assert "graphc/torch  - (no torch column: --no-torch" in out.stdout
    assert "fused/torch   - (no torch column: --no-torch" in out.stdout
    assert lines[-1].endswith("arena/bound 1.000"), lines[-1]


def test_passes_bench_times_each_pass_with_and_without_it():
    out = subprocess.run([sys.executable, str(BENCH / "bench_passes.py"), "--seconds", "0.3",
                          "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = {r["pass"]: r for r in json.loads(out.stdout)["rows"]}
    assert set(rows) == {"blas", "flat stash"}
    assert (rows["blas"]["model"], rows["flat stash"]["optimizer"]) == ("medium", "adam")
    assert all(r["with_us"] > 0 and r["without_us"] > 0 and r["reps"] > 0 for r in rows.values())
    # each pass was on in one compile and off in the other: fewer calls with it
    assert all(r["kernel_calls"][0] < r["kernel_calls"][1] for r in rows.values())
