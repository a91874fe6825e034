"""Reusable blocks: a subgraph written once under `blocks:`, instantiated as nodes.

```yaml
blocks:
  cell:
    inputs: [x, h]                  # what an instance binds
    params: {W: [4, 4], b: [4]}     # each instance's own, unless shared
    nodes: {out: tanh(x @ W + h + b)}
    output: out                     # default: the block's last node
nodes:
  h1: {block: cell, inputs: [x1, h0]}              # params h1.W, h1.b
  h2: {block: cell, inputs: [x2, h1], share: h1}   # reads h1.W, h1.b: tied weights
  h3: {block: cell, inputs: [x3, h2], params: {W: W0}}   # W bound to the leaf W0
```

An instance compiles to plain nodes, so the IR, autodiff, the planner and `explain`
see ordinary nodes: the block's node `z` of instance `h1` is `h1/z`, its output node is
`h1` itself, its params are `h1.W`. Every node keeps the mark of its line inside the
block, stamped with the block and the instance, so an error there names all three.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping, Optional

from . import shapes as S
from .blockdefs import Block, stamped
from .errors import Mark, SpecError, did_you_mean, short
from .expr import NodeSpec
from .layers import share_owner
from .ops import OPS, written
from .yamlload import MAX_VALUES, MarkedDict, check_keys, without

INSTANCE_KEYS = ("block", "inputs", "share", "params", "repeat", "chain", "per_step")


@dataclass(frozen=True)
class Instance:
    """`name: {block: B, inputs: ..., share: I, params: {P: LEAF}}` in `nodes:`."""
    name: str
    raw: MarkedDict
    mark: Mark


def instance(name: str, raw: MarkedDict, mark: Mark) -> Instance:
    """The instance `name: raw`. An optional key given null (`repeat: null`, `share: null`,
    `chain: null`) is as if absent, as YAML users expect of a key left at its default."""
    nulls = [k for k in INSTANCE_KEYS[1:] if k in raw and raw[k] is None]
    return Instance(name, without(raw, nulls), mark)


def expand_instances(items: list, blocks: Mapping[str, Block], leaves: dict) -> list:
    """Nodes with every Instance replaced by its block's nodes; their params join `leaves`."""
    of_block = {i.name: None if "repeat" in i.raw else i.raw.get("block") for i in items
                if isinstance(i, Instance)}     # None: repeated, which share: cannot name
    known = set(leaves) | {i.name for i in items}
    shares = {i.name: i.raw.get("share") for i in items if of_block.get(i.name)}
    binds = {i.name: i.raw.get("params") for i in items if of_block.get(i.name)}
    out = []
    for item in items:
        if isinstance(item, Instance):
            out += _instantiate(item, blocks, of_block, leaves, known, shares, binds)
        else:
            out.append(item)
    return out


def _instantiate(inst: Instance, blocks, of_block: Mapping, leaves: dict, known: set,
                 shares: Mapping, binds: Mapping) -> list:
    """The nodes of instance `inst`; `shares` and `binds` map each (unrepeated) instance to
    its share: and params: as written, so a sharing instance reads the params its owner
    reads, bound ones included."""
    raw = inst.raw
    check_keys(raw, INSTANCE_KEYS, f"the instance '{inst.name}'", node=inst.name)
    block = blocks.get(raw["block"]) if isinstance(raw["block"], str) else None
    if block is None:
        raise SpecError(f"unknown block {short(raw['block'])}", mark=raw.mark_of("block"),
                        node=inst.name, hint=did_you_mean(str(raw["block"]), blocks) or
                        "define it under blocks:")
    share = _share_of(inst, block, of_block)
    share = share_owner(share, shares) if isinstance(share, str) else share
    owned = binds.get(share) if isinstance(share, str) else None
    inputs = _bind_inputs(inst, block, known)
    if "repeat" in raw:
        return repeats(inst, block, inputs, share, leaves, owned)
    for key in (k for k in raw if k in ("chain", "per_step")):
        raise SpecError(f"{key}: belongs to a repeated instance, and '{inst.name}' is not "
                        "repeated", mark=raw.mark_of(key), node=inst.name,
                        hint="add repeat: N, or drop the key")
    return _instance_nodes(inst, block, inst.name, inst.name, inputs, share, leaves, owned)


def _share_of(inst: Instance, block: Block, of_block: Mapping):
    """The instance whose params this one reads (None: its own; True: a repeated instance's
    first repetition), checked: an instance of the same block, whose layers can share."""
    share = inst.raw.get("share")
    if share == inst.name:
        raise SpecError(f"share '{share}' names the instance itself", node=inst.name,
                        mark=inst.raw.mark_of("share"), hint="name another instance of block "
                        f"'{block.name}' whose params this one reads, or drop share:")
    if share is None:
        return None
    unshared = next((n for n in block.nodes if OPS[n.op].group == "layer" and
                     "share" not in OPS[n.op].attrs), None)
    if unshared is not None:
        raise SpecError(f"block '{block.name}' uses the layer {written(unshared.op)}, whose "
                        "params are each instance's own: share: cannot tie them",
                        mark=inst.raw.mark_of("share"), node=inst.name,
                        hint="declare the params in the block's params: and pass them to the "
                        "op (dense: x @ W + b; layer_norm(x, gamma, beta))")
    if share is True and "repeat" in inst.raw:
        return True
    if isinstance(share, str) and share in of_block and of_block[share] is None:
        first = next(iter(block.params), "W")
        raise SpecError(f"share '{share}' names a repeated instance, which has a set of params "
                        "per repetition", mark=inst.raw.mark_of("share"), node=inst.name,
                        hint=f"bind the ones to read with params:, e.g. params: {{{first}: "
                             f"{share}.{first}}} (its last repetition's)")
    if not isinstance(share, str) or of_block.get(share) != block.name:
        raise SpecError(f"share {short(share)} is not an instance of block '{block.name}'",
                        mark=inst.raw.mark_of("share"), node=inst.name,
                        hint=did_you_mean(str(share), [i for i, b in of_block.items()
                                                       if b == block.name and i != inst.name])
                        or "share: true ties the repetitions of a repeated instance")
    return share


def _instance_nodes(inst: Instance, block: Block, name: str, output: str, inputs: Mapping,
                    share: Optional[str], leaves: dict, owned=None) -> list:
    """The block's nodes as instance `name` (its output node named `output`), reading
    `inputs` and its own params, or those of the instance `share` (layers' too), whose
    `params:` bindings are `owned`."""
    rename = {**inputs, **_bind_params(inst, block, name, share, leaves, owned)}
    for n in block.nodes:
        rename[n.name] = _local(block, name, output, n.name)
    nodes = [_renamed(n, rename, block, name) for n in block.nodes]
    if share is None:
        return nodes
    return [dataclasses.replace(m, attrs={**m.attrs, "share": _local(block, share, share, n.name)})
            if OPS[n.op].group == "layer" else m for n, m in zip(block.nodes, nodes)]


def _local(block: Block, name: str, output: str, node: str) -> str:
    """The name of the block's node `node` in instance `name` whose output is `output`."""
    return output if node == block.output else f"{name}/{node}"


def repeats(inst: Instance, block: Block, inputs: Mapping, share, leaves: dict,
            owned=None) -> list:
    """`repeat: N` chains N instances `<name>/1` ... `<name>/N-1` and `<name>` itself (the
    last, whose output the spec reads): repetition k reads repetition k-1's output as its
    input `chain:` (default: the block's first input), and step k - 1 of each `per_step:
    {INPUT: AXIS}` input (a slice of size 1 along AXIS). `share: true` ties every
    repetition to the first."""
    raw, count = inst.raw, inst.raw["repeat"]
    if not S.is_int(count) or count < 1:
        raise SpecError(f"repeat is {short(count)}, expected a whole number >= 1",
                        mark=raw.mark_of("repeat"), node=inst.name, hint="e.g. repeat: 4")
    if count * max(len(block.nodes), 1) > MAX_VALUES:
        raise SpecError(f"repeat: {count} copies the {len(block.nodes)} node(s) of block "
                        f"'{block.name}' {count} times, more than the {MAX_VALUES} values a "
                        "spec may hold", mark=raw.mark_of("repeat"), node=inst.name,
                        hint="a spec this large is not compiled; repeat fewer times")
    if not block.inputs:
        raise SpecError(f"block '{block.name}' has no inputs, and repeat: feeds each "
                        "repetition's output to an input of the next", node=inst.name,
                        mark=raw.mark_of("repeat"), hint="give the block an input (inputs: "
                        "[x]) that takes the previous repetition's output")
    chain = raw.get("chain", block.inputs[0])
    if chain not in block.inputs:
        raise SpecError(f"chain {short(chain)} is not an input of block '{block.name}'",
                        mark=raw.mark_of("chain") if "chain" in raw else raw.mark_of("repeat"),
                        node=inst.name, hint=did_you_mean(str(chain), block.inputs) or
                        "give the block an input that takes the previous repetition's output")
    per_step = _per_step(inst, block, chain)
    _check_steps(inst, per_step, inputs, leaves, count)
    out, prev = [], inputs[chain]
    for k in range(1, count + 1):
        name = inst.name if k == count else f"{inst.name}/{k}"
        bound = {**inputs, chain: prev}
        for put, axis in per_step.items():
            bound[put] = f"{name}/{put}"
            out.append(NodeSpec(bound[put], "slice", (inputs[put],),
                                {"axis": axis, "start": k - 1, "stop": k},
                                stamped(raw.mark_of("per_step"), block.name, name),
                                origin=bound[put]))
        owner = f"{inst.name}/1" if share is True else share
        out += _instance_nodes(inst, block, name, name, bound,
                               None if k == 1 and share is True else owner, leaves, owned)
        prev = name
    return out


def _per_step(inst: Instance, block: Block, chain: str) -> dict:
    """`per_step: {INPUT: AXIS}`, checked: inputs of the block other than `chain`, integer axes."""
    given = inst.raw.get("per_step") or {}
    if not isinstance(given, dict) or not all(
            p in block.inputs and p != chain and S.is_int(a) for p, a in given.items()):
        raise SpecError(f"per_step is {short(given)}, expected a mapping {{INPUT: AXIS}} of "
                        f"inputs of block '{block.name}' other than the chained '{chain}'",
                        mark=inst.raw.mark_of("per_step"), node=inst.name,
                        hint="e.g. per_step: {x: 1} feeds repetition k the slice "
                             "x[:, k-1:k]")
    return dict(given)


def _check_steps(inst: Instance, per_step: Mapping, inputs: Mapping, leaves: Mapping,
                 count: int) -> None:
    """Each `per_step` input that is a leaf of fixed size along its axis holds `count` steps:
    found before the N repetitions are written out (else the slice of the repetition that
    runs out says so, after all of them)."""
    for put, axis in per_step.items():
        leaf = leaves.get(inputs[put])
        shape = leaf.shape if leaf is not None else ()
        steps = shape[axis] if -len(shape) <= axis < len(shape) else None
        if S.is_int(steps) and steps < count:
            raise SpecError(f"per_step reads {count} steps of '{inputs[put]}' along axis "
                            f"{axis}, which has {steps}", mark=inst.raw.mark_of("per_step"),
                            node=inst.name, hint=f"repeat: {steps} at most, or feed a "
                            f"longer '{inputs[put]}'")


def _bind_inputs(inst: Instance, block: Block, known: set) -> dict:
    given = inst.raw.get("inputs", [])
    where = inst.raw.mark_of("inputs")
    if isinstance(given, list) and len(given) == len(block.inputs):
        given = dict(zip(block.inputs, given))
    if not isinstance(given, dict) or set(given) != set(block.inputs) or \
            not all(isinstance(v, str) for v in given.values()):
        raise SpecError(f"block '{block.name}' takes inputs [{', '.join(block.inputs)}], got "
                        f"{short(given)}", mark=where, node=inst.name,
                        hint="give a list of names in that order, or a mapping "
                             "{INPUT: NAME}")
    for name in given.values():
        if name not in known:
            raise SpecError(f"unknown name '{name}' bound to an input of block "
                            f"'{block.name}'", mark=where, node=inst.name,
                            hint=did_you_mean(name, known) or
                            "define it under inputs, params or nodes")
    return dict(given)


def _bind_params(inst: Instance, block: Block, name: str, share: Optional[str],
                 leaves: dict, owned=None) -> dict:
    """Block param -> leaf name: instance `name`'s own (`<name>.<param>`, created here), a
    shared instance's (`<share>.<param>`, or the leaf its `params:` binds: `owned`), or a
    leaf bound by name (`params:`)."""
    owned = owned if isinstance(owned, dict) else {}
    bound = inst.raw.get("params") or {}
    if not isinstance(bound, dict):
        raise SpecError(f"params is {short(bound)}, expected a mapping {{PARAM: LEAF}}",
                        mark=inst.raw.mark_of("params"), node=inst.name)
    out = {}
    for p, leaf in block.params.items():
        if p in bound:
            out[p] = _bound_leaf(inst, block, p, bound[p], leaves)
        elif share is not None and isinstance(owned.get(p), str):
            out[p] = owned[p]
        else:
            out[p] = f"{share or name}.{p}"
            if share is None:
                leaves[out[p]] = dataclasses.replace(leaf, name=out[p],
                                                     mark=stamped(leaf.mark, block.name, name))
    unknown = set(bound) - set(block.params)
    if unknown:
        raise SpecError(f"block '{block.name}' has no param '{sorted(unknown)[0]}'",
                        mark=inst.raw.mark_of("params"), node=inst.name,
                        hint=did_you_mean(sorted(unknown)[0], block.params))
    return out


def _bound_leaf(inst: Instance, block: Block, param: str, name, leaves: dict) -> str:
    want = block.params[param].shape
    if not isinstance(name, str) or name not in leaves or leaves[name].kind != "param":
        raise SpecError(f"param '{param}' is bound to {short(name)}, which is not a param",
                        mark=inst.raw.mark_of("params"), node=inst.name,
                        hint=did_you_mean(str(name), [k for k, v in leaves.items()
                                                      if v.kind == "param"]))
    if tuple(leaves[name].shape) != tuple(want):
        raise SpecError(f"param '{param}' of block '{block.name}' has shape {list(want)}, but "
                        f"'{name}' has {list(leaves[name].shape)}",
                        mark=inst.raw.mark_of("params"), node=inst.name)
    return name


def _renamed(n: NodeSpec, rename: Mapping, block: Block, instance: str) -> NodeSpec:
    """A block node as this instance's: names bound, marks stamped, origin the block node."""
    for k, i in enumerate(n.inputs):
        if i not in rename:
            at = n.input_marks[k] if k < len(n.input_marks) else n.mark
            raise SpecError(f"unknown name '{i}' in block '{block.name}'",
                            mark=stamped(at, block.name, instance),
                            node=rename.get(n.name.split("/")[0]),
                            hint=did_you_mean(i, rename) or "a block reads only its inputs, "
                            "params and nodes: add it to the block's inputs")
    name = rename[n.name] if n.name in rename else f"{instance}/{n.name}"
    user = n.name.split("/")[0]
    return dataclasses.replace(
        n, name=name, inputs=tuple(rename[i] for i in n.inputs),
        mark=stamped(n.mark, block.name, instance),
        input_marks=tuple(stamped(m, block.name, instance) for m in n.input_marks),
        origin=rename[user])


def instance_lines(graph) -> list:
    """`check`'s summary of the block instances in an IR graph: one line per block, each
    instance with its node count and the params it reads (its own or shared)."""
    by_block: dict = {}
    for n in graph.nodes.values():
        if n.mark and n.mark.instance and not n.is_leaf:
            inst = by_block.setdefault(n.mark.block, {}).setdefault(n.mark.instance, [])
            inst.append(n)
    lines = []
    for block, instances in by_block.items():
        parts = []
        for inst, members in instances.items():
            params = sorted({i for n in members for i in n.inputs if graph[i].op == "param"})
            parts.append(f"{inst} ({len(members)} nodes; params {', '.join(params) or 'none'})")
        lines.append(f"block {block}: " + ", ".join(parts))
    return lines
