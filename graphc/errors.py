"""Errors a user can act on: where (file:line:col), which node, what was expected, a fix.

Every stage raises `SpecError` (bad input, exit 2) or `CheckFailed` (a check
the user asked for failed, exit 1). The CLI prints `str(err)` after `error: `
and never a traceback.
"""
from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass
from typing import Iterable, Optional


@dataclass(frozen=True)
class Mark:
    """A place in a file: 1-based line and column."""
    file: str
    line: int
    col: int

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


MEMORY_ENV = "GRAPHC_MAX_MEMORY"
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30,
          "gb": 2**30, "t": 2**40, "tb": 2**40}
_limit: Optional[int] = None


def parse_bytes(text: str) -> int:
    """'512M', '2G', '1.5gb', '1000000' -> bytes (binary units); ValueError if unreadable,
    infinite or under one byte."""
    s = str(text).strip().lower()
    digits = s.rstrip("kmgtb")
    value, unit = float(digits), s[len(digits):]
    if unit not in _UNITS or not math.isfinite(value) or int(value * _UNITS[unit]) < 1:
        raise ValueError(f"not a size: {text!r}")
    return int(value * _UNITS[unit])


def set_memory_limit(size) -> None:
    """Set this process's memory limit (the CLI's --max-memory): bytes, or text such as
    '512M'; None resets it to $GRAPHC_MAX_MEMORY or half of RAM."""
    global _limit
    try:
        _limit = parse_bytes(size) if isinstance(size, str) else size
    except ValueError:
        raise SpecError(f"--max-memory is '{size}', expected a size such as 512M or 4G"
                        ) from None


def memory_limit() -> int:
    """Bytes any one step of a run may allocate (parsing the spec, reading a data file or
    checkpoint, a parameter and its initializer, a plan arena): --max-memory,
    $GRAPHC_MAX_MEMORY, or half of RAM."""
    if _limit is not None:
        return _limit
    if os.environ.get(MEMORY_ENV):
        try:
            return parse_bytes(os.environ[MEMORY_ENV])
        except ValueError:
            raise SpecError(f"${MEMORY_ENV} is '{os.environ[MEMORY_ENV]}', expected a size "
                            "such as 512M or 4G") from None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (AttributeError, ValueError, OSError):
        return 8 * 2**30


HUGE = 2**100      # beyond any machine: sizes above it are given by their digit count


def fmt_bytes(n: int) -> str:
    """1536 -> '1.5 KiB': the largest binary unit that n reaches, one decimal."""
    if n >= HUGE:
        return f"over 10^{len(str(n)) - 1} bytes"
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def check_memory(nbytes: int, what: str, *, mark: Optional[Mark] = None,
                 node: Optional[str] = None) -> None:
    """SpecError before allocating: `what` would need `nbytes`, above the memory limit."""
    limit = memory_limit()
    if nbytes > limit:
        size = f" ({fmt_bytes(nbytes)})" if 1024 <= nbytes < HUGE else ""
        count = f"{nbytes} bytes" if nbytes < HUGE else fmt_bytes(nbytes)
        raise SpecError(f"{what} needs {count}{size}, above the memory "
                        f"limit of {fmt_bytes(limit)}", mark=mark, node=node,
                        hint=f"make it smaller, or raise the limit with --max-memory or "
                             f"${MEMORY_ENV}")
