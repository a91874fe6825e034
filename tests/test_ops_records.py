"""The op records (graphc/ops/): each op is one complete record, families assembled once.

A forward op without a gradient rule or an explain formula, a computed op that does not
state its in-place permission, an op defined in two families: each fails here, by name.
"""
from __future__ import annotations

import dataclasses

import pytest

from graphc.ops import FAMILIES, OPS, assemble
from graphc.ops.record import OpDef, missing_facts, same


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_record_is_complete(name):
    assert missing_facts(OPS[name]) == [], f"op '{name}' lacks {missing_facts(OPS[name])}"


def test_an_incomplete_record_is_caught():
    bare = OpDef("where", 3, same, "where(cond, a, b) = a if cond else b")
    assert missing_facts(bare) == ["elementwise", "vjp", "formula"]
    assert missing_facts(dataclasses.replace(OPS["relu"], formula=None)) == ["formula"]
    assert missing_facts(dataclasses.replace(OPS["relu_grad"], doc="")) == ["doc"]


def test_families_are_assembled_explicitly_and_once():
    assert list(OPS) == [op.name for records in FAMILIES.values() for op in records]
    twice = {**FAMILIES, "again": (OPS["relu"],)}
    with pytest.raises(ValueError, match="'relu' of family again is defined twice"):
        assemble(twice)

