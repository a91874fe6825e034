"""The catalog of malformed specs and data (tests/bad_specs/catalog.yaml), run as a user runs it.

Each row is one `python -m graphc CMD FILE` in a subprocess. The user must get
exit 2, exactly one `error:` line on stderr (indented context lines may follow),
no traceback, and a message that names the file, the line (and column), the
node, and what was found or expected.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from bad_input_rows import assert_one_located_error, run_rows

from graphc.errors import SpecError, did_you_mean
from graphc.limits import parse_bytes, set_memory_limit
from graphc.spec import load_spec

CATALOG = Path(__file__).parent / "bad_specs"
ROWS = yaml.safe_load((CATALOG / "catalog.yaml").read_text())
GENERATED = ("non_utf8.yaml", "missing_key.npz", "three_features.npz", "pickled.npz",
             "out_of_range.npz", "zero_samples.npz", "complex.npz")
TRAIN_ARGS = ("--epochs", "1")


def row_id(row: dict) -> str:
    return f"{row.get('cmd', 'check')}-{row['file']}"


def generate_binaries(folder: Path) -> None:
    """The cases that cannot be YAML text: bytes that are not UTF-8, and .npz data files."""
    (folder / "non_utf8.yaml").write_bytes(
        b"inputs:\n  x: [2]\nnodes:\n  loss: sum(x)  # caf\xe9\n")
    np.savez(folder / "missing_key.npz", x=np.zeros((4, 2)), labels=np.zeros(4, np.int64))
    np.savez(folder / "three_features.npz", x=np.zeros((4, 3)), y=np.zeros(4, np.int64))
    np.savez(folder / "pickled.npz", x=np.array([{"a": 1}] * 4, dtype=object),
             y=np.zeros(4, np.int64))              # loading it would need pickle: refused
    np.savez(folder / "out_of_range.npz", x=np.array([[0.5, 1.0], [1e300, 2.0]]),
             y=np.zeros(2, np.int64))              # 1e300 is inf in float32
    np.savez(folder / "zero_samples.npz", x=np.zeros((0, 2)), y=np.zeros(0, np.int64))
    np.savez(folder / "complex.npz", x=np.ones((4, 2)) * (1 + 2j), y=np.zeros(4, np.int64))


def run_graphc(folder: Path, row: dict) -> subprocess.CompletedProcess:
    cmd = row.get("cmd", "check")
    # rows run side by side: each training gets its own checkpoint (one would hold the
    # other's lock)
    train = TRAIN_ARGS + ("--out", f"{row_id(row)}.ckpt.npz")
    extra = (train if cmd == "train" else ()) + tuple(row.get("args", ()))
    env = {k: v for k, v in os.environ.items() if k != "GRAPHC_DEBUG"}
    return subprocess.run([sys.executable, "-m", "graphc", cmd, row["file"], *extra],
                          cwd=folder, capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("catalog") / "bad_specs"
    shutil.copytree(CATALOG, folder)
    generate_binaries(folder)
    return folder


@pytest.fixture(scope="module")
def results(catalog_dir) -> dict:
    return run_rows(ROWS, lambda row: run_graphc(catalog_dir, row), row_id)


@pytest.mark.slow
@pytest.mark.xdist_group("error_catalog")       # one worker runs the shared catalog, once
@pytest.mark.parametrize("row", ROWS, ids=row_id)
def test_bad_input_gives_one_located_error(row, results):
    assert_one_located_error(results[row_id(row)], row, f"error: {row['file']}:{row['at']}:")


def test_the_catalog_covers_every_file_and_enough_cases():
    rows = {row["file"] for row in ROWS}
    files = {p.name for p in CATALOG.glob("*.yaml")} - {"catalog.yaml"}
    assert files - rows == set(), "a case file with no row in catalog.yaml"
    assert rows - files - set(GENERATED) == {"missing_file.yaml"}
    assert not (CATALOG / "missing_file.yaml").exists()
    assert len(ROWS) >= 40
    assert len({row_id(row) for row in ROWS}) == len(ROWS), "two rows run the same command"
    for row in ROWS:
        assert {"file", "at", "expect", "exit"} <= set(row), row


@pytest.mark.slow
@pytest.mark.xdist_group("error_catalog")       # one worker runs the shared catalog, once
def test_a_python_tag_is_never_run(results, catalog_dir):
    assert results["check-python_object_tag.yaml"].returncode == 2
    assert not (catalog_dir / "pwned").exists()


@pytest.mark.slow
@pytest.mark.xdist_group("error_catalog")       # one worker runs the shared catalog, once
def test_failed_training_leaves_no_checkpoint(results, catalog_dir):
    assert not list(catalog_dir.glob("*.ckpt.npz")), "a failed training wrote a checkpoint"


# --- the loader's rules, one at a time ---------------------------------------------------

def spec(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_12_booleans_keep_on_and_no_as_names(tmp_path):
    s = load_spec(spec(tmp_path, "inputs:\n  on: 1\n  no: 2\nnodes:\n  loss: on * no\n"))
    assert set(s.leaves) == {"on", "no"}


def test_a_date_is_text_not_a_datetime(tmp_path):
    s = load_spec(spec(tmp_path, "name: 2024-01-31\ninputs:\n  x: 1\nnodes:\n  loss: x\n"))
    assert s.name == "2024-01-31"


def test_aliases_within_the_bound_still_work(tmp_path):
    text = "inputs:\n  x: {value: &v [1, 2]}\n  y: {value: *v}\nnodes:\n  loss: sum(x * y)\n"
    s = load_spec(spec(tmp_path, text))
    assert s.leaves["y"].value.tolist() == [1.0, 2.0]


def test_memory_limit_comes_from_the_environment(tmp_path, monkeypatch):
    path = spec(tmp_path, "params:\n  W: [1000, 1000]\nnodes:\n  loss: sum(W)\n")
    set_memory_limit(None)                        # as a fresh process starts
    load_spec(path)                               # 4 MB: under the default limit
    monkeypatch.setenv("GRAPHC_MAX_MEMORY", "1M")
    with pytest.raises(SpecError, match=r"needs 4000000 bytes .* limit of 1\.0 MiB"):
        load_spec(path)


@pytest.mark.parametrize("flag, fragment", [
    ("1M", "parameter 'W' of shape [1000, 1000] (float32) needs 4000000 bytes (3.8 MiB), "
           "above the memory limit of 1.0 MiB"),
    ("lots", "--max-memory is 'lots', expected a size such as 512M or 4G"),
])
def test_max_memory_flag(tmp_path, flag, fragment):
    path = spec(tmp_path, "params:\n  W: [1000, 1000]\nnodes:\n  loss: sum(W)\n")
    r = subprocess.run([sys.executable, "-m", "graphc", "--max-memory", flag, "check",
                        str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), r.stderr
    assert fragment in r.stderr


def test_an_expression_is_never_evaluated(tmp_path):
    path = spec(tmp_path, f"inputs:\n  x: 1\nnodes:\n  loss: open('{tmp_path}/made', 'w')\n")
    with pytest.raises(SpecError, match="unknown op 'open'"):
        load_spec(path)
    assert not (tmp_path / "made").exists()


def test_did_you_mean_picks_the_closest_choice():
    assert did_you_mean("rleu", ["relu", "tanh", "exp"]) == "did you mean 'relu'?"
    assert did_you_mean("zzzz", ["relu", "tanh"]) is None


def test_yaml_12_floats_read_exponents_as_numbers(tmp_path):
    s = load_spec(spec(tmp_path, "inputs:\n  x: 1e-3\n  y: 1.5e3\n  z: {value: [2E+2, -1e0]}\n"
                                 "nodes:\n  loss: x * y * sum(z)\n"))
    assert s.leaves["x"].value == 0.001 and s.leaves["y"].value == 1500.0
    assert s.leaves["z"].value.tolist() == [200.0, -1.0]


@pytest.mark.parametrize("node, where, fragment", [
    ("sum(x) * 1e400", "4:18", "constant 1e400 is too large for a float"),
    ("sum(x) * -1e400", "4:19", "constant 1e400 is too large for a float"),
    ("x ** 1e400", "4:14", "the exponent of ** is '1e400', expected a constant number"),
    ("1" + "0" * 400, "4:9", "constant 1" + "0" * 26 + "... is too large for a float"),
    ("1e400", "4:9", "node is .inf, expected a finite number"),
    (".nan", "4:9", "node is .nan, expected a finite number"),
])
def test_a_constant_that_is_not_a_finite_float_is_an_error(tmp_path, node, where, fragment):
    path = spec(tmp_path, f"inputs:\n  x: [2]\nnodes:\n  loss: {node}\n")
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert str(err.value).startswith(f"{path}:{where}: node 'loss': "), str(err.value)
    assert fragment in str(err.value)


@pytest.mark.parametrize("value, fragment", [
    ("[true, 2]", "value must be a number or a nested list of numbers, got [true, 2]"),
    ('["1", 2]', "value must be a number or a nested list of numbers, got ['1', 2]"),
    ("[[1, 2], [3]]", "value must be a number or a nested list of numbers"),
    ("[]", "value has shape [0], which holds no numbers"),
    ("[[], []]", "value has shape [2, 0], which holds no numbers"),
    ("[1, .inf]", "value contains NaN or infinity"),
])
def test_a_leaf_value_holds_finite_numbers_only(tmp_path, value, fragment):
    path = spec(tmp_path, f"params:\n  W: {{value: {value}}}\nnodes:\n  loss: sum(W)\n")
    with pytest.raises(SpecError, match=r"^" + str(path) + r":2:14: node 'W': ") as err:
        load_spec(path)
    assert fragment in str(err.value)


@pytest.mark.parametrize("text, nbytes", [("512M", 512 * 2**20), ("1.5k", 1536), ("7", 7)])
def test_parse_bytes_reads_binary_units(text, nbytes):
    assert parse_bytes(text) == nbytes


@pytest.mark.parametrize("text", ["inf", "1e999", "nan", "0.1", "0", "-1M", "lots", "5q"])
def test_parse_bytes_refuses_what_is_not_a_size_of_one_byte_or_more(text):
    with pytest.raises(ValueError):
        parse_bytes(text)


@pytest.mark.parametrize("leaf, fragment", [
    ("1e300", "leaf 'W' holds 1e+300, but float32 needs a number from -3.40282e+38"),
    ("{value: [1, -1e39]}", "leaf 'W' holds -1e+39, but float32 needs a number from"),
    ("{value: [1, 2.5], dtype: int32}", "holds 2.5, but int32 needs a whole number from "
                                        "-2147483648 to 2147483647"),
    ("{value: [3e9], dtype: int32}", "holds 3000000000.0, but int32 needs a whole number"),
])
def test_a_leaf_value_must_fit_its_dtype(tmp_path, leaf, fragment):
    path = spec(tmp_path, f"inputs:\n  W: {leaf}\nnodes:\n  loss: sum(W)\n")
    with pytest.raises(SpecError, match=r"^" + str(path) + r":2:\d+: node 'W': ") as err:
        load_spec(path)
    assert fragment in str(err.value)
    float64 = spec(tmp_path, "dtype: float64\ninputs:\n  W: 1e300\nnodes:\n  loss: W\n", "f.yaml")
    assert load_spec(float64).leaves["W"].value == 1e300


def test_a_constant_must_fit_the_spec_dtype(tmp_path):
    path = spec(tmp_path, "params:\n  W: [2]\nnodes:\n  loss: sum(W) * 1e39\n")
    with pytest.raises(SpecError, match=r":4:18: node 'loss': the constant holds 1e\+39, "
                                        r"but float32 needs a number from"):
        load_spec(path)
    assert load_spec(spec(tmp_path, path.read_text().replace("params", "dtype: float64\nparams"),
                          "f64.yaml")).dtype == "float64"


# --- issue 10: names, the memory limit's reach ----------------------------------------------

def test_a_name_is_declared_as_an_expression_reads_it(tmp_path):
    """Python's parser applies NFKC to names: a fullwidth 'ｘ' declared is the 'x' used."""
    text = ("inputs:\n  ｘ: 5\nnodes:\n  y: x * 2\n  loss: {op: identity, inputs: [ｙ]}\n"
            "outputs: [ｙ]\n")
    s = load_spec(spec(tmp_path, text))
    assert set(s.leaves) == {"x"}
    assert [n.inputs for n in s.nodes if n.name == "loss"] == [("y",)]
    assert s.outputs == ("y",)


def test_soft_keywords_and_layer_params_stay_names(tmp_path):
    text = "inputs:\n  match: [batch, 2]\nnodes:\n  h: dense(match, units=3)\n  loss: sum(h)\n"
    s = load_spec(spec(tmp_path, text))
    assert {"match", "h.W", "h.b"} <= set(s.leaves)


def test_the_spec_parse_counts_against_the_memory_limit(tmp_path):
    path = spec(tmp_path, "inputs:\n  x: 1\nnodes:\n  loss: x\n")      # 8 + 7 + 7 + 10
    set_memory_limit(32 * 200)                                            # 200 per character
    try:
        load_spec(path)
        set_memory_limit(32 * 200 - 1)
        with pytest.raises(SpecError, match=r":1:1: parsing the spec's 32 characters needs "
                                            r"6400 bytes \(6\.2 KiB\), above the memory limit"):
            load_spec(path)
    finally:
        set_memory_limit(None)


# spiral_mlp's text, one line changed -> the message's words: the user's value spelled as
# YAML (true, null, [a, b], {k: v}, .inf), as written, never as Python (True, None, ...)
YAML_SPELLING = [
    ("  seed: 0\n", "  seed: true\n", "train.seed is true, expected"),
    ("  seed: 0\n", "  seed: null\n", "train.seed is null, expected"),
    ("batch_size: 64", "batch_size: [1, b]", "positive integer, got [1, b]"),
    ("batch_size: 64", "batch_size: {a: null}", "positive integer, got {a: null}"),
    ("batch_size: 64", "batch_size: \"it's\"", "positive integer, got 'it''s'"),
    ("momentum: 0.9", "momentum: .inf", "finite number >= 0, got .inf"),
    ("every: 100", "every: false", "positive integer, got false"),
    ("init: he_normal", "init: [he_normal]", "{NAME: {ARG: VALUE}}, got [he_normal]"),
    ("dtype: float32", "dtype: null", "dtype null is not supported"),
    ("shape: [2, 100]", "shape: [2, true]", "dimension 1 of shape [2, true] is true"),
    ("relu(x @ W1 + b1)", ".inf", "node 'h': node is .inf, expected a finite number"),
    ("outputs: [scores]", "outputs: [null]", "output null is not a node"),
    ("loss: loss\n", "loss: [a, 'true']\n", "loss is [a, 'true'], expected a node name"),
    ("relu(x @ W1 + b1)", "{op: sum, inputs: [x], axis: [true]}",
     "is [true], expected an integer, a list of integers, or null"),
    ("dataset: spiral", "dataset: [spiral]", "unknown dataset [spiral]"),
    # an expression is Python: a lowercase false there is a name, read as the text 'false'
    ("h @ W2 + b2", "dense(h, units=3, bias=false)",
     "is 'false', expected true or false (True or False in an expression)"),
    ("{accuracy: [scores, y]}", "{accuracy: null}",
     "got null; e.g. accuracy: {accuracy: [scores, y]}, or a scalar node: accuracy: data_loss"),
]


@pytest.mark.parametrize("old, new, expect", YAML_SPELLING, ids=[r[1] for r in YAML_SPELLING])
def test_error_messages_spell_the_users_values_as_yaml(tmp_path, old, new, expect):
    text = (Path(__file__).parents[1] / "specs" / "spiral_mlp.yaml").read_text()
    assert text.count(old) == 1
    path = spec(tmp_path, text.replace(old, new))
    r = subprocess.run([sys.executable, "-m", "graphc", "train", path.name, "--epochs", "1"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: s.yaml:"), r.stderr
    assert len(r.stderr.splitlines()) == 1 and expect in r.stderr, r.stderr


def test_graphc_true_is_not_format_version_1(tmp_path):
    with pytest.raises(SpecError, match="format version true is not supported"):
        load_spec(spec(tmp_path, "graphc: true\ninputs: {x: [2]}\nnodes: {loss: sum(x)}\n"))
