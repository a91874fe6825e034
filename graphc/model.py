"""A loaded model: spec, forward graph, persistent values, and runs of compiled plans.

`load_model` is the front half of every command (spec -> validated graph);
`run_grads` is one forward + backward pass; `Runner` caches one compiled
executor per batch size, as the plan depends on the bound `batch` dim.
"""
from __future__ import annotations

from collections import ChainMap
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import numpy as np

from . import shapes as S
from .autodiff import check_params_reach_loss, grad_graph, path_nodes
from .data import label_outside
from .errors import SpecError, short
from .executor import Executor
from .initializers import initialize
from .ir import RNG_KEY, Graph, build_graph
from .ops import OPS
from .plan import ALIGN
from .remat import NONE, MemoryPolicy, remat_plan
from .spec import Spec, load_spec


@dataclass
class Model:
    """A spec compiled in one mode (`graph`), and the persistent values of every mode."""
    spec: Spec
    graph: Graph
    store: dict
    mode: str = "train"

    @property
    def rng_key(self) -> Optional[np.ndarray]:
        """The int64 [seed, step] that random ops (dropout) read, which a trainer writes
        before each step; None where no op is random."""
        return self.store.get(RNG_KEY)

    def in_mode(self, mode: str) -> "Model":
        """The same model, sharing its store, compiled in `mode` (train or eval): itself
        where no op of the spec differs between the modes, so such a spec runs one graph."""
        if mode == self.mode or not any(OPS[n.op].modes for n in self.spec.nodes):
            return self
        return Model(self.spec, build_graph(self.spec, mode), self.store, mode)

    @property
    def fed_inputs(self) -> list:
        """Inputs the data feeds: those declared without a value."""
        return [n.name for n in self.graph.leaves("input")
                if self.spec.leaves[n.name].value is None]


def load_model(path, seed: Optional[int] = None, dtype: Optional[str] = None,
               mode: str = "train") -> Model:
    """The spec at `path` as a graph of `mode` with initialized params and state (the
    spec's seed, or `seed`); `dtype` replaces the spec's float dtype."""
    spec = load_spec(path, dtype=dtype)
    graph = build_graph(spec, mode)
    return Model(spec, graph, init_store(spec, graph, spec_seed(spec, seed)), mode)


def spec_seed(spec: Spec, override: Optional[int] = None) -> int:
    if override is not None:
        if not S.is_whole(override) or override < 0:
            raise SpecError(f"seed must be a non-negative integer, got {short(override)}")
        return int(override)
    seed = spec.train.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SpecError(f"train.seed is {short(seed)}, expected a non-negative integer",
                        mark=spec.train.mark_of("seed"))
    return seed


def init_store(spec: Spec, graph: Graph, seed: int) -> dict:
    """Persistent values: params and state (value or initializer, in file order; state
    without one starts at zeros), given inputs, and the generator key [seed, step 0]
    where an op is random."""
    rng = np.random.default_rng(seed)
    store = {}
    if any(OPS[n.op].random for n in spec.nodes):
        store[RNG_KEY] = np.array([seed, 0], dtype=np.int64)
    for leaf in spec.leaves.values():
        if leaf.value is not None:
            store[leaf.name] = leaf.value.astype(leaf.dtype)
        elif leaf.kind == "state" and leaf.init is None:
            store[leaf.name] = np.zeros(leaf.shape, dtype=leaf.dtype)
        elif leaf.kind in ("param", "state"):
            if S.symbols(leaf.shape):
                raise SpecError(f"parameter shape {S.fmt(leaf.shape)} has symbolic dims",
                                mark=leaf.mark, node=leaf.name,
                                hint="parameters need fixed sizes; symbolic dims are for inputs")
            store[leaf.name] = initialize(leaf.init, leaf.shape, leaf.dtype, rng,
                                          mark=leaf.mark, node=leaf.name)
    pack(store, [n.name for n in graph.leaves("param")])
    return store


def pack(store: dict, names: list, align: int = ALIGN) -> None:
    """Replace the store's arrays of `names` (values kept) by views of one new array, in
    that order, each starting `align` bytes (plan.aligned) after the one before, as the
    planner lays gradients side by side: an optimizer then updates every param and state
    with one NumPy call per operation (backends/numpy/flat.flat_updates). Zeros pad
    the gaps. Arrays of mixed dtypes are left as they are."""
    arrays = [store[n] for n in names]
    if len({a.dtype for a in arrays}) != 1:
        return
    sizes = [-(-a.nbytes // align) * align for a in arrays]
    flat = np.zeros(sum(sizes) // arrays[0].itemsize, dtype=arrays[0].dtype)
    at = 0
    for name, a, size in zip(names, arrays, sizes):
        view = flat[at:at + a.size].reshape(a.shape)
        view[...] = a
        store[name], at = view, at + size // a.itemsize


def zero_state(model: "Model", graph: Graph, states: Mapping[str, tuple]) -> None:
    """Zeros for the state leaves of `graph` that the spec does not declare (an optimizer's),
    each kind (every param's `m`, say: `states` maps param -> its state leaves) packed in
    param order, as the params are; a kind not of its params' shapes (Adam's step counts)
    with no gaps."""
    store = model.store
    for n in graph.leaves("state"):
        if n.name not in model.spec.leaves:
            store[n.name] = np.zeros(n.shape, dtype=n.dtype)
    for kind in zip(*states.values()):
        like = all(store[s].shape == store[p].shape for s, p in zip(kind, states))
        pack(store, list(kind), ALIGN if like else store[kind[0]].itemsize)


def bind_dims(graph: Graph, feeds: Mapping[str, np.ndarray]) -> dict:
    """Symbolic dims from the fed arrays' shapes; every use of a dim must agree."""
    dims = {}
    for name, arr in feeds.items():
        node = graph[name]
        want = node.shape
        if len(want) != arr.ndim:
            raise SpecError(f"input '{name}' expects shape {S.fmt(want)}, "
                            f"got an array of shape {list(arr.shape)}", mark=node.mark,
                            node=name)
        for d, got in zip(want, arr.shape):
            if isinstance(d, str):
                if dims.setdefault(d, got) != got:
                    raise SpecError(f"dim '{d}' is {dims[d]} in one input and {got} in "
                                    f"'{name}'", mark=node.mark, node=name)
            elif d != got:
                raise SpecError(f"input '{name}' expects shape {S.fmt(want)}, "
                                f"got an array of shape {list(arr.shape)}", mark=node.mark,
                                node=name)
    return dims


def label_classes(graph: Graph) -> dict:
    """{label input: (number of classes, the node reading it)} for every forward op that takes
    class labels (or embedding ids) against an axis of fixed size (`OpDef.label_range`:
    the scores' class axis, the embedding table's rows)."""
    out: dict = {}
    for n in graph.nodes.values():
        if OPS[n.op].group != "forward":
            continue
        source, axis = OPS[n.op].label_range
        scores = graph[n.inputs[source]].shape
        for pos in OPS[n.op].labels:
            label = graph[n.inputs[pos]]
            if scores and S.is_int(scores[axis]) and label.op == "input":
                if label.name not in out or scores[axis] < out[label.name][0]:
                    out[label.name] = (scores[axis], n.name)
    return out


def check_labels(graph: Graph, classes: Mapping, values: Mapping) -> None:
    """SpecError, at the label input's line, for the first label of `values` outside
    0..K-1 of `classes` (label_classes): it would read another row's score, or past the end."""
    for name, (k, reader) in classes.items():
        if name not in values:
            continue
        arr = np.asarray(values[name])
        index = label_outside(arr, k)
        if index is not None:
            op = OPS[graph[reader].op]
            at = f" at index {list(index)}"
            raise SpecError(f"{op.labels_are.out_of_range(arr[index], k, at)}: '{reader}' "
                            f"({op.name}) reads it against {_read_against(graph, reader)}",
                            mark=graph[name].mark, node=name, hint=op.labels_are.hint(name))


def labels_in_range(held: Callable[[str], np.ndarray], fed, classes: Mapping) -> Callable:
    """`in_range(feeds)`: whether every fed label of `classes` (label_classes), as the
    plan holds it after feeding (`held(name)`: copied into its input buffer, or the fed
    array itself where the step reads it in place), lies in 0..K-1. The step pays one
    argmax per integer array seen as unsigned (a negative label is then huge; the view is
    made once per array) where check_labels pays four calls; a feed of another dtype than
    its buffer's (a cast may wrap) is checked as fed."""
    names = [(name, k) for name, (k, _) in classes.items() if name in fed and held(name).size]
    seen: dict = {}         # name -> (the array holding it, its unsigned view)

    def in_range(feeds: Mapping[str, np.ndarray]) -> bool:
        for name, k in names:
            arr, given = held(name), feeds[name]
            if name not in seen or seen[name][0] is not arr:
                seen[name] = (arr, _unsigned(arr))
            view = seen[name][1]
            if view.dtype.kind != "u" or given.dtype != arr.dtype:
                if label_outside(given, k) is not None:
                    return False
            elif view.item(view.argmax()) >= k:    # a third of np.maximum.reduce's call cost
                return False
        return True
    return in_range


def _unsigned(arr: np.ndarray) -> np.ndarray:
    """A flat view of an integer array as unsigned (negative values become huge); other
    arrays as they are."""
    return arr.reshape(-1).view(f"u{arr.itemsize}") if arr.dtype.kind == "i" else arr


def _read_against(graph: Graph, reader: str) -> str:
    """What a label indexes: "3 class scores", or "the 10 rows of 'W'" (embedding ids)."""
    op = OPS[graph[reader].op]
    source, axis = op.label_range
    table = graph[graph[reader].inputs[source]]
    return op.labels_are.against.format(size=table.shape[axis], table=table.origin or table.name)


class Runner:
    """One compiled executor per bound dims (batch size), sharing the model's store.

    `run` is where values enter a model outside training: it binds the dims and checks
    class labels (fed or stored) against the class count, for every command and API.
    `memory` is the rematerialization policy each plan is compiled under (remat.py)."""

    def __init__(self, graph: Graph, store: dict, keep=(), forward=None, reuse: bool = True,
                 memory: MemoryPolicy = NONE, together=()):
        self.graph, self.store, self.keep, self.forward = graph, store, tuple(keep), forward
        self.reuse, self.memory, self.together = reuse, memory, tuple(together)
        self.labels = label_classes(graph)
        self.cache: dict = {}        # bound dims -> executor
        self.by_shapes: dict = {}    # the feeds' shapes -> executor, skipping bind_dims
        self.prepared: dict = {}     # the feeds' names and shapes -> their step path (run)

    def executor(self, dims: Mapping[str, int]) -> Executor:
        key = tuple(sorted(dims.items()))
        if key not in self.cache:
            plan = remat_plan(self.graph, dims, self.keep, self.forward, self.reuse,
                              self.memory, self.together).plan
            self.cache[key] = Executor(plan, self.store)
        return self.cache[key]

    def run(self, feeds: Mapping[str, np.ndarray]) -> Executor:
        """Bind dims from the feeds' shapes, copy them in, check the labels, run the step.
        Everything but the copies, the label check and the step is done once per shapes."""
        key = tuple([(name, arr.shape) for name, arr in feeds.items()])    # a list: faster
        run = self.prepared.get(key)
        if run is None:
            run = self.prepared[key] = self._prepare(feeds)
        return run(feeds)

    def _prepare(self, feeds: Mapping[str, np.ndarray]) -> Callable[[Mapping], Executor]:
        """The step path for feeds of these names and shapes: feed, label check, run."""
        check_labels(self.graph, self.labels, ChainMap(feeds, self.store))
        ex = self.executor(bind_dims(self.graph, feeds))
        self._check_fed(ex, feeds)
        feed, run_steps = ex.feeder(tuple(feeds)), ex.run_steps
        in_range = labels_in_range(ex.__getitem__, feeds, self.labels)
        stored = {name: c for name, c in self.labels.items() if name not in feeds}

        def run(feeds: Mapping[str, np.ndarray]) -> Executor:
            feed(feeds)
            if not in_range(feeds):
                check_labels(self.graph, self.labels, feeds)
            if stored:
                check_labels(self.graph, stored, self.store)
            run_steps()
            return ex
        return run

    def _check_fed(self, ex: Executor, feeds: Mapping[str, np.ndarray]) -> None:
        """SpecError for an input the plan reads that is neither fed nor stored: its buffer
        would hold zeros (or the last batch), never what the caller meant."""
        for name, (op, shape, _, _) in ex.plan.persistent.items():
            stored = name in self.store and self.store[name].shape == shape
            if op == "input" and name not in feeds and not stored:
                raise SpecError(f"input '{name}' is not fed: the computation reads it",
                                mark=self.graph[name].mark, node=name,
                                hint=f"pass an array for '{name}'")

    def run_rows(self, arrays: Mapping[str, np.ndarray], rows: np.ndarray) -> Executor:
        """`run` on the batch `{k: v[rows]}`, gathered into the input buffers without a copy."""
        key = tuple((name, (len(rows),) + arr.shape[1:]) for name, arr in arrays.items())
        ex = self.by_shapes.get(key)
        if ex is None:
            views = {name: arr[:len(rows)] for name, arr in arrays.items()}
            ex = self.executor(bind_dims(self.graph, views))
            self._check_fed(ex, arrays)
            self.by_shapes[key] = ex
        ex.feed_rows(arrays, rows)
        ex.run()
        return ex


@dataclass(frozen=True)
class GradResult:
    loss: float
    grads: dict       # leaf -> array
    values: dict      # node -> array (with everything=True)
    node_grads: dict  # node -> array (with everything=True)


def differentiable_leaves(model: Model) -> list:
    return [n.name for n in model.graph.leaves() if n.op in ("input", "param")
            and not n.dtype.startswith("int")]


def run_grads(model: Model, feeds: Mapping[str, np.ndarray], everything=False) -> GradResult:
    """One forward + backward pass: d loss / d every float leaf (zeros where no path)."""
    graph = model.graph
    wrt = differentiable_leaves(model)
    gg = grad_graph(graph, wrt)
    check_params_reach_loss(graph, gg.grads)
    user_nodes = [n for n, node in graph.nodes.items()
                  if (not node.is_leaf and node.role == "forward") or n in wrt]
    keep = {graph.loss} | {g for g in gg.grads.values() if g}
    if everything:
        keep |= set(graph.nodes)
    runner = Runner(gg.graph, model.store, keep, forward=set(graph.nodes))
    ex = runner.run(feeds)
    grads = {w: _copy(ex, gg.grads[w], graph[w]) for w in wrt}
    values, node_grads = {}, {}
    if everything:
        on_path = path_nodes(graph, wrt)
        for n in user_nodes:
            values[n] = np.array(ex[n])
            if n in on_path and gg.grads.get(n):
                node_grads[n] = np.array(ex[gg.grads[n]])
    return GradResult(float(ex[graph.loss]), grads, values, node_grads)


def _copy(ex: Executor, grad_node: Optional[str], leaf) -> np.ndarray:
    if grad_node is None:
        return np.zeros(S.bind(leaf.shape, ex.plan.dims), dtype=leaf.dtype)
    return np.array(ex[grad_node])
