"""YAML text -> plain dicts/lists that remember where each key and value came from.

A SafeLoader subclass: duplicate keys are errors, object-constructing tags are
errors, alias expansion and nesting depth are bounded, booleans and exponent floats
follow YAML 1.2, and every mapping/sequence carries the line and column of its items
so later stages can point at the YAML (`check_keys` names an unknown key's place).
"""
from __future__ import annotations

import re
from typing import Mapping, Optional

import yaml

from .errors import Mark, SpecError, clip, did_you_mean

from .limits import check_memory

MAX_ALIAS_EXPANSION = 100_000   # values that aliases may add once expanded (billion laughs)
MAX_VALUES = 250_000            # values written out; PyYAML takes ~0.1 ms and ~5 KB each
PARSE_BYTES_PER_CHAR = 200      # PyYAML's peak memory per character of text, measured
MAX_DEPTH = 100                 # nested maps/lists; PyYAML's composer recurses per level
PLAIN_KEY_TAGS = {"tag:yaml.org,2002:" + t for t in ("str", "int", "float", "bool")}
BOOL_TAG = "tag:yaml.org,2002:bool"
FLOAT_TAG = "tag:yaml.org,2002:float"
STR_TAG = "tag:yaml.org,2002:str"
INT_TAG = "tag:yaml.org,2002:int"
MAP_TAG = yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG
SEQ_TAG = yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG
REJECTED_TAGS = ("binary", "omap", "pairs", "set")


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


def without(mapping: Mapping, keys) -> Mapping:
    """A copy of a (marked) mapping without `keys`, keeping its marks for error messages."""
    copy = type(mapping)((k, v) for k, v in mapping.items() if k not in keys)
    for attr in ("mark", "key_marks", "value_marks"):
        if hasattr(mapping, attr):
            setattr(copy, attr, getattr(mapping, attr))
    return copy


def check_keys(mapping: MarkedDict, allowed, where: str, node: Optional[str] = None):
    """Unknown keys are errors at the key, with the closest allowed key; never ignored."""
    for key in mapping:
        if key not in allowed:
            raise SpecError(f"unknown key '{key}' in {where}", mark=mapping.key_marks[key],
                            node=node, hint=did_you_mean(key, allowed) or
                            "allowed keys: " + ", ".join(allowed))


class _Bounded:
    """SafeLoader's hooks: marks in graphc's form, bounded values, depth and aliases, and
    bad scalars as spec errors. Mixed into a loader ahead of yaml's Composer."""
    reached_once = False    # True where the text holds no anchor: no node has two parents

    def _start(self, filename):
        self.filename = filename
        self.depth = 0
        self.expansion = 0
        self.values = 0
        self.sizes: dict = {}    # id(node) -> values in its alias-expanded tree

    def mark(self, node) -> Mark:
        return self.at(node.start_mark)

    def at(self, yaml_mark) -> Mark:
        return Mark(self.filename, yaml_mark.line + 1, yaml_mark.column + 1)

    def resolve(self, kind, value, implicit):
        """The tag of a node, as PyYAML resolves it, without trying the implicit resolvers
        where none applies: a quoted scalar, or one whose first character starts none
        (names such as `h1`; graphc adds no path resolvers)."""
        if kind is yaml.ScalarNode and not self.yaml_path_resolvers:
            table = self.yaml_implicit_resolvers
            if not implicit[0] or (value[:1] not in table and None not in table):
                return self.DEFAULT_SCALAR_TAG
        return super().resolve(kind, value, implicit)

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            return self._alias(parent, index)
        self.depth += 1
        self.values += 1
        if self.values > MAX_VALUES:
            raise SpecError(f"the spec holds more than {MAX_VALUES} YAML values",
                            mark=self.at(self.peek_event().start_mark),
                            hint="a spec describes a model; put data and large values in "
                                 "files (train.data, --init-from)")
        if self.depth > MAX_DEPTH:
            raise SpecError(f"YAML nested deeper than {MAX_DEPTH} levels",
                            mark=self.at(self.peek_event().start_mark),
                            hint="a spec needs a few levels; flatten this value")
        try:
            node = super().compose_node(parent, index)
        finally:
            self.depth -= 1
        if self.anchors:        # sizes are read only for anchored nodes, whose whole tree
            children = node.value if isinstance(node.value, list) else []   # comes after
            pairs = (c if isinstance(c, tuple) else (c,) for c in children)  # the anchor
            self.sizes[id(node)] = 1 + sum(self.sizes.get(id(n), 1) for p in pairs for n in p)
        return node

    def _alias(self, parent, index):
        """An alias counts as the values it expands to; the total is bounded."""
        event = self.peek_event()
        node = self.anchors.get(event.anchor)
        if node is not None and id(node) not in self.sizes:
            raise SpecError(f"alias *{event.anchor} refers to the node that contains it",
                            mark=self.at(event.start_mark),
                            hint="a recursive value cannot be written out")
        if node is not None:
            self.expansion += self.sizes[id(node)]
            if self.expansion > MAX_ALIAS_EXPANSION:
                raise SpecError(f"YAML aliases expand to more than {MAX_ALIAS_EXPANSION} "
                                "values", mark=self.at(event.start_mark),
                                hint="write the values out; specs bound aliases so a small "
                                     "file cannot expand to gigabytes")
        return super().compose_node(parent, index)

    def construct_object(self, node, deep=False):
        """Bad scalars under standard tags (`!!float abc`) are spec errors at their line."""
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, OverflowError):
            kind = node.tag.rsplit(":", 1)[-1]
            raise SpecError(f"'{clip(str(node.value))}' is not a valid {kind}",
                            mark=self.mark(node), hint="drop the !! tag or fix the value"
                            ) from None


class _Loader(_Bounded, yaml.SafeLoader):
    """PyYAML's own parser: the one whose syntax error messages graphc reports."""

    def __init__(self, stream, filename):
        yaml.SafeLoader.__init__(self, stream)
        self._start(filename)


if yaml.__with_libyaml__:
    from yaml._yaml import CParser

    class _FastLoader(_Bounded, yaml.composer.Composer, yaml.constructor.SafeConstructor,
                      yaml.resolver.Resolver, CParser):
        """The same loader over libyaml's event parser: ~5x faster on a large spec (a
        100,000-node chain parses in about a second instead of eight)."""

        def __init__(self, stream, filename):
            CParser.__init__(self, stream)
            yaml.composer.Composer.__init__(self)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)
            self._start(filename)
    class _ComposedLoader(_Bounded, yaml.constructor.SafeConstructor, yaml.resolver.Resolver,
                          CParser):
        """libyaml composes the nodes as well (no Python call per event): 2-3x faster
        again, for texts whose nesting `_shallow` bounds (libyaml's composer recurses in
        C without a limit) and that hold no anchors; the depth and value limits are
        checked on the composed tree (`_within_limits`)."""
        reached_once = True     # `_shallow` texts hold no anchors, so no aliases

        def __init__(self, stream, filename):
            CParser.__init__(self, stream)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)
            self._start(filename)

        def get_single_node(self):
            root = super().get_single_node()
            if root is not None and not _within_limits(root):
                raise _Unchecked
            return root
else:                                   # pragma: no cover - a PyYAML without libyaml
    _FastLoader = _ComposedLoader = _Loader


class _Unchecked(Exception):
    """The composed tree breaks a limit: the event-by-event loaders word the error."""


MAX_C_LINE = 1000       # longest line libyaml may compose: nesting then stays under ~3,000
_BRACKETED = re.compile(r"^.*[][{}].*$", re.MULTILINE)
_COMMENT = re.compile(r"(?:^|\s)#")


def _shallow(text: str) -> bool:
    """Can libyaml compose `text` without deep recursion? A block collection nests in
    another at a larger column, or a sequence in a mapping at the same one, so block
    nesting is at most twice the longest line; a flow collection opened and closed on
    one line nests at most as deep as its brackets there. So: no anchors (aliases are
    bounded by the Python composer), no line over MAX_C_LINE, and every line holding a
    bracket holds no quote and balances its brackets (comments aside)."""
    if "&" in text or max(map(len, text.splitlines()), default=0) > MAX_C_LINE:
        return False
    for line in _BRACKETED.findall(text):
        if "'" in line or '"' in line:
            return False
        depth = 0
        for ch in _COMMENT.split(line, 1)[0]:
            if ch in "[{":
                depth += 1
            elif ch in "]}":
                depth -= 1
                if depth < 0:
                    return False
        if depth:
            return False
    return True


def _within_limits(root) -> bool:
    """At most MAX_VALUES nodes, nested at most MAX_DEPTH deep (root at depth 1), as the
    Python composer counts them."""
    level, values, depth = [root], 0, 0
    while level:
        values, depth = values + len(level), depth + 1
        if values > MAX_VALUES or depth > MAX_DEPTH:
            return False
        below = []
        for node in level:
            if isinstance(node.value, list):
                for child in node.value:
                    below.extend(child) if isinstance(child, tuple) else below.append(child)
        level = below
    return True


def _key(loader: _Loader, key_node) -> str:
    """A key as written: `on:` and `1:` are the names 'on' and '1', not True and 1."""
    if isinstance(key_node, yaml.ScalarNode) and key_node.tag in PLAIN_KEY_TAGS:
        return key_node.value
    raise SpecError(f"mapping keys must be plain names, got {_describe(key_node)}",
                    mark=loader.mark(key_node), hint="write name: value")


def _describe(node) -> str:
    if isinstance(node, yaml.ScalarNode):
        return "null" if node.tag.endswith(":null") else repr(node.value)
    return "a list" if isinstance(node, yaml.SequenceNode) else "a mapping"


def _value(loader: _Loader, node):
    """construct_object(node, deep=True), without its bookkeeping where that changes
    nothing: a string or a plain decimal int (most of a spec's values: names, expressions,
    dims), and, in a text without anchors (`reached_once`), a plain map or list."""
    tag = node.tag
    if tag == STR_TAG and type(node) is yaml.ScalarNode:
        return node.value
    if tag == INT_TAG and type(node) is yaml.ScalarNode and _decimal(node.value):
        return int(node.value)
    if loader.reached_once:
        if tag == MAP_TAG and type(node) is yaml.MappingNode:
            return _construct_mapping(loader, node)
        if tag == SEQ_TAG and type(node) is yaml.SequenceNode:
            return _construct_sequence(loader, node)
    return loader.construct_object(node, deep=True)


def _decimal(text: str) -> bool:
    """Digits 0-9 with no leading zero (YAML reads 010 as octal): int(text) is its value."""
    return text.isascii() and text.isdigit() and (text[0] != "0" or text == "0")


def _construct_mapping(loader: _Loader, node, deep=False):
    out = MarkedDict()
    filename = loader.filename
    out.mark, key_marks, value_marks = loader.mark(node), {}, {}
    out.key_marks, out.value_marks = key_marks, value_marks
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = _key(loader, key_node)
        if key in out:
            first = key_marks[key]
            raise SpecError(f"duplicate key '{key}' (first defined at line {first.line})",
                            mark=loader.mark(key_node), hint="remove or rename one of them")
        out[key] = _value(loader, value_node)
        m = key_node.start_mark
        key_marks[key] = Mark(filename, m.line + 1, m.column + 1)
        m = value_node.start_mark
        value_marks[key] = Mark(filename, m.line + 1, m.column + 1)
    return out


def _construct_sequence(loader: _Loader, node, deep=False):
    out = MarkedList(_value(loader, child) for child in node.value)
    out.mark = loader.mark(node)
    filename = loader.filename
    out.marks = [Mark(filename, child.start_mark.line + 1, child.start_mark.column + 1)
                 for child in node.value]
    return out


def _reject_tag(loader: _Loader, suffix, node):
    tag = node.tag.replace("tag:yaml.org,2002:", "!!")
    raise SpecError(f"YAML tag '{tag}' is not allowed", mark=loader.mark(node),
                    hint="specs are data: use plain maps, lists, strings and numbers")


# YAML 1.2 booleans: only true/false; `on`, `no`, `y` stay names (the "Norway problem")
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))
# YAML 1.2 floats: `1e-3` and `1.5e3` are numbers (YAML 1.1 reads them as text, as it
# wants a dot and a signed exponent: 1.0e-3, 1.5e+3)
_Loader.add_implicit_resolver(
    FLOAT_TAG, re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)
# a date such as 2024-01-31 stays the text it is; graphc has no use for datetimes
_Loader.add_constructor("tag:yaml.org,2002:timestamp", yaml.SafeLoader.construct_yaml_str)
for _tag in REJECTED_TAGS:
    _Loader.add_constructor(f"tag:yaml.org,2002:{_tag}",
                            lambda loader, node: _reject_tag(loader, None, node))
_Loader.add_multi_constructor("", _reject_tag)
_Loader.add_multi_constructor("tag:yaml.org,2002:python/", _reject_tag)
for _table in ("yaml_implicit_resolvers", "yaml_constructors", "yaml_multi_constructors"):
    setattr(_FastLoader, _table, getattr(_Loader, _table))
    setattr(_ComposedLoader, _table, getattr(_Loader, _table))


def load_yaml(text: str, filename: str):
    """Parse one YAML document; syntax errors become SpecError with file:line:col. The
    parse's memory (PARSE_BYTES_PER_CHAR per character) counts against the memory limit,
    and at most MAX_VALUES values are read."""
    check_memory(len(text) * PARSE_BYTES_PER_CHAR, f"parsing the spec's {len(text)} "
                 "characters", mark=Mark(filename, 1, 1))
    loaders = ((_ComposedLoader,) if _shallow(text) else ()) + (_FastLoader,)
    for loader in loaders:
        try:
            return _parse(loader, text, filename)
        except (yaml.YAMLError, _Unchecked):
            pass        # invalid YAML: PyYAML's own parser words the error, as it always has
        except SpecError:
            if loader is _FastLoader:
                raise
    try:
        return _parse(_Loader, text, filename)
    except yaml.reader.ReaderError as exc:
        raise _reader_error(exc, text, filename) from None
    except yaml.MarkedYAMLError as exc:
        m = exc.problem_mark or exc.context_mark
        mark = Mark(filename, m.line + 1, m.column + 1) if m else Mark(filename, 1, 1)
        what = exc.problem or exc.context or "invalid YAML"
        c = exc.context_mark
        context = [f"{exc.context} that starts at line {c.line + 1}, column {c.column + 1}"
                   ] if exc.problem and exc.context and c and c.line != m.line else []
        raise SpecError(f"YAML syntax error: {what}", mark=mark, context=context,
                        hint="check indentation and quoting on that line") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"YAML error: {exc}", mark=Mark(filename, 1, 1)) from None


def _parse(loader_class, text: str, filename: str):
    """The document as MarkedDicts and MarkedLists; yaml's own errors pass through."""
    loader = loader_class(text, filename)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _reader_error(exc, text: str, filename: str) -> SpecError:
    """A character YAML forbids (NUL, BEL, ...), located by its position in the text."""
    pos = exc.position
    line, col = text.count("\n", 0, pos) + 1, pos - text.rfind("\n", 0, pos)
    char = exc.character if isinstance(exc.character, str) else chr(exc.character)
    return SpecError(f"character U+{ord(char):04X} is not allowed in YAML",
                     mark=Mark(filename, line, col),
                     hint="delete it; write control characters as escapes in quoted strings")
