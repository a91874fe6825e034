"""The memory plan as a picture, written as SVG by hand (no plotting dependency).

x is the step, y the arena offset: each buffer is one bar covering steps
[first_step, last_step] and bytes [offset, offset + bytes), coloured by the phase of
the step that writes it. The peak (the arena), the liveness lower bound and the naive
total (one buffer per value, no reuse) are written on it.
"""
from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

from . import shapes as S
from .plan import Plan

PHASE_COLORS = {"forward": "#4c78a8", "backward": "#e45756", "update": "#f58518"}
RECOMPUTED_COLOR = "#54a24b"      # a recompute node's value (remat.py)
KEPT_STROKE = "#111111"           # a saved value kept for the backward pass: outlined
WIDTH, HEIGHT = 900, 440
LEFT, RIGHT, TOP, BOTTOM = 78, 24, 84, 56


def human(nbytes: int) -> str:
    if nbytes < 1024:
        return f"{nbytes} B"
    if nbytes < 2**20:
        return f"{nbytes / 1024:.1f} KiB"
    return f"{nbytes / 2**20:.2f} MiB"


class _Axes:
    """Step and byte coordinates -> SVG pixels (offset 0 at the bottom)."""

    def __init__(self, steps: int, top_bytes: int):
        self.w = (WIDTH - LEFT - RIGHT) / max(steps, 1)
        self.h = (HEIGHT - TOP - BOTTOM) / max(top_bytes, 1)

    def x(self, step: float) -> float:
        return LEFT + step * self.w

    def y(self, nbytes: float) -> float:
        return HEIGHT - BOTTOM - nbytes * self.h


def _text(x, y, body, anchor="start", **attrs) -> str:
    extra = "".join(f" {k.replace('_', '-')}={quoteattr(str(v))}" for k, v in attrs.items())
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>{escape(body)}</text>'


def _buffers(plan: Plan, ax: _Axes, kept=frozenset(), recomputed=frozenset()) -> list:
    """One bar per buffer, coloured by the writer's phase; recomputed values green, saved
    values the backward pass keeps outlined."""
    phase = {s.index: s.phase for s in plan.steps}
    out = []
    for b in plan.buffers.values():
        x0, x1 = ax.x(b.first_step), ax.x(b.last_step + 1)
        y0, y1 = ax.y(b.offset + b.bytes), ax.y(b.offset)
        tip = (f"{b.value} {S.fmt(b.shape)} {b.dtype}: {b.bytes} B at offset {b.offset}, "
               f"steps {b.first_step}..{b.last_step}"
               + (f", in place of {b.in_place_of}" if b.in_place_of else ""))
        color = PHASE_COLORS.get(phase[b.first_step], "#888888")
        kind, stroke = "", 'stroke="#ffffff" stroke-width="0.5"'
        if b.value in recomputed:
            kind, color, tip = " recomputed", RECOMPUTED_COLOR, tip + ", recomputed"
        elif b.value in kept:
            kind, tip = " kept", tip + ", kept for the backward pass"
            stroke = f'stroke="{KEPT_STROKE}" stroke-width="1.5"'
        out.append(f'<rect class="buffer{kind}" x="{x0:.2f}" y="{y0:.2f}" '
                   f'width="{x1 - x0:.2f}" height="{max(y1 - y0, 0.75):.2f}" fill="{color}" '
                   f'fill-opacity="0.85" {stroke}><title>{escape(tip)}</title></rect>')
    return out


def _axes(plan: Plan, ax: _Axes, top: int) -> list:
    n = len(plan.steps)
    base = HEIGHT - BOTTOM
    out = [f'<line x1="{LEFT}" y1="{base}" x2="{WIDTH - RIGHT}" y2="{base}" stroke="#333"/>',
           f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{base}" stroke="#333"/>']
    for s in plan.steps:      # a strip under the axis: the phase of every step
        out.append(f'<rect class="phase" x="{ax.x(s.index):.2f}" y="{base + 2}" '
                   f'width="{ax.w:.2f}" height="5" fill="{PHASE_COLORS.get(s.phase, "#888")}"/>')
    every = max(1, round(n / 12))
    for i in range(0, n, every):
        out.append(_text(ax.x(i + 0.5), base + 20, str(i), "middle", fill="#333"))
    out.append(_text(LEFT + (WIDTH - LEFT - RIGHT) / 2, HEIGHT - 12, "step", "middle"))
    for k in range(5):
        nbytes = top * k / 4
        out.append(f'<line x1="{LEFT - 4}" y1="{ax.y(nbytes):.1f}" x2="{LEFT}" '
                   f'y2="{ax.y(nbytes):.1f}" stroke="#333"/>')
        out.append(_text(LEFT - 7, ax.y(nbytes) + 4, human(int(nbytes)), "end", fill="#333"))
    mid = TOP + (base - TOP) / 2
    out.append(_text(16, mid, "arena offset", "middle", fill="#333",
                     transform=f"rotate(-90 16 {mid:.1f})"))
    return out


def _marks(plan: Plan, ax: _Axes) -> list:
    """The peak as a line labelled at the right, the lower bound dashed, labelled at the left."""
    out = []
    marks = ((plan.arena_bytes, "peak (arena)", "", WIDTH - RIGHT - 4, "end"),
             (plan.lower_bound_bytes, "lower bound", ' stroke-dasharray="6 4"', LEFT + 4,
              "start"))
    for nbytes, name, dash, x, anchor in marks:
        y = ax.y(nbytes)
        out.append(f'<line class="mark" x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" '
                   f'y2="{y:.1f}" stroke="#111"{dash}/>')
        out.append(_text(x, y - 4, f"{name} {human(nbytes)}", anchor, fill="#111"))
    return out


def _legend(remat: bool) -> list:
    out, x = [], LEFT
    entries = [(color, f"written in {phase}", "") for phase, color in PHASE_COLORS.items()]
    if remat:
        entries += [(RECOMPUTED_COLOR, "recomputed", ""),
                    ("#ffffff", "kept for backward", f' stroke="{KEPT_STROKE}"')]
    for color, label, stroke in entries:
        out.append(f'<rect x="{x}" y="48" width="12" height="12" fill="{color}"{stroke}/>')
        out.append(_text(x + 16, 58, label, fill="#333"))
        x += 140 if len(entries) <= 4 else 128
    return out


def memory_svg(plan: Plan, title: str = "memory plan", kept=(), recomputed=()) -> str:
    """The whole picture as one SVG document (one `rect.buffer` per planned value); with a
    rematerialized plan, the `recomputed` values and the saved values `kept` for the
    backward pass are drawn apart (classes `recomputed` and `kept`)."""
    kept, recomputed = frozenset(kept), frozenset(recomputed)
    top = max(plan.arena_bytes, plan.lower_bound_bytes, 1)
    ax = _Axes(len(plan.steps), top)
    saved = plan.naive_bytes / plan.arena_bytes if plan.arena_bytes else 1.0
    summary = (f"peak {human(plan.arena_bytes)} · lower bound {human(plan.lower_bound_bytes)}"
               f" · naive total {human(plan.naive_bytes)} ({saved:.2f}× the peak)"
               + (f" · batch {plan.batch_size}" if plan.batch_size else ""))
    body = ([f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
             _text(LEFT, 20, title, font_size=15, font_weight="bold"),
             _text(LEFT, 38, summary, fill="#333")]
            + _legend(bool(recomputed)) + _buffers(plan, ax, kept, recomputed)
            + _marks(plan, ax) + _axes(plan, ax, top))
    if not plan.buffers:
        body.append(_text(WIDTH / 2, HEIGHT / 2, "no arena buffers: every value is persistent",
                          "middle"))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="Helvetica, Arial, sans-serif" '
            f'font-size="11">\n<title>{escape(title)}</title>\n'
            + "\n".join(body) + "\n</svg>\n")
