"""YAML text -> plain dicts/lists that remember where each key and value came from.

A SafeLoader subclass: duplicate keys are errors, object-constructing tags are
errors, alias expansion is bounded, and every mapping/sequence carries the
line and column of its items so later stages can point at the YAML.
"""
from __future__ import annotations

import yaml

from .errors import Mark, SpecError

MAX_ALIASES = 100


class MarkedDict(dict):
    """A mapping with `mark` (where it starts) and `key_marks`/`value_marks` per key."""
    mark: Mark
    key_marks: dict
    value_marks: dict

    def mark_of(self, key) -> Mark:
        return self.value_marks.get(key, self.mark)


class MarkedList(list):
    """A sequence with `mark` and one mark per item in `marks`."""
    mark: Mark
    marks: list

    def mark_of(self, i) -> Mark:
        return self.marks[i] if i < len(self.marks) else self.mark


class _Loader(yaml.SafeLoader):
    def __init__(self, stream, filename):
        super().__init__(stream)
        self.filename = filename
        self.alias_count = 0

    def mark(self, node) -> Mark:
        return Mark(self.filename, node.start_mark.line + 1, node.start_mark.column + 1)

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.alias_count += 1
            if self.alias_count > MAX_ALIASES:
                event = self.peek_event()
                m = Mark(self.filename, event.start_mark.line + 1, event.start_mark.column + 1)
                raise SpecError(f"more than {MAX_ALIASES} YAML aliases", mark=m,
                                hint="write the values out; specs bound aliases so a "
                                     "small file cannot expand to gigabytes")
        return super().compose_node(parent, index)


def _construct_mapping(loader: _Loader, node, deep=False):
    out = MarkedDict()
    out.mark, out.key_marks, out.value_marks = loader.mark(node), {}, {}
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool)) or key is None:
            raise SpecError(f"mapping keys must be plain names, got {key!r}",
                            mark=loader.mark(key_node))
        key = str(key)
        if key in out:
            first = out.key_marks[key]
            raise SpecError(f"duplicate key '{key}' (first defined at line {first.line})",
                            mark=loader.mark(key_node), hint="remove or rename one of them")
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_marks[key] = loader.mark(key_node)
        out.value_marks[key] = loader.mark(value_node)
    return out


def _construct_sequence(loader: _Loader, node, deep=False):
    out = MarkedList(loader.construct_object(child, deep=True) for child in node.value)
    out.mark = loader.mark(node)
    out.marks = [loader.mark(child) for child in node.value]
    return out


def _reject_tag(loader: _Loader, suffix, node):
    raise SpecError(f"YAML tag '{node.tag}' is not allowed", mark=loader.mark(node),
                    hint="specs are data: use plain maps, lists, strings and numbers")


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)
_Loader.add_multi_constructor("", _reject_tag)
_Loader.add_multi_constructor("tag:yaml.org,2002:python/", _reject_tag)


def load_yaml(text: str, filename: str):
    """Parse one YAML document; syntax errors become SpecError with file:line:col."""
    loader = _Loader(text, filename)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        m = exc.problem_mark or exc.context_mark
        mark = Mark(filename, m.line + 1, m.column + 1) if m else Mark(filename, 1, 1)
        what = exc.problem or exc.context or "invalid YAML"
        raise SpecError(f"YAML syntax error: {what}", mark=mark,
                        hint="check indentation and quoting on that line") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"YAML error: {exc}", mark=Mark(filename, 1, 1)) from None
    finally:
        loader.dispose()
