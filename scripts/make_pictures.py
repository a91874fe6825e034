"""Regenerate the README's pictures in docs/img/: `python scripts/make_pictures.py`.

Writes each picture's source (the DOT text, and the hand-written memory SVG) and,
where Graphviz's `dot` is installed, renders the DOT to SVG beside it.
tests/test_pictures.py regenerates the sources and fails when the committed ones
differ (the Graphviz-rendered SVG is not compared: it varies with Graphviz's version).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMG = REPO / "docs" / "img"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from graphc.annotate import grad_dot  # noqa: E402
from graphc.dot import plan_dot, render  # noqa: E402
from graphc.memsvg import memory_svg  # noqa: E402
from graphc.model import load_model  # noqa: E402
from graphc.trainconfig import training_plan, training_remat  # noqa: E402
from bench_memory import deep_mlp  # noqa: E402


def spiral_plan():
    """The spiral MLP's training step compiled at the spec's batch size, as `graphc plan` does
    (the same function; `graphc.load(spec).plan()` gives the plan alone)."""
    step, plan = training_plan(load_model(REPO / "specs" / "spiral_mlp.yaml"))
    return step.graph, plan


def deep_memory(folder: Path, memory: str) -> str:
    """The arena of a deep MLP (8 ReLU layers of 64, batch 256) under `train.memory`."""
    spec = folder / "deep_mlp.yaml"
    spec.write_text(deep_mlp(8, 64) + f"  memory: {memory}\n")
    _, remat = training_remat(load_model(spec), 256)
    return memory_svg(remat.plan, f"8 layers of 64, batch 256, train.memory: {memory}",
                      remat.kept, remat.clones.values())


def sources() -> dict:
    """File name in docs/img -> its text."""
    lecture = load_model(REPO / "specs" / "lecture_cs231n_add_mul.yaml")
    graph, plan = spiral_plan()
    with tempfile.TemporaryDirectory() as tmp:
        deep = {f"deep_memory_{name}.svg": deep_memory(Path(tmp), memory)
                for name, memory in (("none", "{policy: none}"), ("sqrt", "{policy: sqrt}"))}
    return {
        "lecture_add_mul.dot": grad_dot(lecture, {}),
        "spiral_plan.dot": plan_dot(graph, plan),
        "spiral_memory.svg": memory_svg(plan, "spiral_mlp: the arena over one training step"),
        **deep,
    }


def main() -> int:
    IMG.mkdir(parents=True, exist_ok=True)
    for name, text in sources().items():
        path = IMG / name
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(REPO)}")
        if path.suffix == ".dot":
            svg = render(path, "svg")
            print(f"wrote {svg.relative_to(REPO)}" if svg else
                  f"Graphviz's dot is not installed: {path.name} was not rendered")
    return 0


if __name__ == "__main__":
    sys.exit(main())
