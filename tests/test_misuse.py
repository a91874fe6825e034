"""User mistakes met by an audit of every command and of the Python API: each gets one
`error:` line (exit 2) that says what the user gave and what was expected, in the words
of the thing they gave it to; the API raises the same message as a SpecError.

Oracles: hand-sized specs (a 3-row embedding table, a 2-class linear model) whose bad
values are chosen by hand, the messages' words, and the files a refused run leaves.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import graphc  # noqa: E402
from graphc.errors import SpecError  # noqa: E402
from test_cli import SPECS, graphc as run, ok  # noqa: E402
from test_cli_hardening import one_error  # noqa: E402

LECTURE = SPECS / "lecture_cs231n_add_mul.yaml"

# a 3-row table read by ids; t is a float target, so the ids are the only integers
TABLE = """\
name: table
inputs:
  ids: {shape: [batch], dtype: int64}
  t: [batch, 2]
params:
  E: [3, 2]
nodes:
  e: embedding(ids, E)
  loss: mean((e - t) * (e - t))
outputs: [e]
train:
  data: {npz: data.npz}
  batch_size: 2
  epochs: 1
  optimizer: {sgd: {lr: 0.1}}
"""

# two classes: labels 0 and 1, scores [batch, 2]
CLASSES = """\
name: two
inputs:
  x: [batch, 2]
  y: {shape: [batch], dtype: int64}
params:
  W: [2, 2]
nodes:
  scores: x @ W
  loss: softmax_cross_entropy(scores, y)
outputs: [scores]
train:
  data: {npz: data.npz}
  batch_size: 2
  epochs: 1
  optimizer: {sgd: {lr: 0.1}}
"""


def write(tmp_path: Path, text: str, **arrays) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    np.savez(tmp_path / "data.npz", **arrays)
    return spec


@pytest.fixture
def table(tmp_path):
    """The table spec, trained for one epoch on good ids (checkpoint table.ckpt.npz)."""
    spec = write(tmp_path, TABLE, ids=np.array([0, 1, 2, 2]), t=np.zeros((4, 2)))
    ok(run("train", spec, "--out", "table.ckpt.npz", cwd=tmp_path))
    return spec


# --- ids and labels: the op's own words, on every path ------------------------------------

def test_an_embedding_id_out_of_range_in_training_data_speaks_of_ids(tmp_path):
    # before: "label 5 is out of range for 3 classes ...; check `classes:` ..."
    spec = write(tmp_path, TABLE, ids=np.array([0, 1, 5, 2]), t=np.zeros((4, 2)))
    line = one_error(run("train", spec, cwd=tmp_path))
    assert "data.npz array 'ids' at index 2: id 5 is out of range for 3 rows " \
           "(expected 0..2); ids (row indices of the table) count from 0" in line
    assert "label" not in line and "class" not in line


def test_an_embedding_id_out_of_range_in_predict_inputs_speaks_of_ids(table, tmp_path):
    np.savez(tmp_path / "new.npz", ids=np.array([0, 1, 5]))
    line = one_error(run("predict", table, "--params", "table.ckpt.npz",
                         "--inputs", "new.npz", cwd=tmp_path))
    assert "new.npz array 'ids' at index 2: id 5 is out of range for 3 rows" in line
    assert "label" not in line and "class" not in line


def test_the_api_says_id_for_an_embedding_id_out_of_range(tmp_path):
    spec = write(tmp_path, TABLE, ids=np.array([0]), t=np.zeros((1, 2)))
    model = graphc.load(spec)
    with pytest.raises(SpecError, match="id 7 is out of range for 3 rows") as err:
        model.grad({"ids": np.array([0, 7]), "t": np.zeros((2, 2))})
    assert "label" not in str(err.value)


def test_a_label_out_of_range_in_a_file_without_classes_hints_at_the_data(tmp_path):
    """An .npz has no `classes:` to check: the hint points at the data fed to 'y'."""
    spec = write(tmp_path, CLASSES, x=np.zeros((3, 2)), y=np.array([0, 2, 1]))
    line = one_error(run("train", spec, cwd=tmp_path))
    assert "data.npz array 'y' at index 1: label 2 is out of range for 2 classes " \
           "(expected 0..1); class labels count from 0; check the data fed to 'y'" in line


def test_the_model_and_the_data_paths_word_an_id_alike(tmp_path):
    """`grad --inputs` checks ids on the model's path, `train` on the data's path: both
    say id and rows (one LabelKind carries the words)."""
    spec = write(tmp_path, TABLE, ids=np.array([0, 1, 5, 2]), t=np.zeros((4, 2)))
    by_model = one_error(run("grad", spec, "--inputs", "data.npz", cwd=tmp_path))
    by_data = one_error(run("train", spec, cwd=tmp_path))
    for line in (by_model, by_data):
        assert "id 5" in line and "is out of range for 3 rows (expected 0..2)" in line
        assert "ids (row indices of the table) count from 0; check the data fed to 'ids'" \
            in line


# --- --init-from: an error is no warning ---------------------------------------------------

def test_init_from_with_nothing_matching_lists_why_without_promising_training(tmp_path):
    spec = write(tmp_path, TABLE, ids=np.array([0, 1]), t=np.zeros((2, 2)))
    np.savez(tmp_path / "other.npz", E=np.zeros((4, 4)))
    proc = run("train", spec, "--init-from", "other.npz", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "error: --init-from other.npz: no parameter of the spec matches the checkpoint's "
        "by name and shape",
        "  'E' has shape [4, 4] in other.npz, the spec says [3, 2]"]


# --- the API names the argument the user passed ---------------------------------------------

@pytest.fixture(scope="module")
def two(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two")
    return graphc.load(write(folder, CLASSES, x=np.eye(2), y=np.array([0, 1])))


@pytest.mark.parametrize("kwargs, says", [
    ({"epochs": 0}, "epochs must be a positive integer, got 0"),
    ({"epochs": 1.5}, "epochs must be a positive integer, got 1.5"),
    ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
    ({"seed": -1}, "seed must be a non-negative integer, got -1"),
])
def test_fit_names_the_keyword_it_was_given(two, kwargs, says):
    # before: "train.epochs must ..." (the spec's key) and "--seed must ..." (a CLI flag)
    with pytest.raises(SpecError) as err:
        two.fit(**kwargs)
    assert str(err.value) == says


def test_fit_takes_numpy_integers_for_counts(two):
    # before: "train.epochs must be a positive integer, got 1" for np.int64(1)
    result = two.fit(epochs=np.int64(1), batch_size=np.int64(2), log=lambda e: None)
    assert result.epochs == 1


def test_a_negative_seed_on_the_command_line_is_clicks_range_error(tmp_path):
    line = one_error(run("train", LECTURE, "--seed", "-1", cwd=tmp_path))
    assert line == "error: Invalid value for '--seed': -1 is not in the range x>=0. " \
                   "(see `graphc train --help`)"
    assert list(tmp_path.iterdir()) == []


# --- paths: an empty name is no file, a missing or cut file says so plainly ----------------

@pytest.mark.parametrize("args", [
    ["grad", LECTURE, "--out", ""],
    ["grad", LECTURE, "--dot", ""],
    ["plan", LECTURE, "--memory", ""],
    ["check", ""],
    ["grad", LECTURE, "--params", ""],
])
def test_an_empty_path_is_refused_by_name(tmp_path, args):
    # before: "internal error (ValueError: PosixPath('.') has an empty name)", exit 1,
    # or "cannot read checkpoint .: [Errno 21] Is a directory: '.'"
    line = one_error(run(*args, cwd=tmp_path))
    assert "the path is empty; name a file" in line
    assert list(tmp_path.iterdir()) == []


def test_an_empty_plot_folder_does_not_fill_the_current_one(tmp_path):
    # before: the run trained and wrote its plots into the current folder
    line = one_error(run("train", SPECS / "spiral_mlp.yaml", "--epochs", "1", "--plot", "",
                         cwd=tmp_path))
    assert "Invalid value for '--plot': the path is empty; name a folder" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name, shown", [("", "out.npz"), ("..", "../out.npz")])
def test_the_api_refuses_a_checkpoint_path_naming_a_folder(tmp_path, name, shown):
    model = graphc.load(LECTURE)
    with pytest.raises(SpecError) as err:
        model.save(name)
    assert str(err.value) == f"checkpoint {name!r}: expected a file name, got a folder's; " \
                             f"name the file, e.g. {shown}"


def test_a_missing_checkpoint_says_so_without_errno(tmp_path):
    # before: "cannot read checkpoint nope.npz: [Errno 2] No such file or directory: 'nope.npz'"
    line = one_error(run("grad", LECTURE, "--params", "nope.npz", cwd=tmp_path))
    assert line == "error: cannot read checkpoint nope.npz: No such file or directory"


def test_a_cut_short_archive_is_called_damaged(tmp_path):
    # before: "... File is not a zip file"
    spec = write(tmp_path, CLASSES, x=np.eye(2), y=np.array([0, 1]))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "data.npz").read_bytes()[:100])
    line = one_error(run("grad", spec, "--inputs", "cut.npz", cwd=tmp_path))
    assert line == "error: cannot read --inputs cut.npz: it starts as an .npz archive but is " \
                   "cut short or damaged; write or copy it again"


def test_a_nan_in_predict_inputs_does_not_speak_of_training(tmp_path):
    spec = write(tmp_path, CLASSES, x=np.eye(2), y=np.array([0, 1]))
    ok(run("train", spec, "--out", "two.ckpt.npz", cwd=tmp_path))
    np.savez(tmp_path / "new.npz", x=np.array([[1.0, np.nan]]))
    line = one_error(run("predict", spec, "--params", "two.ckpt.npz", "--inputs", "new.npz",
                         cwd=tmp_path))
    assert line == "error: node 'x': new.npz array 'x' at index (0, 1): NaN in the data; " \
                   "drop or fill the missing values first"


def test_inputs_of_another_batch_size_than_the_first_batch_name_both_sources(tmp_path):
    # before: "node 'y': dim 'batch' is 5 in one input and 2 in 'y'" (y was never given)
    spec = write(tmp_path, CLASSES, x=np.eye(2), y=np.array([0, 1]))
    np.savez(tmp_path / "x5.npz", x=np.zeros((5, 2)))
    line = one_error(run("grad", spec, "--inputs", "x5.npz", cwd=tmp_path))
    assert line.endswith("node 'y': --inputs x5.npz gives 'x' 5 samples, but 'y', which it "
                         "lacks, comes from train.data's first batch: 2 samples; add 'y' "
                         "to x5.npz")


@pytest.mark.parametrize("call, says", [
    (lambda m: m.plan(0), "batch must be a positive integer, got 0"),
    (lambda m: m.plan(memory_budget="lots"),
     "memory_budget is 'lots', expected a size such as 64MiB or 1.5GiB"),
    (lambda m: m.fit(epochs=1, log=3), "log must be a function taking an EpochLog, got 3; "
                                       "e.g. log=print"),
])
def test_the_api_names_its_own_arguments(two, call, says):
    # before: "batch_size must ..." / "--memory-budget is ..." / a TypeError after an epoch
    with pytest.raises(SpecError) as err:
        call(two)
    assert str(err.value) == says


def test_a_zero_learning_rate_in_the_spec_is_refused_as_the_flag_is(tmp_path):
    # before: `lr: 0` trained every epoch without moving a param (--lr 0 was refused)
    spec = write(tmp_path, CLASSES.replace("lr: 0.1", "lr: 0"), x=np.eye(2), y=np.array([0, 1]))
    line = one_error(run("train", spec, cwd=tmp_path))
    assert line.endswith("spec.yaml:15:20: optimizer setting 'lr' must be a finite number "
                         "> 0, got 0; e.g. lr: 0.01")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.npz", "spec.yaml"]


def test_import_does_not_replace_a_trained_checkpoint_beside_its_spec(tmp_path):
    # before: `import --out two.yaml` replaced two.ckpt.npz, the run `train` had saved
    pytest.importorskip("onnx", reason="graphc import needs the extra: pip install 'graphc[onnx]'")
    model = Path(__file__).resolve().parent / "fixtures" / "onnx" / "mlp_gemm.onnx"
    spec = write(tmp_path, CLASSES, x=np.eye(2), y=np.array([0, 1]))
    ok(run("train", spec, cwd=tmp_path))                # saves two.ckpt.npz, its default
    trained = (tmp_path / "two.ckpt.npz").read_bytes()
    line = one_error(run("import", model, "--out", "two.yaml", cwd=tmp_path))
    assert line == "error: two.ckpt.npz holds a training run's checkpoint; import would " \
                   "replace it with plain params; write the spec elsewhere with --out, or " \
                   "replace the checkpoint with --force"
    assert (tmp_path / "two.ckpt.npz").read_bytes() == trained
    assert not (tmp_path / "two.yaml").exists()
    ok(run("import", model, "--out", "two.yaml", "--force", cwd=tmp_path))
    assert (tmp_path / "two.ckpt.npz").read_bytes() != trained
    ok(run("import", model, "--out", "two.yaml", cwd=tmp_path))     # its own params: replaced


CSV_SPEC = CLASSES.replace("{npz: data.npz}", "{csv: data.csv, columns: {x: [a, b], y: label}}")


@pytest.mark.parametrize("text, says", [
    # before: "data.csv has no column 'a' (wanted by input 'x'); its columns: a;b;label"
    ("a;b;label\n1;2;0\n3;4;1\n", "data.csv line 1: the header is one column, 'a;b;label': "
                                  "the file looks separated by semicolons; graphc reads "
                                  "comma-separated values: export the file as CSV with commas"),
    ("a\tb\tlabel\n1\t2\t0\n", "the file looks separated by tabs"),
])
def test_a_csv_separated_by_something_else_says_so(tmp_path, text, says):
    spec = write(tmp_path, CSV_SPEC)
    (tmp_path / "data.csv").write_text(text)
    assert says in one_error(run("train", spec, cwd=tmp_path))


def test_a_csv_that_is_not_utf8_names_the_byte(tmp_path):
    # before: "cannot read data.csv: 'utf-8' codec can't decode byte 0xff in position 16: ..."
    spec = write(tmp_path, CSV_SPEC)
    (tmp_path / "data.csv").write_bytes(b"a,b,label\n1,2,0\n\xff\xfe\n")
    assert one_error(run("train", spec, cwd=tmp_path)).endswith(
        "data.csv is not UTF-8 text (byte 0xff at offset 16); save the file as UTF-8")


def test_an_output_listed_twice_is_refused_not_doubled(tmp_path):
    # before: predict gave 'scores' 10 rows for 5 samples, and "samples": 5
    spec = write(tmp_path, CLASSES.replace("outputs: [scores]", "outputs: [scores, scores]"))
    line = one_error(run("check", spec, cwd=tmp_path))
    assert line.endswith("spec.yaml:10:19: output 'scores' is listed twice; name each "
                         "output once")


def test_the_api_refuses_an_output_asked_for_twice(two):
    with pytest.raises(SpecError, match="^output 'scores' is asked for twice; name each "
                                        "output once$"):
        two.predict({"x": np.eye(2)}, outputs=["scores", "scores"])


@pytest.mark.parametrize("call, says", [
    (lambda spec: graphc.load(123), "spec must be a file path (str or os.PathLike), got 123"),
    (lambda spec: graphc.load(spec, params=0), "params must be a file path (str or "
                                               "os.PathLike), got 0"),
    (lambda spec: graphc.load(spec).save(None), "path must be a file path (str or "
                                                "os.PathLike), got None"),
])
def test_the_api_takes_paths_only_where_it_reads_or_writes_files(tmp_path, call, says):
    # before: TypeError, or params=0 read the checkpoint from file descriptor 0 (stdin)
    spec = write(tmp_path, CLASSES, x=np.eye(2), y=np.array([0, 1]))
    with pytest.raises(SpecError) as err:
        call(spec)
    assert str(err.value) == says


# --- files given to the wrong flag or argument ---------------------------------------------

@pytest.fixture
def trained(tmp_path):
    """The two-class spec trained one epoch: (spec, its checkpoint two.ckpt.npz)."""
    spec = write(tmp_path, CLASSES, x=np.eye(2), y=np.array([0, 1]))
    ok(run("train", spec, cwd=tmp_path))
    return spec, tmp_path / "two.ckpt.npz"


def test_a_checkpoint_given_as_the_spec_says_which_comes_first(trained, tmp_path):
    # before: "two.ckpt.npz:1:1: spec is not UTF-8 text (byte 0x..)"
    line = one_error(run("eval", "two.ckpt.npz", "--params", "spec.yaml", cwd=tmp_path))
    assert line == "error: two.ckpt.npz:1:1: spec is an .npz archive (a checkpoint or data), " \
                   "not YAML text; the spec comes first: graphc COMMAND SPEC.yaml --params " \
                   "CKPT.npz"


@pytest.mark.parametrize("command", [["grad"], ["predict", "--params", "two.ckpt.npz"]])
def test_a_checkpoint_given_as_inputs_is_named_one(trained, tmp_path, command):
    # before: grad "'W' is not an input of the spec"; predict listed every reserved key
    line = one_error(run(command[0], "spec.yaml", *command[1:], "--inputs", "two.ckpt.npz",
                         cwd=tmp_path))
    assert line == "error: --inputs two.ckpt.npz is a checkpoint graphc wrote, not samples; " \
                   "pass it with --params, and the samples with --inputs"


def test_a_param_given_as_an_input_points_at_params(trained, tmp_path):
    np.savez(tmp_path / "w.npz", W=np.eye(2))
    line = one_error(run("grad", "spec.yaml", "--inputs", "w.npz", cwd=tmp_path))
    assert line == "error: --inputs w.npz: 'W' is not an input of the spec; 'W' is a param: " \
                   "pass its value with --params"


# --- JSON stays JSON -----------------------------------------------------------------------

def strict_json(text: str):
    """json.loads refusing NaN and Infinity, as jq and JavaScript's JSON.parse do."""
    import json

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def test_a_nan_loss_is_null_in_grad_json(tmp_path):
    # before: {"loss": NaN, ...}, which no strict JSON parser reads
    spec = tmp_path / "nan.yaml"
    spec.write_text("params: {w: {value: [1, 2]}}\nnodes: {loss: sum(log(w - 5))}\n")
    out = strict_json(ok(run("grad", spec, "--json", cwd=tmp_path)).stdout)
    assert out["loss"] is None
    assert out["grads"]["w"] == pytest.approx([1 / (1 - 5), 1 / (2 - 5)])    # d log(w-5) = 1/(w-5)


def test_predict_json_writes_an_infinite_output_as_null(tmp_path):
    spec = write(tmp_path, CLASSES.replace("outputs: [scores]", "outputs: [scores, r]").replace(
        "  scores: x @ W", "  scores: x @ W\n  r: 1 / x"), x=np.eye(2), y=np.array([0, 1]))
    ok(run("train", spec, "--out", "two.ckpt.npz", cwd=tmp_path))
    np.savez(tmp_path / "new.npz", x=np.array([[0.0, 2.0]]))
    out = strict_json(ok(run("predict", spec, "--params", "two.ckpt.npz", "--inputs",
                             "new.npz", "--json", cwd=tmp_path)).stdout)
    assert out["outputs"]["r"] == [[None, 0.5]]


@pytest.mark.parametrize("source, says", [
    # before: "data file not found: sub" for a folder that is there, and "looked for ." for ''
    ("{npz: sub}", "data file sub is a folder; name a .npz, .npy or .csv file"),
    ("{npz: ''}", "the data file's path is empty; name the file, e.g. data.npz"),
    ("{npz: /dev/null}", "data file /dev/null is not a regular file (a device, pipe or "
                         "socket); name a .npz, .npy or .csv file"),
])
def test_a_data_path_that_is_no_file_says_what_it_is(tmp_path, source, says):
    spec = write(tmp_path, CLASSES.replace("{npz: data.npz}", source))
    (tmp_path / "sub").mkdir()
    assert one_error(run("train", spec, cwd=tmp_path)).endswith(says)


def test_fit_on_given_arrays_does_not_blame_the_specs_data_line(two):
    # before: "spec.yaml:12:9: node 'y': no array for input 'y'; given: x", the line of
    # train.data, which fit(data) replaced
    with pytest.raises(SpecError) as err:
        two.fit({"x": np.eye(2)}, epochs=1)
    assert str(err.value) == "node 'y': no array for input 'y'; given: x"


def test_ragged_rows_are_named_in_a_sentence(two):
    # before: numpy's "setting an array element with a sequence. The requested array ..."
    with pytest.raises(SpecError) as err:
        two.predict({"x": [[1.0, 2.0], [3.0]]})
    assert str(err.value) == "node 'x': the array for input 'x' is not rectangular: its rows " \
                             "differ in length; give every sample the same shape"


# --- an output never replaces a file the same run reads ------------------------------------

def test_predict_out_onto_its_inputs_is_refused_and_the_samples_stay(trained, tmp_path):
    # before: the outputs replaced new.npz, the user's samples
    np.savez(tmp_path / "new.npz", x=np.eye(2))
    samples = (tmp_path / "new.npz").read_bytes()
    line = one_error(run("predict", "spec.yaml", "--params", "two.ckpt.npz", "--inputs",
                         "new.npz", "--out", "new.npz", cwd=tmp_path))
    assert line == "error: --out new.npz is the file --inputs reads; writing it would replace " \
                   "it; name another file for --out"
    assert (tmp_path / "new.npz").read_bytes() == samples


def test_grad_out_onto_its_params_is_refused(trained, tmp_path):
    checkpoint = (tmp_path / "two.ckpt.npz").read_bytes()
    line = one_error(run("grad", "spec.yaml", "--params", "two.ckpt.npz", "--out",
                         "two.ckpt.npz", cwd=tmp_path))
    assert "--out two.ckpt.npz is the file --params reads" in line
    assert (tmp_path / "two.ckpt.npz").read_bytes() == checkpoint


def test_train_out_onto_its_training_data_is_refused(tmp_path):
    # before: the checkpoint replaced data.npz, through a link too
    spec = write(tmp_path, CLASSES, x=np.eye(2), y=np.array([0, 1]))
    data = (tmp_path / "data.npz").read_bytes()
    (tmp_path / "link.npz").symlink_to("data.npz")
    for out in ("data.npz", "./data.npz", "link.npz"):
        line = one_error(run("train", spec, "--out", out, cwd=tmp_path))
        assert line.endswith("is the file train.data reads; writing it would replace it; name "
                             "another file for --out")
    assert (tmp_path / "data.npz").read_bytes() == data
