"""Errors a user can act on: where (file:line:col), which node, what was expected, a fix.

Every stage raises `SpecError` (bad input, exit 2) or `CheckFailed` (a check
the user asked for failed, exit 1). The CLI prints `str(err)` after `error: `
and never a traceback.
"""
from __future__ import annotations

import difflib
import math
import numbers
import re
from dataclasses import dataclass
from typing import Iterable, Optional


@dataclass(frozen=True)
class Mark:
    """A place in a file: 1-based line and column; inside a reusable block's definition,
    also the block and the instance (the node that instantiates it) the place belongs to."""
    file: str
    line: int
    col: int
    block: Optional[str] = None
    instance: Optional[str] = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class GraphcError(Exception):
    """Base of graphc's user-facing errors; `exit_code` is what the CLI returns."""
    exit_code = 2

    def __init__(self, message: str, *, mark: Optional[Mark] = None,
                 node: Optional[str] = None, hint: Optional[str] = None,
                 context: Iterable[str] = ()):
        self.message = message
        self.mark = mark
        self.node = node
        self.hint = hint
        self.context = tuple(context)
        super().__init__(str(self))

    def __str__(self) -> str:
        head = f"{self.mark}: " if self.mark else ""
        if self.mark and self.mark.block:
            head += f"block '{self.mark.block}'" + (f", instance '{self.mark.instance}'"
                                                     if self.mark.instance else "") + ": "
        where = f"node '{self.node}': " if self.node else ""
        tail = f"; {self.hint}" if self.hint else ""
        lines = [f"{head}{where}{self.message}{tail}"]
        lines += [f"  {c}" for c in self.context]
        return "\n".join(one_line(line) for line in lines)


def one_line(text: str) -> str:
    """`text` with newlines and other unprintable characters escaped: one terminal line,
    whatever the spec's text quoted into the message held."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def clip(text: str, limit: int = 40) -> str:
    """`text` cut to `limit` characters, ending in '...' when cut: a quote in a message."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def short(value) -> str:
    """yaml_text(value) clipped to 40 characters: what the spec held, quoted into a message."""
    return clip(yaml_text(value))


PLAIN = re.compile(r"[A-Za-z_][\w.\-/]*")
YAML_WORDS = {"true", "false", "null"}     # YAML 1.2's, as the loader reads them


def yaml_text(value, nested: bool = False) -> str:
    """A spec's value spelled as YAML, the way the user wrote it: true, null, .inf,
    [a, 2], {k: v}; not Python's True, None, inf, ['a', 2], {'k': 'v'}. A string is
    quoted ('it''s') at the top, where it stands in a sentence, and plain inside a list
    or mapping where YAML reads it back as the same string."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        value = float(value)
        return repr(value) if math.isfinite(value) else \
            {math.inf: ".inf", -math.inf: "-.inf"}.get(value, ".nan")
    if isinstance(value, str):
        plain = nested and PLAIN.fullmatch(value) and value.lower() not in YAML_WORDS
        return value if plain else "'" + value.replace("'", "''") + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_text(v, True) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{yaml_text(k, True)}: {yaml_text(v, True)}"
                               for k, v in value.items()) + "}"
    return repr(value)


class SpecError(GraphcError):
    """Bad input: the spec, its data, or a flag (exit 2)."""
    exit_code = 2


class CheckFailed(GraphcError):
    """A check that ran to completion and failed: gradcheck, NaN in training (exit 1)."""
    exit_code = 1


def did_you_mean(word: str, choices: Iterable[str]) -> Optional[str]:
    """'did you mean X?' for the closest choice by edit similarity, or None."""
    close = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.5)
    return f"did you mean '{close[0]}'?" if close else None
