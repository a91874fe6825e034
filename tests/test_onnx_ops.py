"""Every op's export mapping, forward and backward, against graphc's own kernels.

Table-driven over tests/test_ops_grad.py's CASES (random inputs of random shapes and
attributes): the graph `loss = sum(op(x...) * R)` and its reverse graph are exported
and run by onnxruntime; `out`, the loss and every gradient must equal what graphc's
planned executor computes. In float64 (rtol 1e-9), except the convolution family:
onnxruntime has no float64 Conv or AveragePool kernel, so those run in float32 (rtol
1e-5 plus 1e-5 of the largest value, as the spec tests). A mapping that is wrong for
some shape, axis or attribute fails here before any spec uses it. Export writes the
eval-mode graph: the train-only ops (batch statistics, dropout's masks) must refuse
with one located error instead.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

onnx = pytest.importorskip("onnx", reason="the ONNX tests need the extra: "
                                          "pip install 'graphc[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="the ONNX tests need the extra: "
                                                "pip install 'graphc[onnx]'")

from graphc.autodiff import grad_graph                                # noqa: E402
from graphc.errors import SpecError                                   # noqa: E402
from graphc.model import Runner, load_model                           # noqa: E402
from graphc.onnx.export import export_graph, graph_model              # noqa: E402
from graphc.ops import FAMILIES, OPS                                  # noqa: E402
from test_ops_grad import CASES, op_graph                             # noqa: E402
from test_cli import SPECS                                            # noqa: E402

FLOAT32 = {op.name for op in FAMILIES["conv"]}      # no float64 kernels in onnxruntime
# ops of the train-mode graph only: batch statistics (and their gradient), dropout's masks
TRAIN_ONLY = {"batch_norm", "batch_norm_stats", "batch_norm_grad", "dropout", "dropout_grad"}


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


def test_train_only_ops_are_exactly_those_the_eval_mode_drops():
    """The set above is the ops that lower to another op in eval mode, their saved values
    and their gradients: none of them is left in an eval-mode graph."""
    lowered = {n for n, op in OPS.items() if op.modes}
    assert lowered == {"batch_norm", "dropout"}
    derived = {OPS[n].saves for n in lowered if OPS[n].saves} | {n + "_grad" for n in lowered}
    assert TRAIN_ONLY == lowered | derived


@pytest.mark.parametrize("op", sorted(TRAIN_ONLY))
def test_train_only_ops_refuse_with_a_located_error(op):
    """What a train-only op's mapping says, wherever it stands."""
    node = load_model(SPECS / "spiral_bn_dropout.yaml").graph["h1n"]
    with pytest.raises(SpecError) as err:
        OPS[op].onnx(None, replace(node, op=op))
    assert f"op '{op}' exports in eval mode only" in str(err.value)
    assert str(err.value).startswith(f"{SPECS / 'spiral_bn_dropout.yaml'}:29:")


def test_a_train_mode_graph_is_refused_at_its_first_train_only_node():
    """graphc export writes the eval-mode graph; one written from the train-mode graph
    stops at batch_norm's statistics, with the spec line of h1n."""
    model = load_model(SPECS / "spiral_bn_dropout.yaml")
    sub, named, _ = export_graph(model.graph, ["scores"], ())
    fed = [n.name for n in sub.leaves("input") if n.name not in model.store]
    with pytest.raises(SpecError) as err:
        graph_model(sub, named, fed, model.store, {}, 17, "bn")
    text = str(err.value)
    assert "\n" not in text and "exports in eval mode only" in text
    assert "node 'h1n'" in text and "spiral_bn_dropout.yaml:29:" in text


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
    sub, named, zeros = export_graph(graph, ["out"], wrt)
    fed = [n for n in feeds if n in sub.nodes]
    if op in TRAIN_ONLY:
        with pytest.raises(SpecError, match="exports in eval mode only"):
            graph_model(sub, named, fed, {}, {}, 17, op, zeros)
        return
    want = graphc_values(graph, feeds, wrt)
    proto = graph_model(sub, named, fed, {}, {}, 17, op, zeros)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in session.get_outputs()],
                   session.run(None, {n: np.asarray(feeds[n]) for n in fed})))
    # the loss is sum(out * R), a cancelling sum: its rounding scales with sum|out * R|
    terms = {"loss": float(np.abs(want["out"] * feeds["R"]).sum())}
    for name, value in want.items():
        scale = terms.get(name, float(np.abs(value).max()) if value.size else 0.0)
        rtol = 1e-5 if dtype == "float32" else 1e-9
        np.testing.assert_allclose(got[name], value, rtol=rtol, atol=rtol * scale + 1e-12,
                                   err_msg=name)
