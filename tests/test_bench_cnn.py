"""benchmarks/bench_cnn.py compares like with like: its hand-written NumPy step is the same
model as graphc's (same loss, same params after a step), and the script runs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_cnn  # noqa: E402
from handwritten_cnn import HandwrittenCNN  # noqa: E402

import graphc  # noqa: E402


@pytest.mark.parametrize("name", sorted(bench_cnn.MODELS))
def test_the_handwritten_step_is_graphc_s_step(tmp_path, name):
    in_shape, _, layers = bench_cnn.MODELS[name]
    batch = 4
    path = tmp_path / "cnn.yaml"
    path.write_text(bench_cnn.cnn_spec(name, in_shape, layers))
    model = graphc.load(path)
    hand = HandwrittenCNN(layers, bench_cnn.params_of(model), (batch,) + in_shape, 0.01)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((batch,) + in_shape).astype(np.float32)
    y = rng.integers(0, 10, batch)
    for _ in range(2):
        assert model.step({"x": x, "y": y}) == pytest.approx(hand.step(x, y), rel=1e-5)
    ours = [model.params[f"P{i}"] for i in range(len(model.params))]
    theirs = [p for layer in hand.layers for p in (getattr(layer, "W", None),
                                                   getattr(layer, "b", None)) if p is not None]
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_bench_cnn_runs_and_reports_ratios():
    proc = subprocess.run([sys.executable, str(BENCH / "bench_cnn.py"), "--models", "digits",
                           "--reps", "3", "--json", "--no-torch"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    row = report["rows"][0]
    assert row["model"] == "digits" and row["graphc_over_numpy"] > 0 and "torch_us" not in row
    assert report["environment"]["OPENBLAS_NUM_THREADS"] == "1"
    assert row["plain_over_numpy"] > 0
    try:
        import numba  # noqa: F401
    except ImportError:
        assert "fused_us" not in row                   # the column needs graphc[numba]
        assert row["numba_steps"] == 0
    else:
        assert row["fused_over_numpy"] > 0 and "fused_over_torch" not in row
        # im2col, conv + relu (2), max_pool twice, col2im, max_pool_grad + relu_grad twice
        assert row["numba_steps"] == 13
