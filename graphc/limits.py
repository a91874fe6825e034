"""The memory limit: how many bytes any one step of a run may allocate.

Every stage that is about to allocate in proportion to its input (parsing a spec,
reading a data file or checkpoint, drawing a parameter, binding a plan's arena)
asks `check_memory` first, so an input too large for the machine is a located
error (exit 2) before the allocation, not an out-of-memory kill after it. The
limit is `--max-memory`, else $GRAPHC_MAX_MEMORY, else half of RAM.
"""
from __future__ import annotations

import functools
import gc
import math
import os
from typing import Optional

from .errors import Mark, SpecError

MEMORY_ENV = "GRAPHC_MAX_MEMORY"
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30,
          "gb": 2**30, "t": 2**40, "tb": 2**40,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_limit: Optional[int] = None


def parse_bytes(text: str) -> int:
    """'512M', '2G', '1.5gb', '64MiB', '1000000' -> bytes (binary units); ValueError if
    unreadable, infinite or under one byte."""
    s = str(text).strip().lower()
    digits = s.rstrip("kmgtib")
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
    return _half_of_ram()


@functools.lru_cache(maxsize=None)
def _half_of_ram() -> int:
    """Half of this machine's RAM (read once: every param's draw asks), else 8 GiB."""
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
    return "1 byte" if n == 1 else f"{n} bytes"


def fmt_bytes_exact(n: int) -> str:
    """2000 -> '2.0 KiB (2000 bytes)': the unit for reading and the count for typing back;
    below 1 KiB the count alone ('1 byte', '512 bytes'), never said twice."""
    return f"{fmt_bytes(n)} ({n} bytes)" if 1024 <= n < HUGE else fmt_bytes(n)


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


def paused_gc(compile_pass):
    """Run `compile_pass` with Python's cyclic garbage collector paused (as mypy raises its
    threshold). A pass allocates a few objects per node and frees them by reference
    counting; the collector would re-scan every live one as the heap grows, about a third
    of compile time on a 100,000-node graph. It runs again, as before, afterwards."""
    @functools.wraps(compile_pass)
    def paused(*args, **kwargs):
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return compile_pass(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()
    return paused
