"""Every op's export mapping, forward and backward, against graphc's own kernels.

Table-driven over tests/test_ops_grad.py's CASES (random inputs of random shapes and
attributes): the graph `loss = sum(op(x...) * R)` and its reverse graph are exported
in float64 and run by onnxruntime; `out`, the loss and every gradient must equal what
graphc's planned executor computes (rtol 1e-9). A mapping that is wrong for some shape,
axis or attribute fails here before any spec uses it.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

onnx = pytest.importorskip("onnx", reason="the ONNX tests need the extra: "
                                          "pip install 'graphc[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="the ONNX tests need the extra: "
                                                "pip install 'graphc[onnx]'")

from graphc.gradcheck import check_grads                              # noqa: E402
from graphc.onnx.export import export_graph, graph_model              # noqa: E402
from graphc.ops import OPS                                            # noqa: E402
from test_ops_grad import CASES, op_graph                             # noqa: E402


def test_every_computed_op_has_an_export_mapping():
    computed = {n for n, op in OPS.items() if op.group not in ("leaf", "layer", "update")}
    assert not {n for n in computed if not callable(OPS[n].onnx)}, "ops without a mapping"


@pytest.mark.parametrize("op", sorted(CASES))
@settings(max_examples=8, deadline=None)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_op_mapping_equals_the_kernels(op, data, seed):
    rng = np.random.default_rng(seed)
    arrays, attrs = CASES[op].gen(data.draw, rng)
    graph, names = op_graph(op, arrays, attrs)
    feeds = {**dict(zip(names, arrays)), "R": rng.normal(size=graph["out"].shape)}
    wrt = [n for n, a in zip(names, arrays) if a.dtype.kind == "f"]
    want = check_grads(graph, feeds, wrt)
    sub, named, zeros = export_graph(graph, ["out"], wrt)
    fed = [n for n in feeds if n in sub.nodes]
    proto = graph_model(sub, named, fed, {}, {}, 17, op, zeros)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in session.get_outputs()],
                   session.run(None, {n: np.asarray(feeds[n]) for n in fed})))
    expected = np.asarray(CASES[op].ref(*arrays, **attrs))
    np.testing.assert_allclose(got["out"], expected, rtol=1e-9, atol=1e-12, err_msg="out")
    np.testing.assert_allclose(got["loss"], want.loss, rtol=1e-9, atol=1e-12, err_msg="loss")
    for w in wrt:
        np.testing.assert_allclose(got["d:" + w], want.analytic[w], rtol=1e-9, atol=1e-12,
                                   err_msg=f"d loss / d {w}")
