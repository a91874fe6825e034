"""The shape of the house (STYLE.md): imports point one way, folders keep to their layer.

An `ast` walk over graphc/ (packages included; imports inside functions too: cli.py
imports lazily). Three kinds of rule:
- a total order of *units* (a top-level module, or a package folder such as ops/ or
  backends/): a unit imports only units to its left in STAGES, and the modules of one
  package import each other freely;
- layer rules per folder: what a folder may import (LAYERS), and who may import it
  (IMPORTED_BY): backends see only ops, shapes, errors and plan, and only the executor
  sees a backend;
- a 400-line ceiling per module.
A new module must be placed in STAGES by whoever adds it: the test names it. STAGES may
name a module that is not committed yet (parallel work), so a clean clone still passes.
Each rule is a function over {module: ast}, run on graphc and on a fixture that
breaks it on purpose.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "graphc"

# Earlier stages first. A unit imports only units to its left.
STAGES = [
    "errors", "limits", "outfiles", "interrupts",           # errors, memory limit, files, signals
    "parallel",                                             # the MPI world (data parallel)
    "shapes", "ops",                                        # the vocabulary (ops/: records)
    "yamlload", "leaves", "exprforms", "expr", "layers", "seqlayers",   # spec text
    "blockdefs", "blocks", "spec",                          # -> validated spec
    "topo", "ir", "autodiff", "optim",                      # graph, reverse graph, updates
    "arena", "plan", "remat", "remat_report", "dot", "memsvg",   # the planner, its pictures
    "backends", "executor",                                 # kernels behind one interface
    "initializers", "datasets", "datafiles", "datasources", "data",  # data and init
    "metrics", "schedules",
    "model", "checkpoint", "gradcheck", "explain", "annotate",      # commands' parts
    "guard", "timing", "plots", "trainconfig", "evaluation", "train",
    "predict", "api",                                       # using a trained model
    "onnx",                                                 # ONNX export and import
    "cli_common", "cli_grad", "cli_plan", "cli_predict", "cli_train",   # one per family
    "cli_onnx",
    "cli", "__main__",                                      # the front door
]
# Folder -> the units outside it that it may import (its layer), beyond the order.
LAYERS = {
    "ops": {"shapes", "errors"},
    "backends": {"ops", "shapes", "errors", "plan", "parallel"},
}
# Folder -> the only units outside it that may import it.
IMPORTED_BY = {
    "backends": {"executor"},
}
ENTRY_POINTS = {"cli", "__main__"}      # the front door; __main__ alone may import cli
PACKAGE_INIT = "__init__"               # docstring, version, and the API (imported lazily)
INIT_IMPORTS = {"api"}

MAX_LINES = 400
# Modules over MAX_LINES today, each with the size it may not grow past. A ratchet, not
# a pass: shrink the number when the module is split, delete the entry when it fits.
OVERSIZE: dict = {}


def module_name(path: Path) -> str:
    """graphc/ops/record.py -> 'ops.record'; graphc/ops/__init__.py -> 'ops';
    graphc/__init__.py -> '__init__'."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def modules() -> dict:
    """module name -> parsed source, for every .py file under graphc/."""
    return {module_name(p): ast.parse(p.read_text(encoding="utf-8"), filename=str(p))
            for p in sorted(PACKAGE.rglob("*.py"))}


def is_package(name: str, known) -> bool:
    return any(k.startswith(name + ".") for k in known)


def _resolve(name: str, known) -> str:
    """The longest known module that `name` (dotted) names or lies inside."""
    parts = name.split(".")
    while parts and ".".join(parts) not in known:
        parts.pop()
    return ".".join(parts)


def imported(tree: ast.Module, known, module: str = "") -> set:
    """The graphc modules a module imports, relative or absolute, at any depth.

    `module` is the importer's dotted name: relative imports resolve against its package.
    """
    package = module if is_package(module, known) else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                prefix = ".".join(base + ([node.module] if node.module else []))
            elif node.module == "graphc" or (node.module or "").startswith("graphc."):
                prefix = node.module[len("graphc."):] if node.module != "graphc" else ""
            else:
                continue
            if node.module is None or prefix == "" or is_package(prefix, known):
                out |= {_resolve(f"{prefix}.{a.name}".lstrip("."), known) for a in node.names}
            else:
                out.add(_resolve(prefix, known))
        elif isinstance(node, ast.Import):
            out |= {_resolve(a.name[len("graphc."):], known) for a in node.names
                    if a.name.startswith("graphc.")}
    return {m for m in out if m in known} - {module}


def unit(name: str) -> str:
    """The stage a module belongs to: its top folder, or itself."""
    return name.split(".")[0]


def order_violations(mods: dict) -> list:
    """'a imports b' for each import of a unit at or after the importer's own in STAGES."""
    out = []
    for name, tree in mods.items():
        if name == PACKAGE_INIT or unit(name) not in STAGES:
            continue
        rank = STAGES.index(unit(name))
        for m in sorted(imported(tree, mods, name)):
            if unit(m) != unit(name) and unit(m) in STAGES and STAGES.index(unit(m)) >= rank:
                out.append(f"{name} imports {m}")
    return out


def layer_violations(mods: dict) -> list:
    """'a imports b' for each import that crosses a folder's layer rules."""
    out = []
    for name, tree in mods.items():
        for m in sorted(imported(tree, mods, name)):
            src, dst = unit(name), unit(m)
            if src == dst:
                continue
            if src in LAYERS and dst not in LAYERS[src]:
                out.append(f"{name} imports {m} (the {src} layer imports only "
                           f"{sorted(LAYERS[src])})")
            if dst in IMPORTED_BY and src not in IMPORTED_BY[dst]:
                out.append(f"{name} imports {m} (only {sorted(IMPORTED_BY[dst])} may)")
    return out


MODULES = modules()


def path_of(name: str) -> Path:
    """The file of a module name: a package's __init__.py, else the module's .py."""
    if name == PACKAGE_INIT:
        return PACKAGE / "__init__.py"
    folder = PACKAGE.joinpath(*name.split("."))
    return folder / "__init__.py" if folder.is_dir() else folder.with_suffix(".py")


def test_every_module_has_a_place_in_the_stage_order():
    unplaced = sorted({unit(m) for m in MODULES} - set(STAGES) - {PACKAGE_INIT})
    assert not unplaced, (
        f"graphc module(s) {unplaced} are not in STAGES of tests/test_architecture.py: "
        "insert each after the last stage it imports and before every stage that imports it")


def test_the_package_init_imports_only_the_api():
    assert imported(MODULES[PACKAGE_INIT], MODULES, PACKAGE_INIT) <= INIT_IMPORTS, \
        "graphc/__init__.py imports stages other than the public API"


def test_imports_point_to_earlier_stages():
    bad = order_violations(MODULES)
    assert not bad, ("imports must point to earlier stages only (tests/test_architecture.py "
                     "STAGES): " + "; ".join(bad))


def test_folders_keep_to_their_layer():
    bad = layer_violations(MODULES)
    assert not bad, "layer rules broken: " + "; ".join(bad)


def test_nothing_imports_cli():
    importers = sorted(name for name, tree in MODULES.items()
                       if unit(name) not in ENTRY_POINTS and "cli" in imported(tree, MODULES, name))
    assert not importers, f"{importers} import graphc.cli; only __main__ may"


def test_modules_are_small():
    sizes = {name: len(path_of(name).read_text(encoding="utf-8").splitlines())
             for name in MODULES}
    biggest = max(sizes, key=sizes.get)
    over = {name: n for name, n in sizes.items() if n > OVERSIZE.get(name, MAX_LINES)}
    assert not over, (f"modules over their line budget ({MAX_LINES}, or OVERSIZE): {over}; "
                      f"the biggest is {biggest} with {sizes[biggest]} lines")


# --- the rules themselves, on fixtures that break them on purpose ------------------------

def fixture(sources: dict) -> dict:
    """A fake package: module name -> source text, parsed."""
    return {name: ast.parse(text) for name, text in sources.items()}


def test_imported_sees_every_import_form():
    """The walker itself: relative, absolute, aliased and function-local imports all count."""
    src = ("from . import shapes as S\nfrom .ir import Graph\nimport graphc.plan\n"
           "from graphc import ops\nimport numpy\n"
           "def f():\n    from .cli import main\n")
    known = {"shapes", "ir", "plan", "ops", "cli", "spec"}
    assert imported(ast.parse(src), known) == {"shapes", "ir", "plan", "ops", "cli"}


def test_imported_resolves_imports_inside_packages():
    known = {"plan", "shapes", "ops", "ops.record", "backends", "backends.numpy",
             "backends.numpy.fast", "backends.numpy.bind"}
    src = "from ...plan import ALIGN\nfrom . import fast\nfrom .bind import plain\n"
    assert imported(ast.parse(src), known, "backends.numpy.kernels") == {
        "plan", "backends.numpy.fast", "backends.numpy.bind"}
    assert imported(ast.parse("from .. import shapes\n"), known, "ops.record") == {"shapes"}
    assert imported(ast.parse("from .record import OpDef\n"), known, "ops") == {"ops.record"}


def test_a_backend_importing_the_trainer_breaks_its_layer():
    mods = fixture({"plan": "", "train": "", "executor": "from .backends import numpy\n",
                    "backends": "from . import numpy\n",
                    "backends.numpy": "from ...train import train\nfrom ...plan import Plan\n"})
    assert layer_violations(mods) == [
        "backends.numpy imports train (the backends layer imports only "
        "['errors', 'ops', 'parallel', 'plan', 'shapes'])"]


def test_a_module_reaching_past_the_executor_into_a_backend_is_caught():
    mods = fixture({"backends": "", "backends.numpy": "", "model": "",
                    "timing": "from .backends.numpy import KERNELS\n"})
    assert layer_violations(mods) == [
        "timing imports backends.numpy (only ['executor'] may)"]


def test_an_import_against_the_stage_order_is_caught():
    mods = fixture({"ops": "from ..ir import Graph\n", "ir": "from .ops import OPS\n"})
    assert order_violations(mods) == ["ops imports ir"]
