"""Reports of a rematerialized plan: `graphc plan`'s saved-values table (`--saved`), its JSON
("memory"), and what recomputing each value costs in flops."""
from __future__ import annotations

from . import shapes as S
from .limits import fmt_bytes
from .remat import PREFIX, Remat, node_flops


def forward_flops(r: Remat) -> int:
    """The forward pass's arithmetic: what the recomputation is measured against."""
    return sum(node_flops(r.graph, s.node, r.plan.dims) for s in r.plan.steps
               if s.phase == "forward")


def saved_rows(r: Remat) -> list:
    """One row per saved value: producer, bytes, kept or recomputed, recompute flops."""
    rows = []
    for v in r.saved:
        n, b = r.graph[v], r.plan.buffers[v]
        where = f" line {n.mark.line}" if n.mark else ""
        rows.append({"value": v, "producer": f"{n.op} ({n.origin or v}{where})",
                     "bytes": b.bytes, "kept": v not in r.clones,
                     "recompute_flops": r.value_flops(v) if v in r.clones else 0})
    return rows


def memory_json(r: Remat) -> dict:
    """`plan --json`'s "memory" object: the policy, the saved values and the arithmetic."""
    return {"policy": str(r.policy), "budget_bytes": r.policy.budget,
            "recompute_flops": r.recompute_flops, "forward_flops": forward_flops(r),
            "saved": saved_rows(r)}


def saved_table(r: Remat) -> str:
    """The saved values as a table, then what is kept and what recomputing costs."""
    rows = saved_rows(r)
    head = ("saved value", "producer", "bytes", "backward reads", "recompute flops")
    lines = [head] + [(x["value"], x["producer"], str(x["bytes"]),
                       "kept" if x["kept"] else f"recomputed ({PREFIX}{x['value']})",
                       str(x["recompute_flops"]) if not x["kept"] else "-") for x in rows]
    text = S.aligned(lines)
    kept = [x for x in rows if x["kept"]]   # rows, for their bytes
    fwd = forward_flops(r)
    share = f", {r.recompute_flops / fwd:.0%} of the forward pass" if fwd else ""
    text.append(f"memory policy {r.policy}: the backward pass keeps {len(kept)} of "
                f"{len(rows)} saved values ({fmt_bytes(sum(x['bytes'] for x in kept))}) and "
                f"recomputes {len(rows) - len(kept)} ({len(r.clones)} recompute steps, "
                f"{r.recompute_flops} flops{share})")
    return "\n".join(text)
