"""The closed op vocabulary: one `OpDef` record per op, families assembled here, explicitly.

YAML `op:` names, expression call names and `OPS` match one-to-one. Each family
module lists its records in a tuple `OPS`; nothing registers itself on import.
Groups say where an op may appear: users write `forward` ops (and `layer`s, which
the spec loader expands); the IR builder adds `saved` values beside the ops that
declare them; the reverse graph adds `backward` ops; training adds `update` ops;
`leaf` ops are the graph's sources. tests/test_ops_records.py fails when a record is
incomplete (a forward op without a gradient rule or explain formula, a
computed op that does not state its in-place permission).
"""
from __future__ import annotations

from typing import Mapping

from . import (activations, conv, elementwise, linalg, losses, reductions, sequence, sources,
               updates)
from . import modal
from .record import GROUPS, REQUIRED, OpDef

FAMILIES = {
    "sources": sources.OPS,
    "elementwise": elementwise.OPS,
    "activations": activations.OPS,
    "reductions": reductions.OPS,
    "linalg": linalg.OPS,
    "losses": losses.OPS,
    "conv": conv.OPS,
    "updates": updates.OPS,
    "sequence": sequence.OPS,
    "modal": modal.OPS,
}


def assemble(families: Mapping[str, tuple]) -> dict:
    """name -> record over all families; a name defined twice is a programming error."""
    out: dict = {}
    for family, records in families.items():
        for op in records:
            if op.name in out:
                raise ValueError(f"op '{op.name}' of family {family} is defined twice")
            if op.group not in GROUPS:
                raise ValueError(f"op '{op.name}' has unknown group '{op.group}'")
            out[op.name] = op
    return out


OPS: dict = assemble(FAMILIES)


def ops_in(group: str) -> list:
    return [name for name, op in OPS.items() if op.group == group]


def written(op: str) -> str:
    """The op as a spec writes it: `batch_norm` for the batch_norm_layer a one-input
    batch_norm(x) stands for (its record's `layer_form`), else the op itself."""
    return _WRITTEN.get(op, op)


_WRITTEN = {record.layer_form: name for name, record in OPS.items() if record.layer_form}


def family(name: str) -> list:
    """The forward ops of one family, in its module's order (dense's activations)."""
    return [op.name for op in FAMILIES[name] if op.group == "forward"]


def attrs_with_defaults(op: OpDef, given: Mapping) -> dict:
    """Fill defaults; the caller has already rejected unknown and missing attributes."""
    return {k: given.get(k, v) for k, v in op.attrs.items()}


__all__ = ["OPS", "OpDef", "REQUIRED", "FAMILIES", "ops_in", "family", "attrs_with_defaults"]
