"""Errors a user can act on: where (file:line:col), which node, what was expected, a fix.

Every stage raises `SpecError` (bad input, exit 2) or `CheckFailed` (a check
the user asked for failed, exit 1). The CLI prints `str(err)` after `error: `
and never a traceback.
"""
from __future__ import annotations

import difflib
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
    """repr(value) clipped to 40 characters: what the spec held, quoted into a message."""
    return clip(repr(value))


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
