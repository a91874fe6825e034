"""The shape of the house (STYLE.md): stage imports point one way, nothing imports cli, small modules.

An `ast` walk over graphc/*.py, imports inside functions included (cli.py imports
lazily). A module may import only modules that come before it in STAGES. A new
module must be placed in STAGES by whoever adds it: the test names it. STAGES may name
a module that is not committed yet (parallel work), so a clean clone still passes.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "graphc"

# Earlier stages first. A module imports only modules to its left.
STAGES = [
    "errors", "outfiles", "interrupts",                     # errors, files written, signals
    "shapes", "ops",                                        # the vocabulary
    "yamlload", "leaves", "expr", "layers", "spec",         # spec text -> validated spec
    "ir", "autodiff", "step",                               # graph, reverse graph, step
    "arena", "plan", "dot", "memsvg",                       # the planner and its pictures
    "workspace", "binders", "kernels_nn", "kernels", "executor",    # NumPy execution
    "initializers", "datasets", "datafiles", "datasources", "data",  # data and init
    "metrics", "schedules",
    "model", "checkpoint", "gradcheck", "explain", "annotate",      # commands' parts
    "guard", "timing", "plots", "trainconfig", "train",
    "predict", "api",                                       # using a trained model
    "cli_common", "cli_grad", "cli_plan", "cli_predict", "cli_train",   # one per family
    "cli", "__main__",                                      # the front door
]
ENTRY_POINTS = {"cli", "__main__"}      # the front door; __main__ alone may import cli
PACKAGE_INIT = "__init__"               # docstring, version, and the API (imported lazily)
INIT_IMPORTS = {"api"}

MAX_LINES = 400
# Modules over MAX_LINES today, each with the size it may not grow past. A ratchet, not
# a pass: shrink the number when the module is split, delete the entry when it fits.
OVERSIZE: dict = {}


def modules() -> dict:
    """module name -> parsed source, for every graphc/*.py."""
    return {p.stem: ast.parse(p.read_text(encoding="utf-8"), filename=str(p))
            for p in sorted(PACKAGE.glob("*.py"))}


def imported(tree: ast.Module, known) -> set:
    """The graphc modules a module imports, relative or absolute, at any depth."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module is None:            # from . import shapes
                out |= {a.name for a in node.names}
            elif node.level == 1:                                  # from .ir import Graph
                out.add(node.module.split(".")[0])
            elif node.level == 0 and node.module == "graphc":      # from graphc import ir
                out |= {a.name for a in node.names}
            elif node.level == 0 and (node.module or "").startswith("graphc."):
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names
                    if a.name.startswith("graphc.")}
    return out & set(known)


MODULES = modules()


def test_every_module_has_a_place_in_the_stage_order():
    unplaced = sorted(set(MODULES) - set(STAGES) - {PACKAGE_INIT})
    assert not unplaced, (
        f"graphc module(s) {unplaced} are not in STAGES of tests/test_architecture.py: "
        "insert each after the last stage it imports and before every stage that imports it")


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_to_earlier_stages(name):
    if name == PACKAGE_INIT:
        assert imported(MODULES[name], MODULES) <= INIT_IMPORTS, \
            "graphc/__init__.py imports stages other than the public API"
        return
    if name not in STAGES:
        pytest.fail(f"graphc/{name}.py is not placed in STAGES (see the test above)")
    rank = STAGES.index(name)
    later = sorted(m for m in imported(MODULES[name], MODULES)
                   if m in STAGES and STAGES.index(m) >= rank)
    assert not later, (f"graphc/{name}.py imports {later}, which come at or after it in "
                       f"the stage order; imports must point to earlier stages only")


def test_nothing_imports_cli():
    importers = sorted(name for name, tree in MODULES.items()
                       if name not in ENTRY_POINTS and "cli" in imported(tree, MODULES))
    assert not importers, f"{importers} import graphc.cli; only __main__ may"


def test_modules_are_small():
    sizes = {name: len((PACKAGE / f"{name}.py").read_text(encoding="utf-8").splitlines())
             for name in MODULES}
    biggest = max(sizes, key=sizes.get)
    over = {name: n for name, n in sizes.items() if n > OVERSIZE.get(name, MAX_LINES)}
    assert not over, (f"modules over their line budget ({MAX_LINES}, or OVERSIZE): {over}; "
                      f"the biggest is {biggest}.py with {sizes[biggest]} lines")


def test_imported_sees_every_import_form():
    """The walker itself: relative, absolute, aliased and function-local imports all count."""
    src = ("from . import shapes as S\nfrom .ir import Graph\nimport graphc.plan\n"
           "from graphc import ops\nimport numpy\n"
           "def f():\n    from .cli import main\n")
    known = {"shapes", "ir", "plan", "ops", "cli", "spec"}
    assert imported(ast.parse(src), known) == {"shapes", "ir", "plan", "ops", "cli"}
