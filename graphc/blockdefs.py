"""Blocks as written: the `blocks:` section read into `Block` records (each node's
mark stamped with its block), and the check that no node calls a block as an op.
How instances of a block expand into plain nodes is blocks.py.
"""
from __future__ import annotations

import ast
import dataclasses
from dataclasses import dataclass
from typing import Callable, Collection, Mapping, Optional

from .errors import Mark, SpecError, did_you_mean, short
from .expr import ALIASES
from .leaves import LeafSpec, parse_leaf
from .ops import OPS
from .yamlload import MarkedDict, check_keys

BLOCK_KEYS = ("inputs", "params", "nodes", "output")


@dataclass(frozen=True)
class Block:
    """A block as written: local names of its inputs, params and nodes, and its output."""
    name: str
    inputs: tuple
    params: Mapping[str, LeafSpec]
    nodes: tuple
    output: str
    mark: Mark


def stamped(mark: Optional[Mark], block: str, instance: Optional[str] = None):
    return mark and dataclasses.replace(mark, block=block, instance=instance)


def in_block(exc: SpecError, block: str, instance: Optional[str] = None) -> SpecError:
    """The same error, its place stamped with the block (and instance) it lies in."""
    return SpecError(exc.message, mark=stamped(exc.mark, block, instance), node=exc.node,
                     hint=exc.hint, context=exc.context)


def _names(raw, what: str, block: str, mark: Mark) -> tuple:
    if not isinstance(raw, list) or not all(isinstance(i, str) and i.isidentifier()
                                            for i in raw):
        raise SpecError(f"{what} of block '{block}' is {short(raw)}, expected a list of "
                        "names such as [x, h]", mark=mark)
    twice = next((i for i in raw if raw.count(i) > 1), None)
    if twice:
        raise SpecError(f"{what} of block '{block}' names '{twice}' twice", mark=mark,
                        hint="each input of a block is one distinct name")
    return tuple(raw)


def parse_blocks(raw: MarkedDict, dtype: str, parse_node: Callable) -> dict:
    """name -> Block for the `blocks:` section; `parse_node(name, body, mark)` reads one
    node's body as the `nodes:` section does."""
    blocks = {}
    for name, body in raw.items():
        mark = raw.key_marks[name]
        if not isinstance(body, dict):
            raise SpecError(f"block '{name}' is {short(body)}, expected a mapping with inputs, "
                            "params and nodes", mark=mark)
        check_keys(body, BLOCK_KEYS, f"block '{name}'")
        try:
            blocks[name] = _block(name, body, mark, dtype, parse_node)
        except SpecError as exc:
            raise in_block(exc, name) from None
    return blocks


def _block(name: str, body: MarkedDict, mark: Mark, dtype: str, parse_node) -> Block:
    inputs = _names(body.get("inputs", []), "inputs", name, body.mark_of("inputs"))
    raw_params = body.get("params") or {}
    if not isinstance(raw_params, dict):
        raise SpecError(f"params of block '{name}' is {short(raw_params)}, expected a mapping "
                        "name: leaf", mark=body.mark_of("params"), hint="e.g. {W: [4, 4]}")
    params = {p: parse_leaf(p, v, "param", dtype, raw_params.key_marks[p])
              for p, v in raw_params.items()}
    raw_nodes = body.get("nodes")
    if raw_nodes is not None and not isinstance(raw_nodes, dict):
        raise SpecError(f"nodes of block '{name}' is {short(raw_nodes)}, expected a mapping "
                        "name: expression", mark=body.mark_of("nodes"),
                        hint="write each node as NAME: EXPRESSION, e.g. out: tanh(x @ W)")
    if not raw_nodes:
        raise SpecError(f"block '{name}' has no nodes", mark=mark,
                        hint="give it nodes: {out: EXPRESSION}")
    for p in set(inputs) & set(params):
        raise SpecError(f"'{p}' is both an input and a param of block '{name}'",
                        mark=raw_params.key_marks[p], node=p, hint="rename one of them")
    taken = set(inputs) | set(params)
    nodes = []
    for local, node_body in raw_nodes.items():
        if local in taken or not local.isidentifier():
            raise SpecError(f"node name '{local}' is taken or not an identifier",
                            mark=raw_nodes.key_marks[local], node=local)
        taken.add(local)
        if isinstance(node_body, dict) and "block" in node_body:
            raise SpecError(f"node '{local}' of block '{name}' is an instance of a block, and "
                            "blocks do not nest", mark=raw_nodes.mark_of(local), node=local,
                            hint="instantiate both blocks under nodes:, the second reading "
                                 "the first's output")
        nodes += parse_node(local, node_body, raw_nodes.mark_of(local))
    output = body.get("output", list(raw_nodes)[-1])
    if not isinstance(output, str):
        raise SpecError(f"output of block '{name}' is {short(output)}, expected one node name: "
                        "a block has one output", mark=body.mark_of("output"),
                        hint="name the main one; another node z of instance h is read as "
                             "h/z in an explicit node's inputs: [h/z]")
    if output not in raw_nodes:
        raise SpecError(f"output {short(output)} is not a node of block '{name}'",
                        mark=body.mark_of("output"), hint=did_you_mean(str(output), raw_nodes))
    return Block(name, inputs, params, tuple(nodes), output, mark)


def check_not_called(node: str, body, blocks: Collection[str], mark: Mark) -> None:
    """SpecError where a node body that failed to parse calls a block as if it were an op
    (`h: cell(x)`, `{op: cell, ...}`): a block is instantiated by a node of its own."""
    if isinstance(body, dict):
        called = {body.get("op")}
    else:
        called = _called(body) if isinstance(body, str) else set()
    for name in sorted(called & set(blocks) - set(OPS) - set(ALIASES)):
        raise SpecError(f"'{name}' is a block, not an op: a block is instantiated by a node "
                        "of its own", mark=mark, node=node,
                        hint=f"write {node}: {{block: {name}, inputs: [...]}} under nodes: "
                             "(blocks do not nest), and read that node by its name")


def _called(text: str) -> set:
    """The names an expression calls (none when it does not parse: its own error says so)."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return set()
    return {c.func.id for c in ast.walk(tree)
            if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)}
