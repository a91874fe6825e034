"""Pictures that teach: DOT parsed with a real parser (pydot), SVG parsed as XML, explain's sums.

Oracles: the lecture's own numbers (f = (x + y) z at x=-2, y=5, z=-4), graphc's values and
gradients from run_grads, central differences of each op's kernel for the local gradients,
and the plan's own buffers and steps for the plan and memory pictures.
"""
from __future__ import annotations

import ast
import csv
import importlib.util
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st

from graphc import shapes as S
from graphc.annotate import GRAD, VALUE, grad_dot
from graphc.dot import escape, forward_of, parse_range, plan_dot, quote, render
from graphc.errors import SpecError
from graphc.explain import LocalGrads, all_values, chain_paths, edge_local, explain, multigraph
from graphc.backends.numpy import run_kernel
from graphc import memsvg as M
from graphc.memsvg import memory_svg
from graphc.model import load_model, run_grads
from graphc.plan import compile_plan
from graphc.optim import parse_optimizer, training_graph

pytestmark = pytest.mark.filterwarnings("ignore:'\\w+' deprecated:DeprecationWarning")
pydot = pytest.importorskip("pydot", reason="pydot is the test extra's DOT parser: "
                                            "pip install -e '.[test]'")

REPO = Path(__file__).resolve().parents[1]
SPECS = REPO / "specs"
LECTURES = sorted(SPECS.glob("lecture_*.yaml"))
HAS_DOT = shutil.which("dot") is not None
NO_DOT = "Graphviz's `dot` is not installed (apt-get install graphviz); rendering not tested"
SVG_NS = "{http://www.w3.org/2000/svg}"


def parse_dot(text: str):
    graphs = pydot.graph_from_dot_data(text)
    assert graphs and len(graphs) == 1, "not one DOT graph"
    return graphs[0]


def unquote(name: str) -> str:
    return name[1:-1] if name.startswith('"') else name


def all_nodes(g, out=None) -> dict:
    """name -> pydot node statement with attributes, clusters included (a bare mention in a
    `{rank=same; ...}` group does not replace it); `node`/`edge` defaults skipped."""
    out = {} if out is None else out
    for n in g.get_nodes():
        name = unquote(n.get_name())
        if name not in ("node", "edge", "graph") and (name not in out or n.get_attributes()):
            out[name] = n
    for sub in g.get_subgraphs():
        all_nodes(sub, out)
    return out


def coloured(label: str, color: str) -> list:
    """The texts written in one colour in an HTML-like label."""
    return re.findall(rf'<font color="{color}"[^>]*>(.*?)</font>', label)


def number(text: str):
    return np.array(ast.literal_eval(text), dtype=float)


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "graphc", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, env=env)


def spiral_step():
    model = load_model(SPECS / "spiral_mlp.yaml")
    step = training_graph(model.graph, parse_optimizer(model.spec.train.get("optimizer")))
    plan = compile_plan(step.graph, {"batch": 64}, {model.graph.loss}, step.forward)
    return model, step, plan


# --- graphc grad --dot: the lecture's picture ------------------------------------------


def test_add_mul_picture_reads_like_the_lecture(tmp_path):
    """seeds/001 lines 302-353: values -2, 5, -4, q = 3, f = -12; gradients -4, -4, 3, -4, 1."""
    out = tmp_path / "f.dot"
    done = run_cli("grad", SPECS / "lecture_cs231n_add_mul.yaml", "--dot", out)
    assert done.returncode == 0, done.stderr
    nodes = all_nodes(parse_dot(out.read_text()))
    lecture = {"x": ("-2", "-4"), "y": ("5", "-4"), "z": ("-4", "3"), "q": ("3", "-4"),
               "f": ("-12", "1")}
    for name, (value, grad) in lecture.items():
        label = nodes[name].get_label()
        assert coloured(label, VALUE) == [value], (name, label)
        assert coloured(label, GRAD) == [grad], (name, label)
    edges = {(unquote(e.get_source()), unquote(e.get_destination())): e.get_label()
             for e in parse_dot(out.read_text()).get_edges()}
    assert "∂f/∂q = z = -4" in edges[("q", "f")]      # the lecture's "partial f by q = z"
    assert "∂f/∂z = q = 3" in edges[("z", "f")]
    assert "∂q/∂x = 1" in edges[("x", "q")] and "∂q/∂y = 1" in edges[("y", "q")]


@pytest.mark.parametrize("spec", LECTURES, ids=lambda p: p.stem)
def test_every_lecture_picture_shows_graphcs_values_and_gradients(spec):
    model = load_model(spec)
    result = run_grads(model, {}, everything=True)
    grads = {**result.node_grads, **result.grads}
    g = parse_dot(grad_dot(model, {}))
    nodes = all_nodes(g)
    drawn = [n for n in model.graph.nodes.values() if n.op != "const"]
    assert set(nodes) == {n.name for n in drawn}
    for n in drawn:
        label = nodes[n.name].get_label()
        shown = number(coloured(label, VALUE)[0])
        np.testing.assert_allclose(shown, result.values.get(n.name, model.store.get(n.name)),
                                   rtol=1e-3, atol=1e-4, err_msg=n.name)
        if n.name in grads:
            np.testing.assert_allclose(number(coloured(label, GRAD)[0]), grads[n.name],
                                       rtol=1e-3, atol=1e-4, err_msg=n.name)
    for e in g.get_edges():
        src = unquote(e.get_source())
        value = result.values.get(src, model.store.get(src))
        assert e.get("tooltip") == f'"{S.fmt(np.shape(value))}"'
        assert e.get_label(), f"edge {src} -> {e.get_destination()} has no label"


def test_fan_out_shows_each_share_and_their_sum(tmp_path):
    """y = x*x + x at x = 3: x is used three times; shares 3, 3, 1 add up to dy/dx = 2x + 1 = 7."""
    spec = tmp_path / "fan.yaml"
    spec.write_text("dtype: float64\ninputs:\n  x: 3\nnodes:\n  y: x * x + x\nloss: y\n")
    model = load_model(spec)
    g = parse_dot(grad_dot(model, {}))
    x = all_nodes(g)["x"].get_label()
    assert coloured(x, GRAD)[:2] == ["7", "Σ of 3 uses (copy gate)"]
    shares = [coloured(e.get_label(), GRAD) for e in g.get_edges()
              if unquote(e.get_source()) == "x"]
    assert sorted(s[0] for s in shares) == ["grad share 1", "grad share 3", "grad share 3"]


# --- local gradients and explain ---------------------------------------------------------


def central_difference(op, inputs, attrs, position, h=1e-6):
    """d op / d inputs[position] for scalar inputs, from the op's NumPy kernel."""
    def f(delta):
        xs = [np.array(v, dtype=float) for v in inputs]
        xs[position] = xs[position] + delta
        out = np.zeros(())
        run_kernel(op, out, *xs, **{k: v for k, v in attrs.items() if k != "shape"})
        return float(out)
    return (f(h) - f(-h)) / (2 * h)


@pytest.mark.parametrize("spec", LECTURES, ids=lambda p: p.stem)
def test_scalar_local_gradients_match_central_differences(spec):
    model = load_model(spec)
    _, values = all_values(model, {})
    vjps = LocalGrads(model.graph, values)
    checked = 0
    for src, dst, pos in multigraph(model.graph).edges(keys=True):
        n = model.graph[dst]
        if np.shape(values[src]) or np.shape(values[dst]) or model.graph[src].op == "const":
            continue
        edge = edge_local(model.graph, values, vjps, src, dst, pos)
        want = central_difference(n.op, [values[i] for i in n.inputs], n.attrs, pos)
        assert float(edge.value) == pytest.approx(want, rel=1e-6, abs=1e-8), (src, dst)
        checked += 1
    assert checked or "relu_vector" in spec.stem or "matmul" in spec.stem


@pytest.mark.parametrize("spec", LECTURES, ids=lambda p: p.stem)
def test_sum_over_paths_equals_graphcs_gradient(spec):
    model = load_model(spec)
    result = run_grads(model, {})
    for leaf, grad in result.grads.items():
        e = explain(model, {}, leaf)
        assert not e.truncated
        np.testing.assert_allclose(e.total, grad, rtol=1e-12, atol=1e-12, err_msg=leaf)
        np.testing.assert_allclose(sum(t.product for t in e.terms), grad, atol=1e-12)


MANY_OPS = """\
dtype: float64
inputs:
  x: {value: [[0.5, -1.0, 2.0], [1.5, 0.3, -0.7]]}
  y: {shape: [2], dtype: int64, value: [1, 0]}
params:
  W: {value: [[0.2, -0.1], [0.4, 0.3], [-0.5, 0.6]]}
nodes:
  h: tanh(x @ W)
  s: softplus(h) * leaky_relu(h, alpha=0.1)
  p: softmax(s)
  loss: softmax_cross_entropy(s, y) + mean(p * p) + huber(s, h)
"""


def test_sum_over_paths_through_tensors_and_fan_out(tmp_path):
    """Matmul and softmax edges (Jacobians), h and s used three times each: 9 paths to x."""
    spec = tmp_path / "many.yaml"
    spec.write_text(MANY_OPS)
    model = load_model(spec)
    result = run_grads(model, {})
    for leaf in ("x", "W"):
        e = explain(model, {}, leaf)
        assert len(e.terms) == 9 and not e.truncated
        np.testing.assert_allclose(e.total, result.grads[leaf], rtol=1e-12, atol=1e-14)


def test_explain_prints_the_lecture_chain_rule():
    done = run_cli("explain", SPECS / "lecture_cs231n_add_mul.yaml", "--wrt", "x")
    assert done.returncode == 0, done.stderr
    assert "path 1: f <- q <- x" in done.stdout
    assert "d f / d q = z  =  -4" in done.stdout and "d q / d x = 1  =  1" in done.stdout
    assert "product: -4 × 1 = -4" in done.stdout
    assert "sum over paths   = -4" in done.stdout and "(matches)" in done.stdout


def test_explain_adds_over_paths_and_caps_them(tmp_path):
    spec = tmp_path / "fan.yaml"
    spec.write_text("dtype: float64\ninputs:\n  x: 3\nnodes:\n  y: x * x + x\nloss: y\n")
    model = load_model(spec)
    e = explain(model, {}, "x")
    assert sorted(float(t.product) for t in e.terms) == [1.0, 3.0, 3.0]
    assert float(e.total) == 7.0 == float(e.grad)
    capped = explain(model, {}, "x", cap=2)
    assert capped.truncated and len(capped.terms) == 2 and capped.paths == 3
    paths, truncated = chain_paths(model.graph, "x", cap=5)
    assert len(paths) == 3 and not truncated


def test_explain_capped_tells_the_total_and_does_not_compare(tmp_path):
    # before: "2 paths from y to x" (the cap, not the total) and "(DOES NOT MATCH)" for a
    # sum that covered 2 of 3 paths on purpose
    spec = tmp_path / "fan.yaml"
    spec.write_text("dtype: float64\ninputs:\n  x: 3\nnodes:\n  y: x * x + x\nloss: y\n")
    done = run_cli("explain", spec, "--wrt", "x", "--max-paths", "2")
    assert done.returncode == 0, done.stderr
    assert "3 paths from y to x (showing the first 2)" in done.stdout
    assert "sum over paths   = 6" in done.stdout and "DOES NOT MATCH" not in done.stdout
    assert ("graphc's gradient = 7  (not compared: the sum covers 2 of 3 paths; "
            "--max-paths 3 compares all)") in done.stdout


def test_explain_counts_paths_it_does_not_list(tmp_path):
    # a chain of 20 diamonds: 2^20 paths, counted, not enumerated
    lines = ["dtype: float64", "inputs:", "  v0: 1", "nodes:"]
    lines += [f"  v{k + 1}: v{k} * 1 + v{k}" for k in range(20)]
    (tmp_path / "diamonds.yaml").write_text("\n".join(lines + ["loss: v20", ""]))
    model = load_model(tmp_path / "diamonds.yaml")
    e = explain(model, {}, "v0", cap=4)
    assert e.paths == 2 ** 20 and len(e.terms) == 4 and float(e.grad) == 2.0 ** 20


def test_explain_both_nan_is_a_match(tmp_path):
    # sqrt(-1) is NaN, so are the path sum and graphc's gradient: before, "DOES NOT MATCH", exit 1
    spec = tmp_path / "nan.yaml"
    spec.write_text("dtype: float64\ninputs:\n  x: -1\nnodes:\n  y: sqrt(x) * x\nloss: y\n")
    done = run_cli("explain", spec, "--wrt", "x")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "graphc's gradient = nan  (matches, NaN where graphc's is)" in done.stdout


def test_explain_rejects_an_unknown_leaf_with_a_suggestion():
    done = run_cli("explain", SPECS / "lecture_cs231n_add_mul.yaml", "--wrt", "zz")
    assert done.returncode == 2
    assert done.stderr.startswith("error: --wrt 'zz' is not a node") and "'z'" in done.stderr


# --- graphc plan --dot: forward and backward in one picture -------------------------------


def test_plan_picture_has_every_step_a_shape_on_every_data_edge_and_links():
    model, step, plan = spiral_step()
    g = parse_dot(plan_dot(step.graph, plan))
    nodes = all_nodes(g)
    shapes = {**{v: b.shape for v, b in plan.buffers.items()},
              **{v: p[1] for v, p in plan.persistent.items()}}
    assert {s.node for s in plan.steps} <= set(nodes)
    for s in plan.steps:
        assert nodes[s.node].get("class") == f'"{s.phase}"', s.node
    fills = {nodes[s.node].get("fillcolor") for s in plan.steps if s.phase == "backward"}
    assert len(fills) == 1 and fills.isdisjoint(
        {nodes[s.node].get("fillcolor") for s in plan.steps if s.phase == "forward"})
    data = links = 0
    for e in g.get_edges():
        src, dst, kind = unquote(e.get_source()), unquote(e.get_destination()), e.get("class")
        if kind == '"data"':
            assert e.get_label() == f'"{S.fmt(shapes[src])}"', (src, dst)
            data += 1
        else:
            assert kind == '"differentiates"' and forward_of(step.graph, src) == dst, (src, dst)
            assert e.get("style") == '"dashed"'
            links += 1
    assert data == sum(len(s.inputs) for s in plan.steps)
    assert links == sum(1 for s in plan.steps if forward_of(step.graph, s.node) in nodes)
    for p in ("W1", "b1", "W2", "b2"):
        assert f"writes {p}" in nodes[f"update:{p}"].get_label()


def test_plan_picture_colours_each_value_by_its_arena_region():
    """Values at the same offset share a border colour; each names its bytes."""
    model, step, plan = spiral_step()
    nodes = all_nodes(parse_dot(plan_dot(step.graph, plan)))
    by_offset = {}
    for v, b in plan.buffers.items():
        attrs = nodes[v]
        assert attrs.get("arena") == f'"[{b.offset}, {b.offset + b.bytes})"', v
        by_offset.setdefault(b.offset, set()).add(attrs.get("color"))
    assert all(len(colors) == 1 for colors in by_offset.values())
    assert len({c for cs in by_offset.values() for c in cs}) > 1


def test_plan_picture_labels_each_step_by_name_op_shape_step_writes_and_arena():
    """plan_dot writes a step's label from pieces escaped once each: the whole label reads
    as written out here, in this order, for every step."""
    model, step, plan = spiral_step()
    nodes = all_nodes(parse_dot(plan_dot(step.graph, plan)))
    shapes = {**{v: b.shape for v, b in plan.buffers.items()},
              **{v: p[1] for v, p in plan.persistent.items()}}
    writes = 0
    for s in plan.steps:
        label = f"{s.node}\n{s.op} {S.fmt(shapes[s.outputs[0]])}\nstep {s.index}"
        if s.phase == "update":
            label += f"\nwrites {s.inputs[0]}"
            writes += 1
        b = plan.buffers.get(s.outputs[0])
        if b is not None:
            label += f"\narena [{b.offset}, {b.offset + b.bytes})"
        assert nodes[s.node].get_label() == quote(label), s.node
    assert writes == 4


ODD_TEXT = st.text(alphabet=st.sampled_from(['a', '/', ':', '"', '\\', '\n', ' ', 'é']))


@given(ODD_TEXT, ODD_TEXT)
def test_dot_escapes_a_text_in_pieces_as_a_whole(head, rest):
    """A label escaped piece by piece reads as the whole escaped at once, and reads back
    (in DOT a backslash escapes a backslash or a quote; backslash n is a newline)."""
    assert quote(head + rest) == f'"{escape(head)}{escape(rest)}"'
    back = re.sub(r'\\(.)', lambda m: {"n": "\n"}.get(m[1], m[1]), escape(head + rest))
    assert back == head + rest


def test_plan_only_draws_the_sub_range():
    model, step, plan = spiral_step()
    a, b = parse_range(plan, "h..d:h/relu_grad")
    assert plan.steps[a].node == "h" and plan.steps[b].node == "d:h/relu_grad"
    nodes = all_nodes(parse_dot(plan_dot(step.graph, plan, "h..d:h/relu_grad")))
    drawn_steps = {n for n, node in nodes.items() if node.get("class") in
                   ('"forward"', '"backward"', '"update"')}
    assert drawn_steps == {s.node for s in plan.steps[a:b + 1]}
    outside = {n for n, node in nodes.items() if node.get("class") == '"external"'}
    read = {v for s in plan.steps[a:b + 1] for v in s.inputs}
    assert outside == {s.node for s in plan.steps[:a] + plan.steps[b + 1:]} & read
    with pytest.raises(SpecError, match="comes after"):
        parse_range(plan, "d:h/relu_grad..h")
    with pytest.raises(SpecError, match="did you mean 'h'"):
        parse_range(plan, "hh..loss")


def test_plan_cli_writes_dot_and_says_when_graphviz_is_missing(tmp_path):
    out = tmp_path / "plan.dot"
    done = run_cli("plan", SPECS / "spiral_mlp.yaml", "--dot", out, "--render",
                   env={"PATH": str(tmp_path), "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert "`dot` is not installed" in done.stderr and "dot -Tsvg" in done.stderr
    parse_dot(out.read_text())
    assert not out.with_suffix(".svg").exists()
    bad = run_cli("plan", SPECS / "spiral_mlp.yaml", "--only", "h..loss")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --only")


# --- rendering with Graphviz ---------------------------------------------------------------


@pytest.mark.skipif(not HAS_DOT, reason=NO_DOT)
def test_graphviz_renders_well_formed_svg(tmp_path):
    model, step, plan = spiral_step()
    lecture = load_model(SPECS / "lecture_cs231n_sigmoid_neuron.yaml")
    for name, text in (("plan", plan_dot(step.graph, plan, "h..loss")),
                       ("neuron", grad_dot(lecture, {}))):
        path = tmp_path / f"{name}.dot"
        path.write_text(text, encoding="utf-8")
        svg = render(path, "svg")
        root = ET.parse(svg).getroot()
        assert root.tag == f"{SVG_NS}svg"
        titles = {t.text for t in root.iter(f"{SVG_NS}title")}
        assert ("loss" if name == "plan" else "den") in titles


# --- graphc plan --memory ------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["spiral_mlp.yaml", "lecture_ng_linear_unit.yaml"])
def test_memory_svg_has_one_bar_per_buffer_at_its_place(spec):
    model = load_model(SPECS / spec)
    step = training_graph(model.graph, parse_optimizer(model.spec.train.get("optimizer")))
    plan = compile_plan(step.graph, {"batch": 8}, {model.graph.loss}, step.forward)
    root = ET.fromstring(memory_svg(plan, "t"))
    bars = [r for r in root.iter(f"{SVG_NS}rect") if r.get("class") == "buffer"]
    assert len(bars) == len(plan.buffers)
    step_w = (M.WIDTH - M.LEFT - M.RIGHT) / len(plan.steps)
    byte_h = (M.HEIGHT - M.TOP - M.BOTTOM) / plan.arena_bytes
    for r, b in zip(bars, plan.buffers.values()):
        assert r.find(f"{SVG_NS}title").text.startswith(f"{b.value} ")
        x, y, w, h = (float(r.get(k)) for k in ("x", "y", "width", "height"))
        assert x == pytest.approx(M.LEFT + b.first_step * step_w, abs=0.01)
        assert w == pytest.approx((b.last_step + 1 - b.first_step) * step_w, abs=0.01)
        assert y == pytest.approx(M.HEIGHT - M.BOTTOM - (b.offset + b.bytes) * byte_h, abs=0.01)
        assert h == pytest.approx(max(b.bytes * byte_h, 0.75), abs=0.01)
    text = " ".join(t.text or "" for t in root.iter(f"{SVG_NS}text"))
    for word in ("peak", "lower bound", "naive total"):
        assert word in text


# --- graphc train --plot -------------------------------------------------------------------


def test_train_plot_writes_curves_and_the_decision_boundary(tmp_path):
    done = run_cli("train", SPECS / "spiral_mlp.yaml", "--epochs", "2", "--plot",
                   tmp_path / "plots", "--out", tmp_path / "c.npz", "--json")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(open(tmp_path / "plots" / "history.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert all(0 <= float(r["accuracy"]) <= 1 and float(r["loss"]) > 0 for r in rows)
    if importlib.util.find_spec("matplotlib") is None:
        assert "matplotlib is not installed" in done.stderr
        assert (tmp_path / "plots" / "decision_boundary.csv").exists()
    else:
        for name in ("curves.png", "decision_boundary.png"):
            assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_matplotlib_the_numbers_are_csv(tmp_path, monkeypatch):
    from graphc import plots
    from graphc.train import train
    from graphc.trainconfig import load_dataset, parse_train
    monkeypatch.setattr(plots, "_matplotlib", lambda: None)
    model = load_model(SPECS / "spiral_mlp.yaml")
    cfg = parse_train(model, epochs=1)
    result = train(model, cfg, out=tmp_path / "c.npz")
    data = load_dataset(model, cfg).train
    written, with_mpl = plots.write_plots(tmp_path, model, result.history, data, cfg.metrics)
    assert not with_mpl
    assert [p.name for p in written] == ["history.csv", "decision_boundary.csv"]
    grid = list(csv.DictReader(open(tmp_path / "decision_boundary.csv")))
    assert len(grid) == plots.GRID ** 2 and {r["class"] for r in grid} <= {"0", "1", "2"}


# --- docs/img stays in sync ----------------------------------------------------------------


def _make_pictures():
    spec = importlib.util.spec_from_file_location("make_pictures",
                                                  REPO / "scripts" / "make_pictures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_pictures_are_in_sync():
    for name, text in _make_pictures().sources().items():
        committed = REPO / "docs" / "img" / name
        assert committed.read_text(encoding="utf-8") == text, (
            f"docs/img/{name} is stale: run python scripts/make_pictures.py")


def test_committed_renders_are_well_formed_svg():
    for name in ("lecture_add_mul.svg", "spiral_plan.svg", "spiral_memory.svg"):
        assert ET.parse(REPO / "docs" / "img" / name).getroot().tag == f"{SVG_NS}svg"


@pytest.mark.skip(reason="Graphviz's SVG output varies by version; the DOT sources beside "
                         "them are compared instead (test_committed_pictures_are_in_sync)")
def test_rendered_svgs_match_graphviz_output():
    """Not compared on purpose; see the skip reason."""
