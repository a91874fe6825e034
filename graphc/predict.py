"""Prediction: the eval-mode forward pass of a spec's `outputs` on new samples.

Only the nodes the outputs depend on are compiled (`forward_graph`, a pruned copy of
the forward graph, planned and run by the usual planner and executor), so no label
and no loss is needed. Samples are read from .npz, .npy or .csv files (`read_inputs`)
or taken from in-memory arrays (`fed_arrays`), fitted to the inputs by graphc/data.py's
checks, normalized with the checkpoint's statistics (`normalization`) and run in chunks
of rows. `graphc predict` and the Python API's `Model.predict` both come through here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import networkx as nx
import numpy as np

from . import checkpoint as C
from . import shapes as S
from .data import Arrays, Stats, load_data, n_samples
from .datafiles import csv_header, np_load, resolve
from .errors import SpecError, did_you_mean, short
from .ir import Graph
from .model import Model, Runner
from .evaluation import STATS
from .metrics import binary_threshold, is_probability, parse_metrics, regression_loss
from .trainconfig import fed_labels

CHUNK = 1024            # rows per forward pass, as eval's (evaluation.Evaluator)
CLASS_SUFFIX = ".class"  # `--classes`: the predicted class of output NAME is NAME.class
FORMATS = (".npz", ".npy", ".csv")


def forward_graph(graph: Graph, outputs: Sequence[str]) -> Graph:
    """The nodes `outputs` depend on, in schedule order: the pruned forward graph."""
    g = graph.digraph()
    need = set(outputs).union(*(nx.ancestors(g, o) for o in outputs))
    return Graph({n: node for n, node in graph.nodes.items() if n in need}, graph.loss,
                 tuple(outputs), graph.dtype,
                 tuple((a, b) for a, b in graph.after if a in need and b in need))


def choose_outputs(model: Model, outputs: Optional[Sequence[str]] = None) -> tuple:
    """`outputs` (one name, or several), else the spec's `outputs:`; each must be a node of
    the spec."""
    chosen = tuple(model.graph.outputs if outputs is None else
                   [outputs] if isinstance(outputs, str) else outputs)
    if not chosen:
        raise SpecError(f"spec '{model.spec.name}' lists no outputs to predict",
                        hint="add outputs: [NODE, ...] to the spec, e.g. outputs: [scores]")
    for i, name in enumerate(chosen):
        if name not in model.graph.nodes or "/" in name:
            users = [n for n in model.graph.nodes if "/" not in n]
            raise SpecError(f"'{name}' is not a node of spec '{model.spec.name}'",
                            hint=did_you_mean(str(name), users))
        if name in chosen[:i]:      # its rows would come back twice, under one key
            raise SpecError(f"output '{name}' is asked for twice", hint="name each output once")
    return chosen


class Predictor:
    """The pruned eval-mode forward pass of `outputs` (running statistics, no dropout)
    over samples, `chunk` rows at a time."""

    def __init__(self, model: Model, outputs: Optional[Sequence[str]] = None,
                 chunk: int = CHUNK):
        if not (S.is_int(chunk) and chunk >= 1):
            raise SpecError(f"batch_size is {short(chunk)}, expected a whole number >= 1",
                            hint=f"samples per forward pass, e.g. batch_size={CHUNK}")
        model = model.in_mode("eval")
        self.model, self.outputs, self.chunk = model, choose_outputs(model, outputs), chunk
        self.graph = forward_graph(model.graph, self.outputs)
        self.inputs = [n for n in model.fed_inputs if n in self.graph.nodes]
        self.runner = Runner(self.graph, model.store, set(self.outputs))

    def per_sample(self) -> bool:
        """Rows are independent, so running them in chunks gives what one pass over all of
        them gives: every value computed from a fed input (outputs included) keeps the
        inputs' first symbolic dim as its own first, and no op works along that axis
        (`x - mean(x, axis=0)` keeps the shape but mixes the rows)."""
        graph, dag = self.graph, self.graph.digraph()
        firsts = {graph[n].shape[0] if graph[n].shape else None for n in self.inputs}
        batch = next(iter(firsts))
        if len(firsts) != 1 or not isinstance(batch, str):
            return False
        computed = set().union(*(nx.descendants(dag, n) for n in self.inputs))
        return all(graph[n].shape[:1] == (batch,) and not _along_first_axis(graph, graph[n])
                   for n in computed)

    def __call__(self, arrays: Mapping[str, np.ndarray]) -> dict:
        """Output name -> values for the fitted, normalized `arrays` (one per input)."""
        if not self.inputs:
            ex = self.runner.run({})
            return {o: np.array(ex[o]) for o in self.outputs}
        n = n_samples({k: arrays[k] for k in self.inputs})
        step = self.chunk if self.per_sample() else n
        parts: dict = {o: [] for o in self.outputs}
        for start in range(0, n, step):
            ex = self.runner.run({k: arrays[k][start:start + step] for k in self.inputs})
            for o in self.outputs:
                parts[o].append(np.array(ex[o]))
        if len(parts[self.outputs[0]]) == 1:
            return {o: p[0] for o, p in parts.items()}
        return {o: np.concatenate(p) for o, p in parts.items()}

    def missing(self, name: str, source: str, has: Sequence[str]) -> SpecError:
        """The error for input `name`, which an output needs and `source` does not give."""
        g = self.graph.digraph()
        out = next(o for o in self.outputs if o == name or name in nx.ancestors(g, o))
        node = self.model.graph[name]
        listed = ", ".join(has) or "nothing"
        return SpecError(f"output '{out}' needs input '{name}', which is not in {source} "
                         f"(found: {listed})", mark=node.mark, node=name,
                         hint=did_you_mean(name, has) or f"add '{name}' to {source}")


def _along_first_axis(graph: Graph, node) -> bool:
    """Whether `node`'s op works along axis 0 of its first input (an `axis` attribute that
    is, or counts back to, 0)."""
    axis = node.attrs.get("axis")
    if axis is None or not node.inputs:
        return False
    ndim = len(graph[node.inputs[0]].shape) or 1
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    return any(isinstance(a, int) and a % ndim == 0 for a in axes)


def fed_arrays(model: Model, source: Mapping, inputs: Sequence[str]) -> Arrays:
    """The `inputs`' arrays from a `train.data`-style source ({npz: ...}, {arrays: ...}),
    checked and fitted as training data is (shapes, dtypes, finite values, label range)."""
    graph = model.graph
    data = load_data(source, spec_dir=Path.cwd(), inputs={n: graph[n].shape for n in inputs},
                     input_dtypes={n: graph[n].dtype for n in inputs}, seed=0,
                     **fed_labels(model, inputs))
    if inputs and n_samples(data.train) == 0:
        raise SpecError("the inputs hold no samples", node=inputs[0])
    return data.train


def given_arrays(predictor: Predictor, feeds: Mapping) -> Arrays:
    """The inputs the outputs need, from in-memory arrays keyed by input name (the Python
    API); a name that is no input of the spec is an error, as is a missing one."""
    inputs = predictor.model.fed_inputs
    if not isinstance(feeds, Mapping):
        raise not_a_mapping(feeds, predictor.inputs)
    for name in feeds:
        if name not in inputs:
            raise SpecError(f"'{name}' is not a fed input of spec "
                            f"'{predictor.model.spec.name}' (those are: {', '.join(inputs)})",
                            hint=did_you_mean(str(name), inputs))
    for name in predictor.inputs:
        if name not in feeds:
            raise predictor.missing(name, "the arrays given", [str(k) for k in feeds])
    return fed_arrays(predictor.model, {"arrays": dict(feeds)}, predictor.inputs)


def not_a_mapping(feeds, inputs: Sequence[str]) -> SpecError:
    """The Python API's error for feeds given as something other than {input: array}."""
    return SpecError(f"the arrays are given as type {type(feeds).__name__}, expected a mapping "
                     "{input name: array}", hint="e.g. {" + ", ".join(
                         f"'{n}': array" for n in inputs) + "}")


def read_inputs(predictor: Predictor, path) -> Arrays:
    """The inputs the outputs need, from an .npz or .npy (arrays named like the inputs) or
    a .csv file (columns as in `csv_columns`)."""
    shown, model, inputs = str(path), predictor.model, predictor.inputs
    kind = Path(shown).suffix.lower()
    if kind not in FORMATS:
        raise SpecError(f"--inputs {shown}: expected a .npz, .npy or .csv file",
                        hint="save arrays named like the spec's inputs with np.savez")
    if not inputs:
        return {}
    file = resolve(Path.cwd(), shown)
    if kind == ".npz":
        with np_load(file, shown, archive=True) as archive:
            has = list(archive.files)
        C.check_not_a_checkpoint(has, f"--inputs {shown}")
        for name in inputs:
            if name not in has:
                raise predictor.missing(name, shown, has)
        source = {"npz": shown}
    elif kind == ".npy":
        if len(inputs) > 1:
            raise SpecError(f"{shown} holds one array, and the outputs need the inputs "
                            f"{', '.join(inputs)}", hint="save them together with np.savez "
                            "into an .npz, one array per input")
        source = {"npy": {inputs[0]: shown}}
    else:
        source = {"csv": shown, "columns": csv_columns(predictor, csv_header(file, shown),
                                                       shown)}
    return fed_arrays(model, source, inputs)


def csv_columns(predictor: Predictor, header: Sequence[str], shown: str) -> dict:
    """Input -> its columns in a CSV of new samples: the spec's `train.data.columns` entry,
    else the column of its name; one input left without either (or mapped to `rest`) takes
    every column no fed input claims, so label columns may be there or not."""
    data = predictor.model.spec.train.get("data")
    given = (data.get("columns") or {}) if isinstance(data, Mapping) else {}
    given = given if isinstance(given, Mapping) else {}
    claimed = {}
    for name in predictor.model.fed_inputs:
        choice = given.get(name, name if name in header else None)
        if choice is not None and choice != "rest":
            claimed[name] = choice
    taken = {c for choice in claimed.values() for c in _as_list(choice)}
    rest = [c for c in _training_header(predictor.model, data) or header if c not in taken]
    absent = [c for c in rest if c not in header]
    if absent:                      # the training columns are taken by name, in their order
        raise SpecError(f"{shown} has no column '{absent[0]}', which the model was trained "
                        f"on (train.data's csv, as `rest`)", hint=f"columns found: "
                        f"{', '.join(header)}")
    out, left = {}, [n for n in predictor.inputs if n not in claimed]
    for name in predictor.inputs:
        if name in claimed:
            lost = [c for c in _as_list(claimed[name]) if c not in header]
            if lost:
                raise predictor.missing(name, f"{shown} (column '{lost[0]}')", header)
            out[name] = claimed[name]
        elif len(left) == 1 and rest:
            out[name] = rest
        else:
            raise predictor.missing(name, shown, header)
    return out


def _training_header(model: Model, data) -> list:
    """The header of the CSV the model was trained on (train.data's `csv:`), where it is
    there to read; [] otherwise (a built-in dataset, a moved file)."""
    if not (isinstance(data, Mapping) and isinstance(data.get("csv"), str)):
        return []
    try:
        path = resolve(model.spec.path.parent, data["csv"])
    except SpecError:
        return []
    return csv_header(path, f"train.data's csv {data['csv']}")


def _as_list(choice) -> list:
    """The column names of a `columns:` entry (a malformed entry names none: load_data
    reports it)."""
    if isinstance(choice, list):
        return [c for c in choice if isinstance(c, str)]
    return [choice] if isinstance(choice, str) else []


def normalization(model: Model, saved: Mapping, source: str) -> Stats:
    """The normalization statistics in a checkpoint's arrays; an error where `train.data`
    normalizes its inputs and `saved` (from `source`) has none to apply."""
    stats = C.saved_stats(saved, source, STATS)
    data = model.spec.train.get("data")
    rule = data.get("normalize") if isinstance(data, Mapping) else None
    if not stats and rule not in (None, False, "none"):
        raise SpecError(f"{source} has no normalization statistics, but train.data "
                        f"normalizes the inputs (normalize: {rule})",
                        mark=model.spec.train.mark_of("data"),
                        hint="predict with a checkpoint that training wrote, or fit first")
    return stats


def class_outputs(model: Model, outputs: Mapping[str, np.ndarray]) -> dict:
    """`--classes`: NAME.class, the predicted class of each sample, for every output NAME
    that holds classes; a regression's prediction holds quantities and gets none (a SpecError
    where no output holds classes)."""
    quantities = {k: quantity_of(model, k) for k in outputs}
    if all(quantities.values()):
        name = next(iter(outputs))
        loss, node = quantities[name], model.graph[name]
        raise SpecError(f"output '{name}' is the prediction of regression loss '{loss.name}' "
                        f"({loss.op}), not class scores: it has no classes to give",
                        mark=node.mark, node=name,
                        hint=f"leave out --classes (classes=True in the API); if '{name}' is "
                             f"a classifier, say so with train.metrics: "
                             f"{{accuracy: [{name}, TARGET]}}")
    return {k + CLASS_SUFFIX: predicted_classes(model, k, v) for k, v in outputs.items()
            if not quantities[k]}


def predicted_classes(model: Model, name: str, values: np.ndarray) -> np.ndarray:
    """The class of each sample from output `name`: argmax over its last axis when that
    holds several classes; for one score per sample, 1 above the threshold training's
    accuracy uses (metrics.binary_threshold: 0.5 after a sigmoid or for a regression onto
    0/1 targets, 0 for a logit or margin) and 0 otherwise."""
    node = model.graph[name]
    if values.ndim >= 2 and values.shape[-1] > 1:
        return values.argmax(axis=-1)
    if values.ndim >= 1 and values.size == len(values):
        threshold = binary_threshold(model.graph, name)
        return (values.reshape(len(values)) > threshold).astype(np.int64)
    raise SpecError(f"output '{name}' of shape {list(values.shape)} holds no class scores",
                    mark=node.mark, node=name,
                    hint="--classes needs scores of shape [batch, classes] or [batch]")


def quantity_of(model: Model, name: str):
    """The regression loss (mse, l1 or huber) whose prediction output `name` is, unless
    `name` is a probability (a sigmoid's) or an `accuracy` metric of the spec reads it (a
    regression onto 0/1 targets); else None: `name` may hold class scores."""
    graph = model.graph
    loss = regression_loss(graph, name)
    if loss is None or is_probability(graph, name):
        return None
    metrics = parse_metrics(model.spec.train.get("metrics"), graph)
    if any(m.kind == "accuracy" and m.nodes[0] == name for m in metrics.values()):
        return None
    return loss
