"""libyaml's parser and composer give what PyYAML's pure-Python loader gives.

The oracle is graphc's pure-Python path (`yamlload._Loader`, the only one before libyaml
was used): every spec in specs/ and every malformed spec in tests/bad_specs loads to the
same values and marks, or fails with the same `error:` message, with the C loaders on
and off. Without libyaml the two are one loader, and the comparison is skipped.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from graphc import yamlload
from graphc.errors import GraphcError
from graphc.spec import load_spec

TESTS = Path(__file__).resolve().parent
FILES = sorted((TESTS.parent / "specs").glob("*.yaml")) + sorted(
    (TESTS / "bad_specs").glob("*.yaml"))
# values the loaders construct without PyYAML's bookkeeping (plain ints, maps, lists)
# beside the forms that must still take PyYAML's own constructors
TEXTS = ["a: [010, 0, 00, 1_000, +5, -3, 7, 0x1f, 0b11, 1:30, 12]\n",
         "a: !!int \u0663\n", "a: !!int 12\n", "a: !!str 12\n", "a: {b: !!map {c: 1}}\n",
         "a: !!seq [1, 2]\n", "a: &x {b: [1, 2]}\nc: {<<: *x, d: 2}\nd: *x\n",
         "a: &x [1]\nb: [*x, *x]\n", "a:\n  - {b: 1, b: 2}\n", "a: [1, {b: [c, 1.5e3]}]\n",
         "a: 8\nb: '8'\nc: \"8\"\nd: [8, 8]\ne: !!str 8\nf: 8\n", "a: ['8', 8, \"8\"]\n"]
needs_libyaml = pytest.mark.skipif(not yaml.__with_libyaml__,
                                   reason="PyYAML without libyaml: one loader, nothing to compare")


def marked(value):
    """A loaded YAML value with every mark it carries, and each scalar's type."""
    if isinstance(value, dict):
        return {k: (marked(v), value.key_marks[k], value.value_marks[k])
                for k, v in value.items()}, value.mark
    if isinstance(value, list):
        return [marked(v) for v in value], value.mark, list(value.marks)
    return value, type(value)


def outcome(load, *args):
    """What `load(*args)` gives: the value, or the message of the error it raises."""
    try:
        return load(*args)
    except GraphcError as exc:
        return f"error: {exc}"


def python_only(monkeypatch):
    """load_yaml as it runs where PyYAML has no libyaml, every int through PyYAML's own
    constructor and every tag resolved anew."""
    monkeypatch.setattr(yamlload, "_shallow", lambda text: False)
    monkeypatch.setattr(yamlload, "_FastLoader", yamlload._Loader)
    monkeypatch.setattr(yamlload, "_decimal", lambda text: False)
    monkeypatch.setattr(yamlload._Bounded, "resolve", yaml.resolver.BaseResolver.resolve)


def load_marked(text):
    return marked(yamlload.load_yaml(text, "f.yaml"))


@needs_libyaml
@pytest.mark.parametrize("text", TEXTS, ids=lambda t: t[:24])
def test_a_text_loads_the_same_with_and_without_libyaml(text, monkeypatch):
    fast = outcome(load_marked, text)
    python_only(monkeypatch)
    assert fast == outcome(load_marked, text)


@needs_libyaml
@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_a_spec_file_loads_or_fails_the_same_with_and_without_libyaml(path, monkeypatch):
    fast = outcome(load_marked, path.read_text(encoding="utf-8"))
    fast_spec = outcome(lambda: repr(load_spec(path)))
    python_only(monkeypatch)
    assert fast == outcome(load_marked, path.read_text(encoding="utf-8"))
    assert fast_spec == outcome(lambda: repr(load_spec(path)))


def test_an_aliased_value_is_one_object_as_pyyaml_constructs_it():
    loaded = yamlload.load_yaml("a: &x [1]\nb: [*x, *x]\nc: &y {d: 1}\ne: *y\n", "f.yaml")
    assert loaded["b"][0] is loaded["b"][1] is loaded["a"] and loaded["e"] is loaded["c"]


def test_plain_decimal_ints_are_read_as_yaml_reads_them():
    assert [yamlload._decimal(t) for t in ("0", "7", "12", "010", "00", "+5", "1_0",
                                           "\u0663", "")] == [True, True, True] + [False] * 6
