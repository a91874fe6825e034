"""Graphviz DOT: writing helpers, the training step as one picture, and rendering.

`plan_dot` draws the forward, backward and update steps of a plan in one picture,
each backward node on the row of the forward node it differentiates, a shape on
every data edge (the annotated lecture graph is annotate.py). DOT is plain text;
`render` calls Graphviz's `dot` where it is installed.
"""
from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path
from typing import Mapping, Optional

from . import shapes as S
from .errors import GraphcError, SpecError, did_you_mean
from .ir import Graph, Node
from .ops import OPS
from .outfiles import atomic_write, destination
from .plan import Plan

NOTE = "#57606a"
PLAN_STYLE = {
    "forward": {"shape": "box", "style": "filled", "fillcolor": "#dbeafe", "color": "#1d4ed8"},
    "backward": {"shape": "box", "style": "filled,rounded,dashed", "fillcolor": "#fee2e2",
                 "color": "#b91c1c", "fontcolor": "#7f1d1d"},
    "update": {"shape": "hexagon", "style": "filled", "fillcolor": "#fef3c7",
               "color": "#b45309"},
    "param": {"shape": "cylinder", "style": "filled", "fillcolor": "#ede9fe",
              "color": "#6d28d9"},
    "input": {"shape": "box", "style": "filled", "fillcolor": "#f3f4f6"},
    "state": {"shape": "cylinder", "style": "filled", "fillcolor": "#fef3c7"},
    "hyper": {"shape": "note"},
    "const": {"shape": "plaintext"},
    "external": {"shape": "box", "style": "dotted", "fontcolor": NOTE},
}


class Html(str):
    """A Graphviz HTML-like label: written between < and >, not quoted."""


def quote(text: str) -> str:
    """A DOT double-quoted string; a newline becomes DOT's \\n."""
    return f'"{escape(text)}"'


def escape(text: str) -> str:
    """The inside of `quote(text)`: backslash, double quote and newline escaped, one
    character at a time (so the escape of a concatenation is the concatenation of the
    escapes, and a label can be written from pieces escaped once each)."""
    text = str(text)
    if "\\" in text or '"' in text or "\n" in text:    # most names and labels need no escape
        text = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return text


def attr_list(attrs: Mapping) -> str:
    parts = [f"{k}=<{v}>" if isinstance(v, Html) else f"{k}={quote(v)}"
             for k, v in attrs.items()]
    return "[" + ", ".join(parts) + "]"


def node_line(name: str, attrs: Mapping, indent: str = "  ") -> str:
    return f"{indent}{quote(name)} {attr_list(attrs)};"


def edge_line(src: str, dst: str, attrs: Mapping) -> str:
    return quoted_edge_line(quote(src), quote(dst), attr_list(attrs))


def quoted_edge_line(src: str, dst: str, attrs: str) -> str:
    """`edge_line` from its parts already written out: the quoted ends, the attr list."""
    head, tail = edge_ends(src, attrs)
    return head + dst + tail


def edge_ends(src: str, attrs: str) -> tuple:
    """The text of an edge line before and after its quoted head node: (the quoted
    source and arrow, the attr list and semicolon), for many edges from one source."""
    return f"  {src} -> ", f" {attrs};"


def render(dot_path: Path, fmt: str = "svg") -> Optional[Path]:
    """Run Graphviz `dot -T<fmt>` on the DOT file and write its output next to it
    (atomically, as every output); None when `dot` is not installed."""
    exe = shutil.which("dot")
    if exe is None:
        return None
    out = Path(dot_path).with_suffix("." + fmt)
    destination(out, "rendered graph")
    done = subprocess.run([exe, f"-T{fmt}", str(dot_path)], capture_output=True)
    if done.returncode != 0:
        raise GraphcError(f"Graphviz dot failed on {dot_path}: "
                          f"{done.stderr.decode(errors='replace').strip()}")
    atomic_write(out, lambda f: f.write(done.stdout), "rendered graph")
    return out


def parse_range(plan: Plan, text: str) -> tuple:
    """`A..B` (node names or step numbers, either end optional) -> inclusive step indices."""
    if ".." not in text:
        raise SpecError(f"--only '{text}' is not a range", hint="write FIRST..LAST, e.g. h..loss")
    first, last = text.split("..", 1)
    by_name = {s.node: s.index for s in plan.steps}
    by_name.update({s.outputs[0]: s.index for s in plan.steps if s.outputs[0] not in by_name})

    def index(end: str, default: int) -> int:
        if end == "":
            return default
        if end.isdigit() and int(end) < len(plan.steps):
            return int(end)
        if end not in by_name:
            raise SpecError(f"--only: '{end}' is not a step of the plan",
                            hint=did_you_mean(end, by_name) or "see `graphc plan SPEC`")
        return by_name[end]
    a, b = index(first, 0), index(last, len(plan.steps) - 1)
    if a > b:
        raise SpecError(f"--only {text}: step {a} comes after step {b}",
                        hint=f"write {last}..{first}")
    return a, b


def forward_of(graph: Graph, name: str) -> Optional[str]:
    """The forward node a gradient node differentiates (`d:J/pow/pow_grad` -> `J/pow`)."""
    node = graph.nodes.get(name)
    return node.differentiates if node is not None else None


def _block(nodes: Mapping[str, Node], name: str, phase: str) -> Optional[str]:
    """The user's node a step belongs to (`h/matmul` -> `h`), or the block instance its
    node lies in (`h1/z` -> `h1`); its backward steps -> `d:h`, `d:h1`; the steps
    recomputing it (remat.py) -> `re:h`."""
    node = nodes[name]
    if node.role == "recompute":
        prefix = "re:"
    elif phase == "forward":
        prefix = ""
    elif phase == "backward":
        node, prefix = nodes[node.differentiates], "d:"
    else:
        return None
    return prefix + (node.mark.instance if node.mark and node.mark.instance else node.origin)


def _value_shape(plan: Plan, value: str) -> tuple:
    b = plan.buffers.get(value)
    return b.shape if b is not None else plan.persistent[value][1]


# Border colours of arena regions: values drawn in one colour share bytes (at other times).
REGION_COLORS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02",
                 "#a6761d", "#666666", "#1f78b4", "#b2df8a", "#fb9a99", "#cab2d6")


def _plan_nodes(graph: Graph, plan: Plan, steps, quoted: Mapping[str, str]) -> tuple:
    """(node lines by cluster, each `NAME [ATTRS];` without its indent; the names of the
    drawn values): steps, then the values they read. A step's label is written escaped,
    from pieces escaped once each (`escape`): its quoted name, its op and shape."""
    written = {s.node for s in steps if s.outputs == (s.node,)}
    colors = _region_colors(plan)
    nodes, buffers = graph.nodes, plan.buffers
    clusters, drawn = {}, set()
    shapes = S.fmt_all(_value_shape(plan, s.outputs[0]) for s in steps)
    for s, shape in zip(steps, shapes):
        name = quoted[s.node]
        label = f"{name[:-1]}\\n{s.op} {escape(shape)}\\nstep {s.index}"
        mutates = OPS[s.op].mutates
        if mutates:
            label += "\\nwrites " + ", ".join(quoted[s.inputs[p]][1:-1] for p in mutates)
        b = buffers.get(s.outputs[0])
        if b is None:
            front = _style_attrs(s.phase, None)
        else:
            arena = f"[{b.offset}, {b.offset + b.bytes})"
            label += "\\narena " + arena
            front = _style_attrs(s.phase, colors[b.offset]) + f', arena="{arena}"'
        # phase and op come from closed vocabularies of plain words: nothing to escape
        clusters.setdefault(_block(nodes, s.node, s.phase), []).append(
            f'{name} [{front}, label={label}", class="{s.phase}", '
            f'tooltip="step {s.index} ({s.phase}): {s.op}"];')
        drawn.add(s.node)
    writer = {s.outputs[0]: s.index for s in plan.steps}
    seen = drawn | written
    for s in steps:
        for v in s.inputs:
            if v in seen:
                continue
            seen.add(v)
            drawn.add(v)
            clusters.setdefault(None, []).append(
                f"{quoted[v]} {_outside_attrs(graph, plan, v, writer)};")
    return clusters, drawn


def _region_colors(plan: Plan) -> dict:
    """Arena offset -> the border colour of its region: the regions by offset, colours
    taken in turn."""
    offsets = sorted({b.offset for b in plan.buffers.values()})
    return {off: REGION_COLORS[i % len(REGION_COLORS)] for i, off in enumerate(offsets)}


@functools.lru_cache(maxsize=None)
def _style_attrs(phase: str, color: Optional[str]) -> str:
    """The front of a step's attr list, written once per phase and border colour: the
    phase's style, with the colour and pen width of its value's arena region (None: the
    value has no region)."""
    style = PLAN_STYLE[phase]
    if color is not None:
        style = {**style, "color": color, "penwidth": "2.5"}
    return attr_list(style)[1:-1]


def _outside_attrs(graph: Graph, plan: Plan, v: str, writer: Mapping[str, int]) -> str:
    """The attr list of a value the drawn steps read but do not write: a leaf, or a step
    outside --only (`writer`: the step writing each value)."""
    if v in plan.persistent:
        op, shape, _, const = plan.persistent[v]
        label = f"{v}\n{op} {S.fmt(shape)}"
        if op == "const":     # a number in an expression; the seed d:loss = 1 keeps its name
            label = f"{v} = {const:g}" if graph[v].role == "gradient" else f"{const:g}"
        kind = op
    else:
        label, kind = f"{v}\n(step {writer[v]}, not drawn)", "external"
    # the class is an op or "external": a plain word, nothing to escape
    return f'[{_outside_style(kind)}, label={quote(label)}, class="{kind}"]'


@functools.lru_cache(maxsize=None)
def _outside_style(kind: str) -> str:
    """The front of an outside value's attr list: the style of its op (or "external")."""
    return attr_list(PLAN_STYLE.get(kind, PLAN_STYLE["input"]))[1:-1]


# The attr list of a backward node's link to the node it differentiates, before its tooltip.
DIFFERENTIATES = attr_list({"class": "differentiates", "style": "dashed", "color": "#9ca3af",
                            "arrowhead": "none", "constraint": "false"})[1:-1]


def _plan_edges(plan: Plan, steps, targets: Mapping[str, str],
                quoted: Mapping[str, str]) -> list:
    """The data edges into each step (their shape as label), then its link to the node it
    differentiates; each edge line written as its source's head and attr list around the
    quoted step name."""
    lines, ends = [], {}      # value -> (`  "v" -> `, its data edges' ` [attrs];`)
    data = {}                 # shape -> the attr list of the data edges moving it
    for s in steps:
        dst = quoted[s.node]
        for v in s.inputs:
            if v not in ends:       # a value feeds several steps: write its parts once
                shape = _value_shape(plan, v)
                if shape not in data:
                    data[shape] = attr_list({"label": S.fmt(shape), "class": "data"})
                ends[v] = edge_ends(quoted[v], data[shape])
            head, tail = ends[v]
            lines.append(head + dst + tail)
        target = targets.get(s.node)
        if target is not None:
            end = quoted[target]      # its tooltip: "d of " and the quoted name's rest
            lines.append(quoted_edge_line(dst, end, f'[{DIFFERENTIATES}, '
                                                    f'tooltip="d of {end[1:]}]'))
    return lines


def plan_dot(graph: Graph, plan: Plan, only: Optional[str] = None,
             clusters: bool = True) -> str:
    """Forward, backward and update steps in one picture; `only` = `A..B` draws a sub-range.

    Backward steps are red, rounded and dashed, each linked (dashed, no arrow) to the
    forward node it differentiates; updates are hexagons with a bold `writes` edge to
    their parameter; every data edge carries the shape of the value it moves.
    """
    a, b = parse_range(plan, only) if only else (0, len(plan.steps) - 1)
    steps = plan.steps[a:b + 1]
    quoted = _Quoted()
    groups, drawn = _plan_nodes(graph, plan, steps, quoted)
    batch = f", batch {plan.batch_size}" if plan.batch_size else ""
    title = (f"training step, steps {a}..{b}{batch}: forward (blue), backward (red, dashed "
             f"link to the node it differentiates), update (orange)")
    lines = ["digraph plan {", '  rankdir="TB"; newrank="true";',
             f'  label={quote(title)}; labelloc="t"; fontsize="12";',
             '  node [fontname="Helvetica", fontsize="10"];',
             '  edge [fontname="Helvetica", fontsize="9", color="#4b5563"];']
    for block, members in groups.items():
        boxed = clusters and block is not None and len(members) > 1
        if boxed:
            lines += [f"  subgraph {quote('cluster_' + block)} {{",
                      f'    label={quote(block)}; style="dashed"; color="#9ca3af";']
        indent = "    " if boxed else "  "
        lines.append(indent + ("\n" + indent).join(members))
        if boxed:
            lines.append("  }")
    targets = _targets(graph, drawn)
    return "\n".join(lines + _mirror(targets, quoted)
                     + _plan_edges(plan, steps, targets, quoted) + ["}"]) + "\n"


def _targets(graph: Graph, drawn) -> dict:
    """Each drawn node -> the drawn forward node it differentiates (`forward_of`)."""
    nodes, targets = graph.nodes, {}
    for name in drawn:
        node = nodes.get(name)
        if node is not None and node.differentiates in drawn:
            targets[name] = node.differentiates
    return targets


class _Quoted(dict):
    """name -> quote(name), each name quoted once however many lines name it."""

    def __missing__(self, name: str) -> str:
        text = self[name] = quote(name)
        return text


def _mirror(targets: Mapping[str, str], quoted: Mapping[str, str]) -> list:
    """Each backward node on the row of the forward node it differentiates (`targets`:
    drawn node -> the drawn node it differentiates)."""
    rows = {}
    for name in sorted(targets):
        rows.setdefault(targets[name], [targets[name]]).append(name)
    return ["  { rank=\"same\"; " + " ".join(quoted[n] + ";" for n in row) + " }"
            for row in rows.values()]
