"""The sequence layer forms (graphc/seqlayers.py): each form's expansion (params, inits,
ops), its forward value against a direct NumPy reference in float64, graphc's own float64
gradcheck of a spec using it, weight tying with share=, and located errors for bad
arguments, run through the CLI as a user does."""
from __future__ import annotations

import json
from collections import Counter
from math import sqrt

import numpy as np
import pytest

import graphc
from graphc.spec import load_spec
from test_cli import SPECS, graphc as cli

HEAD = "dtype: float64\n"
MHA = HEAD + """inputs:
  x: [batch, 5, 8]
nodes:
  a: multi_head_attention(x, heads=2, causal=True)
  loss: sum(a * a)
outputs: [a]
"""
BLOCK = HEAD + """inputs:
  x: [batch, 5, 8]
nodes:
  t: transformer_block(x, heads=2, mlp=12, causal=True)
  loss: sum(t * t)
outputs: [t]
"""
POS = HEAD + """inputs:
  x: [batch, 5, 8]
nodes:
  p: positional_embedding(x)
  loss: sum(p * p)
outputs: [p]
"""
GRU = HEAD + """inputs:
  x: [batch, 3]
  h0: [batch, 4]
nodes:
  g: gru_cell(x, h0, units=4)
  loss: sum(g * g)
outputs: [g]
"""
NORM = HEAD + """inputs:
  x: [batch, 5, 8]
nodes:
  n: layer_norm(x, eps=0.001)
  loss: sum(n * n * x)
outputs: [n]
"""
FEEDS = {"x": [2, 5, 8]}


def spec_at(tmp_path, text: str):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def loaded(tmp_path, text: str):
    """The spec's model with every param moved off its init (biases and gammas away from
    0 and 1, so each term shows), and those params."""
    model = graphc.load(spec_at(tmp_path, text))
    rng = np.random.default_rng(0)
    params = {k: v + rng.normal(0, 0.3, v.shape) for k, v in model.params.items()}
    np.savez(tmp_path / "p.npz", **params)
    return graphc.load(spec_at(tmp_path, text), params=tmp_path / "p.npz"), params


def ops_of(spec, node: str) -> Counter:
    return Counter(n.op for n in spec.nodes if n.name.split("/")[0] == node)


def leaves_of(spec, kind="param") -> dict:
    return {k: (v.shape, v.init) for k, v in spec.leaves.items() if v.kind == kind}


# --- NumPy references -------------------------------------------------------------------------

def softmax(s):
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def attention_ref(x, P, o: str, heads: int, causal: bool):
    n, t, d = x.shape
    split = [(x @ P[f"{o}.W{c}"]).reshape(n, t, heads, d // heads).transpose(0, 2, 1, 3)
             for c in "qkv"]
    q, k, v = split
    s = q @ k.transpose(0, 1, 3, 2) / sqrt(d // heads)
    if causal:
        s = np.where(np.triu(np.ones((t, t)), 1) > 0, -np.inf, s)
    heads_out = softmax(s) @ v
    return heads_out.transpose(0, 2, 1, 3).reshape(n, t, d) @ P[f"{o}.Wo"] + P[f"{o}.bo"]


def layer_norm_ref(x, gamma, beta, eps=1e-5):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def gelu_ref(x):
    return 0.5 * x * (1 + np.tanh(sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def gru_ref(x, h, P, o: str, units: int):
    """torch.nn.GRUCell with weight_ih = W_ihᵀ, gates r, z, n in that order."""
    gx, gh = x @ P[f"{o}.W_ih"] + P[f"{o}.b_ih"], h @ P[f"{o}.W_hh"] + P[f"{o}.b_hh"]
    part = lambda g, k: g[..., k * units:(k + 1) * units]      # noqa: E731
    sig = lambda a: 1 / (1 + np.exp(-a))                         # noqa: E731
    r, z = sig(part(gx, 0) + part(gh, 0)), sig(part(gx, 1) + part(gh, 1))
    n = np.tanh(part(gx, 2) + r * part(gh, 2))
    return (1 - z) * n + z * h


# --- expansions -------------------------------------------------------------------------------

def test_multi_head_attention_expands_into_attention_ops(tmp_path):
    spec = load_spec(spec_at(tmp_path, MHA))
    assert leaves_of(spec) == {**{f"a.W{c}": ((8, 8), "glorot_uniform") for c in "qkvo"},
                               "a.bo": ((8,), "zeros")}
    assert ops_of(spec, "a") == Counter(matmul=4, reshape=4, transpose=4, add=1,
                                        scaled_dot_product_attention=1)
    heads = next(n for n in spec.nodes if n.op == "scaled_dot_product_attention")
    assert heads.attrs["causal"] is True
    split = next(n for n in spec.nodes if n.name == "a/q_split")
    assert list(split.attrs["shape"]) == ["batch", 5, 2, 4]


def test_transformer_block_is_pre_norm_attention_and_mlp(tmp_path):
    spec = load_spec(spec_at(tmp_path, BLOCK))
    params = leaves_of(spec)
    assert params["t.W1"] == ((8, 12), "he_normal")          # before gelu, as dense picks
    assert params["t.W2"] == ((12, 8), "glorot_uniform")
    assert params["t.norm1_gamma"] == ((8,), "ones")
    assert params["t.norm2_beta"] == ((8,), "zeros")
    assert len(params) == 13
    assert ops_of(spec, "t") == Counter(matmul=6, reshape=4, transpose=4, add=5, layer_norm=2,
                                        scaled_dot_product_attention=1, gelu=1)


def test_mlp_defaults_to_four_times_the_width(tmp_path):
    spec = load_spec(spec_at(tmp_path, BLOCK.replace("mlp=12, ", "")))
    assert leaves_of(spec)["t.W1"][0] == (8, 32)


def test_layer_norm_with_one_input_is_its_layer_form(tmp_path):
    """`layer_norm(x)` creates gamma (ones) and beta (zeros) over x's last dim, as
    PyTorch's LayerNorm(D) starts, and is the 3-input op on them (eps passed through)."""
    spec = load_spec(spec_at(tmp_path, NORM))
    assert leaves_of(spec) == {"n.gamma": ((8,), "ones"), "n.beta": ((8,), "zeros")}
    node = next(n for n in spec.nodes if n.name == "n")
    assert (node.op, node.inputs[:3], node.attrs["eps"]) == \
        ("layer_norm", ("x", "n.gamma", "n.beta"), 0.001)


def test_positional_embedding_is_a_learned_table_added(tmp_path):
    spec = load_spec(spec_at(tmp_path, POS))
    assert leaves_of(spec) == {"p.pos": ((5, 8), {"normal": {"std": 0.02}})}
    assert ops_of(spec, "p") == Counter(add=1)


def test_gru_cell_stacks_pytorch_gates(tmp_path):
    spec = load_spec(spec_at(tmp_path, GRU))
    bound = {"uniform": {"low": -0.5, "high": 0.5}}          # 1/sqrt(units=4)
    assert leaves_of(spec) == {"g.W_ih": ((3, 12), bound), "g.W_hh": ((4, 12), bound),
                               "g.b_ih": ((12,), bound), "g.b_hh": ((12,), bound)}
    assert ops_of(spec, "g") == Counter(matmul=2, add=6, slice=6, sigmoid=2, mul=2, tanh=1,
                                        sub=1)


def test_the_layer_transformer_compiles_to_the_hand_written_blocks_ops():
    """specs/sort_transformer_layers.yaml is specs/sort_transformer.yaml's graph: the same
    op multiset and the same param shapes (only their names differ)."""
    hand = load_spec(SPECS / "sort_transformer.yaml")
    layers = load_spec(SPECS / "sort_transformer_layers.yaml")
    assert Counter(n.op for n in hand.nodes) == Counter(n.op for n in layers.nodes)
    shapes = lambda s: sorted(v.shape for v in s.leaves.values() if v.kind == "param")  # noqa
    assert shapes(hand) == shapes(layers)


# --- forward values against NumPy, float64 ----------------------------------------------------

def test_multi_head_attention_matches_numpy(tmp_path):
    model, P = loaded(tmp_path, MHA)
    x = np.random.default_rng(1).normal(size=(2, 5, 8))
    got = model.predict({"x": x}, outputs=["a"])["a"]
    np.testing.assert_allclose(got, attention_ref(x, P, "a", 2, True), rtol=1e-12, atol=1e-12)
    # causal: the first position reads only itself, so changing later tokens leaves it be
    later = x.copy()
    later[:, 1:] += 1.0
    np.testing.assert_allclose(model.predict({"x": later}, outputs=["a"])["a"][:, 0],
                               got[:, 0], rtol=1e-12)


def test_transformer_block_matches_numpy(tmp_path):
    model, P = loaded(tmp_path, BLOCK)
    x = np.random.default_rng(2).normal(size=(2, 5, 8))
    r = x + attention_ref(layer_norm_ref(x, P["t.norm1_gamma"], P["t.norm1_beta"]), P, "t",
                          2, True)
    hidden = gelu_ref(layer_norm_ref(r, P["t.norm2_gamma"], P["t.norm2_beta"]) @ P["t.W1"]
                      + P["t.b1"])
    want = r + hidden @ P["t.W2"] + P["t.b2"]
    got = model.predict({"x": x}, outputs=["t"])["t"]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_positional_embedding_matches_numpy(tmp_path):
    model, P = loaded(tmp_path, POS)
    x = np.random.default_rng(3).normal(size=(2, 5, 8))
    np.testing.assert_array_equal(model.predict({"x": x}, outputs=["p"])["p"], x + P["p.pos"])


def test_layer_norm_layer_matches_numpy(tmp_path):
    model, P = loaded(tmp_path, NORM)
    x = np.random.default_rng(7).normal(size=(2, 5, 8))
    np.testing.assert_allclose(model.predict({"x": x}, outputs=["n"])["n"],
                               layer_norm_ref(x, P["n.gamma"], P["n.beta"], eps=0.001),
                               rtol=1e-12, atol=1e-12)


def test_gru_cell_matches_numpy(tmp_path):
    model, P = loaded(tmp_path, GRU)
    rng = np.random.default_rng(4)
    x, h = rng.normal(size=(2, 3)), rng.normal(size=(2, 4))
    got = model.predict({"x": x, "h0": h}, outputs=["g"])["g"]
    np.testing.assert_allclose(got, gru_ref(x, h, P, "g", 4), rtol=1e-12, atol=1e-12)


# --- gradients: graphc gradcheck, float64 -----------------------------------------------------

@pytest.mark.parametrize("text, feeds", [(MHA, {"x": (2, 5, 8)}), (BLOCK, {"x": (2, 5, 8)}),
                                         (POS, {"x": (2, 5, 8)}),
                                         (GRU, {"x": (2, 3), "h0": (2, 4)}),
                                         (NORM, {"x": (2, 5, 8)})],
                         ids=["multi_head_attention", "transformer_block",
                              "positional_embedding", "gru_cell", "layer_norm"])
def test_gradcheck_of_each_layer_form(tmp_path, text, feeds):
    rng = np.random.default_rng(5)
    np.savez(tmp_path / "in.npz", **{k: rng.normal(size=s) for k, s in feeds.items()})
    proc = cli("gradcheck", spec_at(tmp_path, text), "--inputs", tmp_path / "in.npz", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert out["ok"] is True and len(out["leaves"]) >= 1


# --- share=: weight tying ---------------------------------------------------------------------

TIED = HEAD + """inputs:
  x: [batch, 2]
  h0: [batch, 3]
nodes:
  x1: slice(x, axis=1, start=0, stop=1)
  x2: slice(x, axis=1, start=1, stop=2)
  s1: gru_cell(x1, h0, units=3)
  s2: gru_cell(x2, s1, units=3, share=s1)
  loss: sum(s2 * s2)
outputs: [s2]
"""


def test_a_shared_gru_cell_reads_the_first_ones_params(tmp_path):
    spec = load_spec(spec_at(tmp_path, TIED))
    assert sorted(leaves_of(spec)) == ["s1.W_hh", "s1.W_ih", "s1.b_hh", "s1.b_ih"]
    model, P = loaded(tmp_path, TIED)
    rng = np.random.default_rng(6)
    x, h = rng.normal(size=(2, 2)), rng.normal(size=(2, 3))
    want = gru_ref(x[:, 1:], gru_ref(x[:, :1], h, P, "s1", 3), P, "s1", 3)
    got = model.predict({"x": x, "h0": h}, outputs=["s2"])["s2"]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_a_layer_sharing_a_sharing_layer_reads_the_first_ones_params(tmp_path):
    # s3 shares s2, which shares s1: before, "share=s2 is not an earlier gru_cell layer"
    text = TIED.replace("x: [batch, 2]", "x: [batch, 3]").replace(
        "  loss: sum(s2 * s2)\noutputs: [s2]", "  x3: slice(x, axis=1, start=2, stop=3)\n"
        "  s3: gru_cell(x3, s2, units=3, share=s2)\n  loss: sum(s3 * s3)\noutputs: [s3]")
    spec = load_spec(spec_at(tmp_path, text))
    assert sorted(leaves_of(spec)) == ["s1.W_hh", "s1.W_ih", "s1.b_hh", "s1.b_ih"]
    model, P = loaded(tmp_path, text)
    rng = np.random.default_rng(7)
    x, h = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
    want = h
    for k in range(3):
        want = gru_ref(x[:, k:k + 1], want, P, "s1", 3)
    got = model.predict({"x": x, "h0": h}, outputs=["s3"])["s3"]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


# --- located errors ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, old, new, line, says", [
    (MHA, "heads=2", "heads=3", 5, "splits the width 8 of 'x' into 3 heads"),
    (BLOCK, "heads=2", "heads=0", 5, "attribute 'heads' of transformer_block is 0"),
    (BLOCK, "mlp=12", "mlp=-1", 5, "attribute 'mlp' of transformer_block is -1"),
    (BLOCK, "mlp=12", "mlp=12, activation=gelo", 5, "has no activation 'gelo'"),
    (GRU, "units=4", "units=5", 6, "gru_cell's state h must be [..., 5] (units=5), but 'h0'"),
    (GRU, ", units=4", "", 6, "op 'gru_cell' needs attribute 'units'"),
    # before: "shape mismatch in add" between the layer's inner nodes g/x_r and g/h_r
    (GRU, "x: [batch, 3]", "x: [batch, seq, 3]", 6, "gru_cell's x [batch, seq, 3] and state "
     "h [batch, 4] need leading (batch) dims that broadcast"),
    (POS, "x: [batch, 5, 8]", "x: [batch, seq, 8]", 5, "T and D fixed sizes"),
    (MHA, "x: [batch, 5, 8]", "x: [batch, 5, width]", 5, "last dim is a fixed size"),
    (TIED, "share=s1", "share=x1", 9, "share=x1 is not an earlier gru_cell layer"),
    # before: "internal error (TypeError: unhashable type: 'list')"
    (TIED, "share=s1", "share=[s1]", 9, "share=[s1] is not an earlier gru_cell layer"),
    (TIED, "units=3, share", "units=2, share", 9, "gru_cell's state h must be [..., 2]"),
    (NORM, "x: [batch, 5, 8]", "x: [batch, 5, width]", 5, "D a fixed size, got [batch, 5, "),
    (NORM, "layer_norm(x, eps", "layer_norm(sum(x), eps", 5, "D a fixed size, got []"),
    (NORM, "eps=0.001", "eps=0", 5, "attribute 'eps' of layer_norm is 0"),
])
def test_bad_arguments_are_located_errors(tmp_path, text, old, new, line, says):
    assert old in text
    proc = cli("check", spec_at(tmp_path, text.replace(old, new)))
    assert proc.returncode == 2, proc.stdout
    first = proc.stderr.splitlines()[0]
    assert first.startswith(f"error: {tmp_path / 'spec.yaml'}:{line}:"), proc.stderr
    assert says in first and "Traceback" not in proc.stderr


def test_sharing_a_layer_of_other_shapes_is_a_located_error(tmp_path):
    text = TIED.replace("x2: slice(x, axis=1, start=1, stop=2)", "x2: slice(x, axis=1, "
                        "start=0, stop=2)")
    proc = cli("check", spec_at(tmp_path, text))
    assert proc.returncode == 2
    assert ":9:" in proc.stderr and "shares the params of 's1', but here 's1.W_ih' would be " \
        "[2, 9], and it is [1, 9]" in proc.stderr


@pytest.mark.parametrize("text, layer", [(MHA, "multi_head_attention"),
                                         (BLOCK, "transformer_block"), (NORM, "layer_norm"),
                                         (POS, "positional_embedding")])
def test_integer_ids_into_a_layer_are_refused_at_the_layer(tmp_path, text, layer):
    # before: "input 1 of matmul is 'x' (int64)" (or layer_norm), at an op the user never wrote
    text = text.replace("x: [batch, 5, 8]", "x: {shape: [batch, 5, 8], dtype: int64}")
    proc = cli("check", spec_at(tmp_path, text))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith(f"error: {tmp_path / 'spec.yaml'}:5:")
    assert f"input 1 of the {layer} layer is 'x' (int64), but must be floating-point" in line
    assert f"{layer}(embedding(x, W), ...)" in line
