"""Compiling in near-linear time (issue 14): each fast pass against a slow oracle, and a
long chain through `check`'s passes with no quadratic helper and no deep recursion.

No test here is timed: the oracles are the quadratic or NetworkX versions the passes
replaced (same answers), and the long-chain tests make the old helpers fail loudly.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest
from hypothesis import given, settings, strategies as st

from graphc import arena as A
from graphc import plan as P
from graphc.autodiff import check_params_reach_loss, grad_graph, path_nodes, trained_params
from graphc.ir import build_graph
from graphc.topo import reach, topological_order
from graphc.model import load_model
from graphc.spec import load_spec

SPECS = Path(__file__).resolve().parents[1] / "specs"


@st.composite
def dags(draw, max_nodes=30):
    """name -> predecessors, names in a shuffled file order, edges only from lower to
    higher hidden rank (so acyclic)."""
    n = draw(st.integers(1, max_nodes))
    rank = draw(st.permutations(range(n)))
    names = [f"v{r}" for r in rank]
    preds = {}
    for name, r in zip(names, rank):
        earlier = [f"v{q}" for q in range(r)]
        preds[name] = draw(st.lists(st.sampled_from(earlier), max_size=3)) if earlier else []
    return preds


def _digraph(preds) -> nx.DiGraph:
    g = nx.DiGraph()
    g.add_nodes_from(preds)
    g.add_edges_from((p, n) for n, ps in preds.items() for p in ps)
    return g


@settings(max_examples=60, deadline=None)
@given(dags())
def test_topological_order_is_networkx_lexicographic_order_by_position(preds):
    position = {n: i for i, n in enumerate(preds)}
    expected = list(nx.lexicographical_topological_sort(_digraph(preds),
                                                        key=position.__getitem__))
    assert topological_order(preds) == expected


def test_topological_order_of_a_cycle_is_none():
    assert topological_order({"a": ["c"], "b": ["a"], "c": ["b"], "d": []}) is None
    assert topological_order({"a": ["a"]}) is None


def test_reach_follows_edges_from_all_roots_in_one_sweep():
    later = {"x": ["h"], "h": ["loss"], "W": ["h"], "y": ["loss"], "loss": []}
    assert reach(later, ["W"]) == {"W", "h", "loss"}
    assert reach(later, ["W", "y"]) == {"W", "y", "h", "loss"}
    assert reach(later, []) == set()


@pytest.mark.parametrize("name", ["spiral_mlp", "moons_logistic", "lecture_cs231n_matmul"])
def test_path_nodes_is_descendants_of_the_leaves_and_ancestors_of_the_loss(name):
    graph = load_model(SPECS / f"{name}.yaml").graph
    wrt = [n.name for n in graph.nodes.values() if n.is_leaf and not n.dtype.startswith("int")]
    g = graph.digraph()
    expected = (nx.ancestors(g, graph.loss) | {graph.loss}) & \
        set(wrt).union(*(nx.descendants(g, w) for w in wrt))
    assert path_nodes(graph, wrt) == expected


def quadratic_memory_order(preds, inputs, sizes, pinned, rank) -> list:
    """The order before issue 14: every step scans every ready node for the best gain."""
    g = _digraph(preds)
    indeg = dict(g.in_degree())
    data_inputs = {n: [p for p in set(inputs.get(n, ())) if p in sizes] for n in g}
    readers = {n: 0 for n in g}
    for n in g:
        for p in data_inputs[n]:
            readers[p] += 1
    ready, order = {n for n, d in indeg.items() if d == 0}, []
    while ready:
        def gain(n):
            freed = sum(sizes[p] for p in data_inputs[n] if readers[p] == 1 and p not in pinned)
            return (sizes.get(n, 0) - freed, rank[n])
        n = min(ready, key=gain)
        ready.remove(n)
        order.append(n)
        for p in data_inputs[n]:
            readers[p] -= 1
        for s in g.successors(n):
            indeg[s] -= 1
            if indeg[s] == 0:
                ready.add(s)
    return order


@settings(max_examples=200, deadline=None)
@given(dags(max_nodes=15), st.data())
def test_memory_order_over_a_heap_is_the_quadratic_scan(preds, data):
    names = list(preds)
    sizes = {n: data.draw(st.sampled_from([0, 64, 128, 512])) for n in names
             if data.draw(st.booleans())}
    pinned = set(data.draw(st.lists(st.sampled_from(names), max_size=3)))
    rank = {n: i for i, n in enumerate(names)}
    # most predecessors are data inputs; the rest are ordering edges (`after`) alone
    inputs = {n: tuple(p for p in ps if data.draw(st.integers(0, 3))) for n, ps in preds.items()}
    assert A.memory_order(preds, inputs, sizes, pinned, rank) == \
        quadratic_memory_order(preds, inputs, sizes, pinned, rank)


def test_sweep_offsets_reuses_a_freed_hole():
    blocks = [A.Block(("a",), 100, 0, 2), A.Block(("b",), 50, 1, 3), A.Block(("c",), 70, 3, 4)]
    top, offsets = A.sweep_offsets(blocks)
    # a at 0, b above it at 100; a dies after step 2, so c (step 3) fits in a's 100 bytes
    assert offsets == {("a",): 0, ("b",): 100, ("c",): 0}
    assert top == 150


def test_sweep_offsets_picks_the_smallest_hole_that_fits():
    blocks = [A.Block(("big",), 300, 0, 1), A.Block(("keep1",), 200, 0, 9),
              A.Block(("small",), 100, 0, 1), A.Block(("keep2",), 10, 0, 9),
              A.Block(("new",), 90, 2, 3)]
    top, offsets = A.sweep_offsets(blocks)
    # at step 0, by size: big 0-300, keep1 300-500, small 500-600, keep2 600-610;
    # at step 2 the holes are [0, 300) and [500, 600): the 90 bytes go to the smaller one
    assert offsets == {("big",): 0, ("keep1",): 300, ("small",): 500, ("keep2",): 600,
                       ("new",): 500}
    assert top == 610


def _overlapping_pairs(blocks, offsets) -> list:
    return [(a, b) for i, a in enumerate(blocks) for b in blocks[i + 1:]
            if a.first <= b.last and b.first <= a.last
            and offsets[a.values] < offsets[b.values] + b.bytes
            and offsets[b.values] < offsets[a.values] + a.bytes]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 8), st.sampled_from([64, 128, 320])),
                min_size=1, max_size=40))
def test_sweep_offsets_never_overlaps_live_blocks(spans):
    blocks = [A.Block((f"v{i}",), nbytes, first, first + length)
              for i, (first, length, nbytes) in enumerate(spans)]
    top, offsets = A.sweep_offsets(blocks)
    assert not _overlapping_pairs(blocks, offsets)
    assert A.peak_bytes(blocks) <= top == max(offsets[b.values] + b.bytes for b in blocks)


def test_many_blocks_skip_the_offline_orders_and_stack_lifetimes_meet_the_bound(monkeypatch):
    """Nested lifetimes, as a deep MLP's activations (forward k ... backward k): over the
    budget only the sweep runs, and it packs them at the lower bound."""
    n = 600
    blocks = [A.Block((f"v{k}",), 64 * (1 + k % 3), k, 2 * n - k) for k in range(n)]
    assert n * n > A.OFFLINE_BUDGET

    def offline(_):
        raise AssertionError("an offline order ran past the budget")
    monkeypatch.setattr(A, "_place", offline)
    top, offsets = A.assign_offsets(blocks)
    assert top == A.peak_bytes(blocks)
    assert not _overlapping_pairs(blocks, offsets)


def _plan_of(buffers) -> P.Plan:
    return P.Plan(None, {}, (), {b.value: b for b in buffers}, {}, 0, 0, 0)


def _pairwise_clash(buffers) -> bool:
    """The verifier's rule checked on every pair, as before issue 14."""
    for i, a in enumerate(buffers):
        for b in buffers[i + 1:]:
            share = a.offset < b.offset + b.bytes and b.offset < a.offset + a.bytes
            meet = a.first_step <= b.last_step and b.first_step <= a.last_step
            pair = (a.in_place_of == b.value and a.first_step == b.last_step) or \
                   (b.in_place_of == a.value and b.first_step == a.last_step)
            if share and meet and not pair:
                return True
    return False


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 4), st.integers(1, 3),
                          st.booleans()), min_size=1, max_size=12))
def test_the_sweep_overlap_check_agrees_with_every_pair(rows):
    """One buffer per step (each step writes one value); some written in place of the
    buffer before them at the step it dies."""
    buffers = []
    for step, (slot, length, size, in_place) in enumerate(rows):
        prev = buffers[-1] if buffers else None
        if in_place and prev is not None and prev.last_step >= step:
            prev = buffers[-1] = P.Buffer(prev.value, (), "float32", prev.offset, prev.bytes,
                                          prev.first_step, step, prev.in_place_of)
            buffers.append(P.Buffer(f"v{step}", (), "float32", prev.offset, prev.bytes, step,
                                    step + length, prev.value))
        else:
            buffers.append(P.Buffer(f"v{step}", (), "float32", 64 * slot, 64 * size, step,
                                    step + length))
    plan = _plan_of(buffers)
    if _pairwise_clash(buffers):
        with pytest.raises(Exception, match="overlap while both live"):
            P._check_disjoint(plan)
    else:
        P._check_disjoint(plan)


def chain_spec(nodes: int) -> str:
    lines = ["inputs:", "  x: [batch, 4]", "params:", "  W: [4, 4]", "nodes:", "  h0: x @ W"]
    lines += [f"  h{i}: tanh(h{i - 1})" for i in range(1, nodes - 1)]
    return "\n".join(lines + [f"  loss: mean(h{nodes - 2})"]) + "\n"


def test_a_20000_node_chain_checks_without_networkx_searches_or_recursion(tmp_path,
                                                                          monkeypatch):
    """`check`'s passes over a long chain: the NetworkX searches the issue found quadratic
    (a cycle search on every check, descendants per leaf) are never called, and nothing
    recurses per node (Python's default limit of 1000 frames stays)."""
    path = tmp_path / "chain.yaml"
    path.write_text(chain_spec(20_000))
    for helper in ("find_cycle", "descendants", "ancestors", "lexicographical_topological_sort"):
        monkeypatch.setattr(nx, helper, _refuse(helper))
    limit = sys.getrecursionlimit()
    graph = build_graph(load_spec(path))
    gg = grad_graph(graph, trained_params(graph))
    check_params_reach_loss(graph, gg.grads)
    assert sys.getrecursionlimit() == limit <= 10_000     # not raised to get through
    assert len(graph.nodes) == 20_002                      # 2 leaves, 20,000 nodes
    assert gg.grads["W"] is not None


def _refuse(name):
    def refused(*args, **kwargs):
        raise AssertionError(f"{name} called")
    return refused


def test_a_cycle_is_still_named_by_its_path(tmp_path):
    path = tmp_path / "cycle.yaml"
    path.write_text("inputs:\n  x: [3]\nnodes:\n  a: relu(b)\n  b: tanh(a)\n  loss: sum(a)\n")
    with pytest.raises(Exception, match=r"cycle: a -> b -> a"):
        build_graph(load_spec(path))


def _marked(value):
    """A loaded YAML value with every mark it carries, for comparing two loaders."""
    if isinstance(value, dict):
        return {k: (_marked(v), value.key_marks[k], value.value_marks[k])
                for k, v in value.items()}, value.mark
    if isinstance(value, list):
        return [_marked(v) for v in value], value.mark, list(value.marks)
    return value, type(value)


@pytest.mark.parametrize("spec", sorted(SPECS.glob("*.yaml")), ids=lambda p: p.stem)
@pytest.mark.parametrize("loader", ["_FastLoader", "_ComposedLoader"])
def test_libyaml_events_load_what_pyyaml_loads_with_the_same_marks(spec, loader):
    from graphc import yamlload
    text = spec.read_text()
    fast = yamlload._parse(getattr(yamlload, loader), text, spec.name)
    assert _marked(fast) == _marked(yamlload._parse(yamlload._Loader, text, spec.name))


def _loaded(text):
    from graphc.yamlload import load_yaml
    try:
        return _marked(load_yaml(text, "f.yaml"))
    except Exception as exc:            # noqa: BLE001 - the error is what is compared
        return repr(exc)


# texts libyaml's composer takes (shallow, no anchors) that break a limit or a rule, and
# texts it must not take: nesting past what its C recursion survives, anchors, quotes
# beside brackets, lines too long to bound the nesting
C_COMPOSED = ["[" * 150 + "]" * 150, "".join(" " * i + "-\n" for i in range(120)),
              "- 1\n" * 250_001, "a: 1\na: 2\n", "a: !!float abc\n",
              "a: {b: [c, d]}  # [\n", "a: !!binary aGk=\n", "{1: a}\n", "a: *x\n"]
PYTHON_COMPOSED = ["[" * 100_000 + "]" * 100_000, "[\n" * 60_000 + "]\n" * 60_000,
                   "a: &x [1]\nb: *x\n", "a: ['[', 2]\n", "a: [1, 2\n",
                   "a: " + "b" * 1200 + "\n"]


@pytest.mark.parametrize("text", C_COMPOSED + PYTHON_COMPOSED, ids=lambda t: t[:24])
def test_a_text_loads_as_the_event_by_event_loaders_load_it(text, monkeypatch):
    """Values, marks and errors are those of the loaders before libyaml composed nodes;
    100,000 nested brackets are an error, not a crash in libyaml's C recursion."""
    from graphc import yamlload
    loaded = _loaded(text)
    assert yamlload._shallow(text) == (text in C_COMPOSED)
    monkeypatch.setattr(yamlload, "_shallow", lambda text: False)
    assert loaded == _loaded(text)


def test_libyaml_composes_a_large_plain_spec(monkeypatch):
    """The 100,000-node chain's text goes through libyaml's composer, not the Python one."""
    from graphc import yamlload
    monkeypatch.setattr(yamlload, "_FastLoader", None)
    assert len(yamlload.load_yaml(chain_spec(100_000), "chain.yaml")["nodes"]) == 100_000


@pytest.mark.parametrize("spec", ["spiral_mlp", "spiral_bn_dropout", "sort_transformer"])
def test_the_allreduce_orders_after_it_every_reader_that_does_not_feed_it(spec):
    """Data-parallel steps: the readers of the loss and gradients that are no NetworkX
    ancestor of the allreduce follow it, and none of its ancestors does (the sweep
    `_allreduce` uses in place of nx.ancestors gives the same edges)."""
    from graphc.optim import SYNC, training_graph
    from graphc.trainconfig import parse_optimizer
    model = load_model(SPECS / f"{spec}.yaml")
    raw = model.spec.train
    step = training_graph(model.graph, parse_optimizer(raw.get("optimizer"),
                                                       raw.mark_of("optimizer")), synced=True)
    g = step.graph
    feeding, readers = nx.ancestors(g.digraph(), SYNC), g.consumers()
    expected = {(SYNC, r) for v in g[SYNC].inputs[1:] for r in readers[v]
                if r != SYNC and r not in feeding}
    assert expected and {(a, b) for a, b in g.after if a == SYNC} == expected


def test_check_and_plan_do_not_import_networkx(tmp_path):
    """NetworkX (~0.1 s of start-up) loads only for a cycle's path, `explain` and
    `predict`: `graphc check` and `graphc plan --dot` run without it."""
    code = """
import sys
from graphc.cli import main
spec, dot = sys.argv[1:]
for args in (["check", spec], ["plan", spec, "--dot", dot]):
    try:
        main(args)
    except SystemExit as stop:
        assert not stop.code, stop.code
print("networkx" in sys.modules)
"""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code, str(SPECS / "spiral_mlp.yaml"),
                           str(tmp_path / "plan.dot")], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(root)}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "plan.dot").exists()
    assert done.stdout.strip().splitlines()[-1] == "False"


def _parsed(nodes) -> list:
    """Node specs with the fields their equality leaves out (marks, origin)."""
    return [(n.name, n.op, n.inputs, dict(n.attrs), n.mark, n.input_marks, n.origin)
            for n in nodes]


# (an expression, another of the same form with other names), and expressions the form
# cache must not share: a callee that is no name, keywords, `__`, the node's own name
SAME_FORM = [("tanh(h1)", "tanh(q7)"), ("relu(h1 @ W2 + b2)", "relu(zz @ Wq + bb)"),
             ("  relu(h12 @ W2 + b2)", "  relu(abc @ Wz + b3)"), ("a*a + b", "c*c + d"),
             ("x ** 2 - 0.5 * x", "y ** 2 - 0.5 * y"), ("maximum(a, b)", "maximum(c, d)"),
             ("-x", "-y"), ("x", "y"), ("2.5", "2.5"), ("batch_norm(h)", "batch_norm(k)"),
             ("x @ W + x @ W", "y @ V + y @ V"), ("1e-3 * x", "1e-3 * y")]
NOT_SHARED = [("(relu)(x)", "(tanh)(x)"), ("maximum(a, b)", "maximum(c, c)"),
              ("tanh(hh)", "tanh(h1)"),
              ("relu(x) + None", "relu(x) + True"), ("tanh(__x)", "tanh(__y)"),
              ("sum(x, axis=1)", "sum(x, axis=0)"), ("x[0]", "y[1]")]


@pytest.mark.parametrize("first, second", SAME_FORM + NOT_SHARED)
def test_an_expression_of_a_parsed_form_parses_as_the_parser_reads_it(first, second):
    """The form cache gives what ast + the parser give: names, ops, inputs, attrs, marks,
    input marks; for errors, the same error."""
    from graphc import expr as E
    from graphc.errors import Mark
    from graphc.exprforms import FORMS
    mark = Mark("f.yaml", 3, 7)

    def parse(text):
        try:
            return _parsed(E.parse_expression(text, "hh", mark, quoted=True))
        except Exception as exc:        # noqa: BLE001 - the error is what is compared
            return repr(exc)
    FORMS.clear()
    expected = parse(second)
    FORMS.clear()
    parse(first)
    assert parse(second) == expected


@pytest.mark.parametrize("first, second", SAME_FORM)
def test_an_expression_of_a_parsed_form_is_not_parsed_again(first, second, monkeypatch):
    """A 100,000-line chain parses one `tanh(_)`: the parser runs once per form."""
    from graphc import expr as E
    from graphc.errors import Mark
    from graphc.exprforms import FORMS
    FORMS.clear()
    E.parse_expression(first, "hh", Mark("f.yaml", 1, 1))
    monkeypatch.setattr(E, "_Parser", _refuse("the parser"))
    assert E.parse_expression(second, "hh", Mark("f.yaml", 2, 1))[-1].name == "hh"


def test_the_verifier_trusts_only_the_same_nodes_over_the_same_inputs():
    """verify_graph(g, trusted=t) skips re-inferring a node only where t holds that very
    node over those very inputs: a node rebuilt with a wrong shape, or a trusted node whose
    input was swapped for one of another shape, is still caught."""
    from dataclasses import replace

    from graphc.ir import Graph, Node, VerifyError, verify_graph
    graph = build_graph(load_spec(SPECS / "spiral_mlp.yaml"))
    verify_graph(graph, trusted=graph)
    name, node = next((k, n) for k, n in graph.nodes.items() if n.op == "relu")
    wrong = replace(node, shape=(*node.shape, 1))
    x = node.inputs[0]              # an input of another shape, itself consistent
    leaf = Node(x, "input", (), {"shape": wrong.shape}, wrong.shape)
    for nodes, broken in (({**graph.nodes, name: wrong}, name), ({**graph.nodes, x: leaf}, name)):
        with pytest.raises(VerifyError, match=f"{broken} .relu. has shape"):
            verify_graph(Graph(nodes, graph.loss, graph.outputs, graph.dtype, graph.after),
                         trusted=graph)
