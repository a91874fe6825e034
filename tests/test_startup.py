"""Start-up: a command imports what it uses (docs/cli.md, "Start-up").

Each command runs as a user types it, in a fresh process that reports the modules it
imported; the other command families and the optional extras must not be among them.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from test_cli import SPIRAL, load_scaled, ok

EXTRAS = ("numba", "onnx", "onnxruntime", "matplotlib", "mpi4py", "sklearn", "torch", "jax")
FAMILIES = ("cli_grad", "cli_onnx", "cli_plan", "cli_predict", "cli_train")
# the command's own family module; the others stay unimported
OWN_FAMILY = {"check": None, "ops": None, "plan": "cli_plan", "grad": "cli_grad",
              "train": "cli_train"}
PROBE = ("import json, runpy, sys\n"
         "report, sys.argv = sys.argv[1], ['graphc'] + sys.argv[2:]\n"
         "try:\n"
         "    runpy.run_module('graphc', run_name='__main__')\n"
         "finally:\n"
         "    open(report, 'w').write(json.dumps(sorted(sys.modules)))\n")


def imported_by(tmp_path, *args) -> set:
    """The modules `graphc ARGS` has imported when it exits (it must exit 0)."""
    report = tmp_path / "modules.json"
    ok(subprocess.run([sys.executable, "-c", PROBE, str(report), *map(str, args)],
                      capture_output=True, text=True, cwd=tmp_path, timeout=load_scaled(120),
                      stdin=subprocess.DEVNULL))
    return set(json.loads(report.read_text()))


COMMANDS = {"check": ("check", SPIRAL), "ops": ("ops",),
            "plan": ("plan", SPIRAL, "--json"), "grad": ("grad", SPIRAL, "--json"),
            "train": ("train", SPIRAL, "--epochs", "1", "--out", "spiral.npz", "--json")}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_command_imports_neither_other_families_nor_optional_extras(command, tmp_path):
    modules = imported_by(tmp_path, *COMMANDS[command])
    extras = sorted(m for m in modules if m.split(".")[0] in EXTRAS)
    assert not extras, f"graphc {command} imported optional extras: {extras}"
    others = sorted(f for f in FAMILIES if f != OWN_FAMILY[command]
                    and f"graphc.{f}" in modules)
    assert not others, f"graphc {command} imported other commands' modules: {others}"
    own = OWN_FAMILY[command]
    assert own is None or f"graphc.{own}" in modules
