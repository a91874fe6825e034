"""Where a node came from, and what a run-time failure says: provenance on IR nodes (origin,
role, differentiates) read instead of names; verifiers that raise; kernel errors that
name the node, its op and its spec line.
"""
from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from graphc.backends.numpy import KERNELS
from graphc.cli import main
from graphc.ir import VerifyError, verify_graph
from graphc.model import load_model
from graphc.optim import parse_optimizer, training_graph

REPO = Path(__file__).resolve().parents[1]
SPIRAL = REPO / "specs" / "spiral_mlp.yaml"


def spec_line(path: Path, key: str) -> int:
    """The 1-based line of `key:` in a spec file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.strip().startswith(key + ":"))


@pytest.fixture(scope="module")
def spiral_step():
    model = load_model(SPIRAL)
    return model, training_graph(model.graph, parse_optimizer({"sgd": {"momentum": 0.9}}))


def test_forward_nodes_name_their_spec_node(spiral_step):
    model, _ = spiral_step
    g = model.graph
    assert (g["h/matmul"].origin, g["h/matmul"].role) == ("h", "forward")
    assert g["h/matmul"].mark.line == spec_line(SPIRAL, "h")
    assert g["W1"].origin == "W1" and g["data_loss/saved"].origin == "data_loss"


def test_gradient_nodes_name_the_node_they_differentiate(spiral_step):
    _, step = spiral_step
    grads = [n for n in step.graph.nodes.values() if n.role == "gradient"]
    assert grads and all(n.differentiates in step.forward for n in grads)
    d = step.graph[step.grads["W1"]]
    assert d.origin == "W1" and d.differentiates == "W1"
    assert {n.origin for n in grads if n.differentiates == "h/matmul"} == {"h"}


def test_update_and_state_nodes_say_so(spiral_step):
    _, step = spiral_step
    update = step.graph["update:W1"]
    assert (update.role, update.origin) == ("update", "W1")
    velocity = step.graph["W1.velocity"]
    assert (velocity.role, velocity.origin) == ("state", "W1")
    assert step.graph["opt:lr"].role == "state"


def test_the_ir_verifier_raises_a_graphc_error(spiral_step):
    model, _ = spiral_step
    g = model.graph
    broken = replace(g, nodes={**g.nodes, "h": replace(g["h"], shape=(3, 3))})
    with pytest.raises(VerifyError, match=r"IR verifier: h \(relu\) has shape \[3, 3\]"):
        verify_graph(broken)


def test_the_verifiers_still_check_under_python_O():
    """An assert would vanish under -O: the check must not."""
    code = ("from dataclasses import replace\n"
            "from graphc.ir import VerifyError, verify_graph\n"
            "from graphc.model import load_model\n"
            f"g = load_model({str(SPIRAL)!r}).graph\n"
            "bad = replace(g, nodes={**g.nodes, 'h': replace(g['h'], shape=(3, 3))})\n"
            "try:\n    verify_graph(bad)\nexcept VerifyError as e:\n    print('caught', e.exit_code)\n")
    done = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert done.stdout.strip() == "caught 1", done.stderr


def test_a_failing_kernel_names_its_node_op_and_spec_line(monkeypatch):
    """A kernel that raises while the plan runs: one error line, exit 2, naming the step's
    node, its op and the spec line it came from (torch.fx's "While executing")."""
    def failing_relu(out, x):
        def call():
            raise FloatingPointError("overflow in relu")
        return call
    monkeypatch.setitem(KERNELS, "relu", failing_relu)
    result = CliRunner().invoke(main, ["grad", str(SPIRAL)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    line = spec_line(SPIRAL, "h")
    assert len(lines) == 1 and lines[0].startswith(f"error: {SPIRAL}:{line}:"), result.output
    assert (f"node 'h': while executing node 'h' (op relu) from spec line {line}: "
            "FloatingPointError: overflow in relu") in lines[0]
