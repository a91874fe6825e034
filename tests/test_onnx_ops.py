"""Every op's export mapping, forward and backward, against graphc's own kernels.

Table-driven over tests/test_ops_grad.py's CASES (random inputs of random shapes and
attributes): the graph `loss = sum(op(x...) * R)` and its reverse graph are exported
and run by onnxruntime; `out`, the loss and every gradient must equal what graphc's
planned executor computes. In float64 (rtol 1e-9), except the convolution family:
onnxruntime has no float64 Conv or AveragePool kernel, so those run in float32 (rtol
1e-5 plus 1e-5 of the largest value, as the spec tests). A mapping that is wrong for
some shape, axis or attribute fails here before any spec uses it.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

onnx = pytest.importorskip("onnx", reason="the ONNX tests need the extra: "
                                          "pip install 'graphc[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="the ONNX tests need the extra: "
                                                "pip install 'graphc[onnx]'")

from graphc.autodiff import grad_graph                                # noqa: E402
from graphc.model import Runner                                       # noqa: E402
from graphc.onnx.export import export_graph, graph_model              # noqa: E402
from graphc.ops import FAMILIES, OPS                                  # noqa: E402
from test_ops_grad import CASES, op_graph                             # noqa: E402

FLOAT32 = {op.name for op in FAMILIES["conv"]}      # no float64 kernels in onnxruntime


def test_every_computed_op_has_an_export_mapping():
    computed = {n for n, op in OPS.items() if op.group not in ("leaf", "layer", "update")}
    assert not {n for n in computed if not callable(OPS[n].onnx)}, "ops without a mapping"


def graphc_values(graph, feeds, wrt) -> dict:
    """out, loss and d:LEAF as graphc's planned executor computes them."""
    gg = grad_graph(graph, wrt)
    named = {"out": "out", "loss": "loss", **{"d:" + w: gg.grads[w] for w in wrt}}
    runner = Runner(gg.graph, {}, {v for v in named.values() if v}, forward=set(graph.nodes))
    ex = runner.run(feeds)
    return {k: np.array(ex[v]) if v else np.zeros(graph[k[2:]].shape) for k, v in named.items()}


@pytest.mark.parametrize("op", sorted(CASES))
@settings(max_examples=8, deadline=None)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_op_mapping_equals_the_kernels(op, data, seed):
    rng = np.random.default_rng(seed)
    dtype = "float32" if op in FLOAT32 else "float64"
    arrays, attrs = CASES[op].gen(data.draw, rng)
    arrays = [a.astype(dtype) if a.dtype.kind == "f" else a for a in arrays]
    graph, names = op_graph(op, arrays, attrs, dtype)
    feeds = {**dict(zip(names, arrays)), "R": rng.normal(size=graph["out"].shape).astype(dtype)}
    wrt = [n for n, a in zip(names, arrays) if a.dtype.kind == "f"]
    want = graphc_values(graph, feeds, wrt)
    sub, named, zeros = export_graph(graph, ["out"], wrt)
    fed = [n for n in feeds if n in sub.nodes]
    proto = graph_model(sub, named, fed, {}, {}, 17, op, zeros)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in session.get_outputs()],
                   session.run(None, {n: np.asarray(feeds[n]) for n in fed})))
    for name, value in want.items():
        scale = float(np.abs(value).max()) if value.size else 0.0
        rtol = 1e-5 if dtype == "float32" else 1e-9
        np.testing.assert_allclose(got[name], value, rtol=rtol, atol=rtol * scale + 1e-12,
                                   err_msg=name)
