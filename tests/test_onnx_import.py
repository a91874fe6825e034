"""`graphc import` as a user types it, on models PyTorch exported.

Oracles: the outputs PyTorch computed, recorded beside each fixture
(tests/fixtures/onnx/NAME.npz, made by scripts/make_onnx_fixtures.py), and the
exported model's own outputs for export -> import -> export.
"""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the ONNX tests need the extra: "
                                          "pip install 'graphc[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="the ONNX tests need the extra: "
                                                "pip install 'graphc[onnx]'")

from onnx import TensorProto, helper                                  # noqa: E402

from graphc.ops import OPS                                            # noqa: E402
from test_cli import REPO, SPECS, graphc, ok, one_json                # noqa: E402
from test_onnx_export import assert_close, check_grads                # noqa: E402

FIXTURES = REPO / "tests" / "fixtures" / "onnx"
MLPS = ["mlp_gemm", "mlp_matmul"]
CNNS = pytest.mark.skipif("conv2d" not in OPS, reason="the CNN subset imports into "
                          "conv2d/max_pool2d/avg_pool2d/flatten, which this graphc lacks")


def recorded(name: str) -> dict:
    with np.load(FIXTURES / f"{name}.npz") as f:
        return {k: f[k] for k in f.files}


def imported(name: str, folder) -> tuple:
    """`graphc import` of fixture `name` into `folder`: (spec, params)."""
    spec = folder / f"{name}.yaml"
    ok(graphc("import", FIXTURES / f"{name}.onnx", "--out", spec))
    return spec, folder / f"{name}.ckpt.npz"


def check_and_predict(name: str, tmp_path) -> tuple:
    spec, params = imported(name, tmp_path)
    ok(graphc("check", spec))
    want = recorded(name)
    np.savez(tmp_path / "x.npz", x=want["x"])
    got = one_json(ok(graphc("predict", spec, "--inputs", tmp_path / "x.npz", "--json",
                             cwd=tmp_path)))["outputs"]      # the default checkpoint
    (output,) = got
    assert_close(got[output], want[output], f"{name}: {output}")
    return spec, params, want


def trains_and_exports(spec, params, want, tmp_path) -> None:
    """The imported spec trains from its params (a train: section added, as docs/onnx.md
    says) and exports a model that onnxruntime runs to predict's numbers, and with
    --with-grad to `graphc grad`'s."""
    labels = "\n  labels:" in spec.read_text()
    rows = len(want["x"])
    target = np.arange(rows) % 3 if labels else np.full((rows, 1), 0.5, dtype=np.float32)
    np.savez(tmp_path / "data.npz", x=want["x"], **{"labels" if labels else "targets": target})
    spec.write_text(spec.read_text() + "train: {data: {npz: data.npz}, batch_size: 5, "
                    "epochs: 1, optimizer: {sgd: {lr: 0.01}}}\n")
    ok(graphc("train", spec, "--init-from", params, "--out", tmp_path / "tuned.npz"))
    ok(graphc("export", spec, "--params", params, "--out", tmp_path / "again.onnx"))
    session = ort.InferenceSession(str(tmp_path / "again.onnx"),
                                   providers=["CPUExecutionProvider"])
    (output,) = [o.name for o in session.get_outputs()]
    (got,) = session.run(None, {"x": want["x"]})
    assert_close(got, want[output], f"{spec.name}: re-exported {output}")
    ok(graphc("export", spec, "--params", params, "--out", tmp_path / "grad.onnx", "--with-grad"))
    session = ort.InferenceSession(str(tmp_path / "grad.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"x": want["x"], "labels" if labels else "targets": target}
    outs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    check_grads(tmp_path, spec, ["--params", params], feeds, outs)


def test_the_fixtures_hold_both_exporter_styles():
    ops = {name: [n.op_type for n in onnx.load(str(FIXTURES / f"{name}.onnx")).graph.node]
           for name in MLPS}
    gemm = onnx.load(str(FIXTURES / "mlp_gemm.onnx")).graph.node[0]
    assert gemm.op_type == "Gemm" and helper.get_attribute_value(gemm.attribute[-1]) == 1
    assert ops["mlp_matmul"][:3] == ["Transpose", "MatMul", "Add"]


@pytest.mark.parametrize("name", MLPS)
def test_an_imported_mlp_predicts_what_pytorch_computed(name, tmp_path):
    spec, params, want = check_and_predict(name, tmp_path)
    trains_and_exports(spec, params, want, tmp_path)


@CNNS
@pytest.mark.parametrize("name", ["cnn", "cnn_gap"])
def test_an_imported_cnn_predicts_what_pytorch_computed(name, tmp_path):
    spec, params, want = check_and_predict(name, tmp_path)
    trains_and_exports(spec, params, want, tmp_path)


def test_a_gemm_weight_is_stored_transposed(tmp_path):
    spec, params = imported("mlp_gemm", tmp_path)
    w = onnx.numpy_helper.to_array(onnx.load(str(FIXTURES / "mlp_gemm.onnx")).graph.initializer[0])
    with np.load(params) as p:
        assert p["p0_weight"].shape == (4, 8) and np.array_equal(p["p0_weight"], w.T)
    assert "p0_weight: [4, 8]" in spec.read_text()


def test_export_import_export_is_stable(tmp_path):
    ckpt = tmp_path / "spiral.npz"
    ok(graphc("train", SPECS / "spiral_mlp.yaml", "--epochs", 1, "--out", ckpt))
    ok(graphc("export", SPECS / "spiral_mlp.yaml", "--params", ckpt, "--out", tmp_path / "a.onnx"))
    first, first_params = tmp_path / "one" / "m.yaml", tmp_path / "one" / "m.ckpt.npz"
    second = tmp_path / "two" / "m.yaml"
    first.parent.mkdir(), second.parent.mkdir()
    ok(graphc("import", tmp_path / "a.onnx", "--out", first))
    ok(graphc("export", first, "--params", first_params, "--out", tmp_path / "b.onnx"))
    ok(graphc("import", tmp_path / "b.onnx", "--out", second))
    body = [t.read_text().split("\n", 1)[1] for t in (first, second)]
    assert body[0] == body[1]
    a, b = (onnx.load(str(tmp_path / f)) for f in ("a.onnx", "b.onnx"))
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]
    x = np.random.default_rng(0).normal(size=(9, 2)).astype(np.float32)
    outs = [ort.InferenceSession(str(tmp_path / f)).run(None, {"x": x})[0]
            for f in ("a.onnx", "b.onnx")]
    np.testing.assert_array_equal(outs[0], outs[1])


def one_error(proc) -> str:
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1, proc.stderr
    return proc.stderr


def test_an_unsupported_op_is_an_error_naming_op_node_and_the_supported(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    graph = helper.make_graph([helper.make_node("Cos", ["x"], ["y"], name="wave")], "g", [x], [y])
    onnx.save(helper.make_model(graph), str(tmp_path / "cos.onnx"))
    err = one_error(graphc("import", tmp_path / "cos.onnx", "--out", tmp_path / "cos.yaml"))
    assert "node 'wave' (Cos): graphc cannot import this op" in err
    assert "graphc imports " in err and "Gemm" in err and "Relu" in err
    assert not (tmp_path / "cos.yaml").exists() and not (tmp_path / "cos.ckpt.npz").exists()


def test_a_file_that_is_no_onnx_model_is_one_error(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"\x00\x01 not protobuf at all \xff")
    err = one_error(graphc("import", tmp_path / "bad.onnx", "--out", tmp_path / "m.yaml"))
    assert "bad.onnx" in err and "ONNX model" in err
