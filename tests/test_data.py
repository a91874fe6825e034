"""train.data: datasets, CSV/npz/npy files, mapping onto inputs, split, normalize, batches."""
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graphc.data import (DATASETS, apply_stats, batches, first_batch, load_data, n_samples,
                         stats_from_arrays, stats_to_arrays)
from graphc.errors import Mark, SpecError

XY = {"x": ("batch", 2), "y": ("batch",)}
LABELS = {"y": "int64"}
TARGETS = {"y": "float32"}


def load(cfg, inputs=XY, dtypes=LABELS, spec_dir=Path("."), **kw):
    return load_data(cfg, spec_dir=spec_dir, inputs=inputs, input_dtypes=dtypes, **kw)


def error(cfg, *args, **kw) -> str:
    with pytest.raises(SpecError) as e:
        load(cfg, *args, **kw)
    return str(e.value)


# --- built-in datasets ------------------------------------------

CLASSIFIERS = ["spiral", "moons", "circles", "xor", "blobs"]


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classification_shapes_dtypes_labels(name):
    d = load({"dataset": name, "samples": 90})
    assert d.train["x"].shape == (90, 2) and d.train["x"].dtype == np.float32
    assert d.train["y"].shape == (90,) and d.train["y"].dtype == np.int64
    assert set(np.unique(d.train["y"])) == set(range(d.n_classes))
    assert d.valid is None and d.stats == {}


@pytest.mark.parametrize("name", ["linear", "sine"])
def test_regression_shapes_dtypes(name):
    d = load({"dataset": name, "samples": 50}, {"x": ("batch", 1), "y": ("batch", 1)}, TARGETS)
    assert d.train["x"].shape == (50, 1) and d.train["y"].shape == (50, 1)
    assert d.train["y"].dtype == np.float32 and d.n_classes is None


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_datasets_are_deterministic_in_the_seed(name):
    if name == "digits":
        pytest.importorskip("sklearn", reason="the digits dataset needs scikit-learn")
    x = ("batch", 1, "f") if name == "waveforms" else ("batch", "f")
    inputs = {"x": x, "y": ("batch", "t") if name == "sort_digits" else ("batch",)}
    dtypes = TARGETS if name in ("linear", "sine") else LABELS
    a = load({"dataset": name, "seed": 3}, inputs, dtypes)
    b = load({"dataset": name, "seed": 3}, inputs, dtypes)
    c = load({"dataset": name}, inputs, dtypes, seed=3)  # the spec's seed
    d = load({"dataset": name, "seed": 4}, inputs, dtypes)
    for k in ("x", "y"):
        assert np.array_equal(a.train[k], b.train[k]) and np.array_equal(a.train[k], c.train[k])
    assert not np.array_equal(a.train["x"], d.train["x"])


@pytest.mark.parametrize("classes, samples", [(2, 100), (3, 300), (4, 102), (5, 7)])
def test_spiral_has_balanced_classes_inside_the_unit_disc(classes, samples):
    d = load({"dataset": "spiral", "samples": samples, "classes": classes}, dtypes={
        "y": "int64", "x": "float64"})
    counts = np.bincount(d.train["y"], minlength=classes)
    assert counts.sum() == samples and counts.max() - counts.min() <= 1
    assert np.linalg.norm(d.train["x"], axis=1).max() <= 1.0 + 1e-12
    assert d.n_classes == classes


def test_default_sample_count():
    assert len(load({"dataset": "spiral"}).train["x"]) == 300


def test_circles_without_noise_lie_on_two_radii():
    d = load({"dataset": "circles", "noise": 0.0, "factor": 0.3},
             dtypes={"y": "int64", "x": "float64"})
    r = np.linalg.norm(d.train["x"], axis=1)
    assert np.allclose(r[d.train["y"] == 0], 1.0) and np.allclose(r[d.train["y"] == 1], 0.3)


def test_moons_are_two_balanced_classes():
    d = load({"dataset": "moons", "samples": 101})
    assert sorted(np.bincount(d.train["y"])) == [50, 51]


def test_xor_labels_are_one_where_the_signs_differ():
    d = load({"dataset": "xor", "samples": 500}, dtypes={"y": "int64", "x": "float64"})
    x, y = d.train["x"], d.train["y"]
    assert np.array_equal(y, (np.sign(x[:, 0]) != np.sign(x[:, 1])).astype(np.int64))
    assert np.abs(x).max() <= 1.0


def test_blobs_sit_on_centers_inside_the_box():
    d = load({"dataset": "blobs", "features": 3, "classes": 4, "std": 0.0, "samples": 40},
             {"x": ("batch", 3), "y": ("batch",)}, {"y": "int64", "x": "float64"})
    x, y = d.train["x"], d.train["y"]
    assert np.bincount(y).tolist() == [10, 10, 10, 10]
    for k in range(4):
        assert np.ptp(x[y == k], axis=0).max() == 0.0  # std 0: every point is its center
    assert np.abs(x).max() <= 10.0


def test_linear_without_noise_is_exactly_linear():
    d = load({"dataset": "linear", "features": 3, "noise": 0.0},
             {"x": ("batch", 3), "y": ("batch",)}, {"x": "float64", "y": "float64"})
    design = np.c_[d.train["x"], np.ones(len(d.train["x"]))]
    _, residual, _, _ = np.linalg.lstsq(design, d.train["y"], rcond=None)
    assert residual[0] < 1e-20


def test_sine_without_noise_is_the_sine():
    d = load({"dataset": "sine", "noise": 0.0}, {"x": ("batch", 1), "y": ("batch", 1)},
             {"x": "float64", "y": "float64"})
    assert np.allclose(d.train["y"], np.sin(d.train["x"]))
    assert np.abs(d.train["x"]).max() <= np.pi


# --- mapping arrays onto inputs ---------------------------------

def test_two_inputs_with_other_names_map_by_position():
    d = load({"dataset": "blobs"}, {"points": ("batch", 2), "label": ("batch",)},
             {"label": "int64"})
    ref = load({"dataset": "blobs"})
    assert np.array_equal(d.train["points"], ref.train["x"])
    assert np.array_equal(d.train["label"], ref.train["y"])


def test_explicit_map():
    d = load({"dataset": "moons", "map": {"a": "y", "b": "x"}},
             {"a": ("batch",), "b": ("batch", 2)}, {"a": "int64"})
    ref = load({"dataset": "moons"})
    assert np.array_equal(d.train["a"], ref.train["y"])
    assert np.array_equal(d.train["b"], ref.train["x"])


def test_a_single_input_named_x_takes_the_features():
    d = load({"dataset": "moons"}, {"x": ("batch", 2)}, {})
    assert set(d.train) == {"x"}


def test_unmappable_inputs_ask_for_map():
    msg = error({"dataset": "moons"}, {"a": ("batch", 2), "b": ("batch",), "c": ("batch",)})
    assert "add map:" in msg


def test_map_to_an_unknown_array():
    msg = error({"dataset": "moons", "map": {"x": "features", "y": "y"}})
    assert "has no array 'features'" in msg


def test_labels_reshape_to_a_declared_trailing_one():
    d = load({"dataset": "spiral"}, {"x": ("batch", 2), "y": ("batch", 1)})
    assert d.train["y"].shape == (300, 1)


def test_labels_cast_to_float_for_a_float_input():
    d = load({"dataset": "moons"}, XY, {"y": "float32"})
    assert d.train["y"].dtype == np.float32 and set(np.unique(d.train["y"])) == {0.0, 1.0}


def test_feature_count_mismatch_names_both_counts():
    msg = error({"dataset": "blobs", "features": 3})
    assert "input 'x' expects 2 features per sample, dataset 'blobs' has 3" in msg


def test_regression_targets_cannot_feed_an_int_input():
    msg = error({"dataset": "linear"}, {"x": ("batch", 1), "y": ("batch",)})
    assert "dataset 'linear' sample" in msg and "is not an integer, but input 'y' is int64" in msg


def test_labels_beyond_the_graphs_classes():
    msg = error({"dataset": "spiral", "classes": 4}, classes={"y": 3})
    assert "label 3 is out of range for 3 classes (expected 0..2)" in msg


# --- config errors ----------------------------------------------

@pytest.mark.parametrize("cfg, fragment", [
    ({"dataset": "spirl"}, "unknown dataset 'spirl'; did you mean 'spiral'?"),
    ({"dataset": "spiral", "clases": 3}, "unknown key 'clases' for dataset 'spiral'"),
    ({"dataset": "moons", "nosie": 0.1}, "did you mean 'noise'?"),
    ({"dataset": "moons", "classes": 3}, "unknown key 'classes' for dataset 'moons'"),
    ({"dataset": "spiral", "samples": "many"}, "samples of dataset 'spiral' must be an integer"),
    ({"dataset": "spiral", "samples": 0}, "samples must be positive"),
    ({"dataset": "spiral", "classes": 5, "samples": 3}, "samples (3) must be at least classes"),
    ({"dataset": "circles", "factor": 1.5}, "factor must be between 0 and 1"),
    ({"dataset": "moons", "seed": -1}, "seed must be a non-negative integer"),
    ({"dataset": "moons", "validation": 1.5}, "validation must be a fraction strictly between"),
    ({"dataset": "moons", "validation": 0}, "omit `validation`"),
    ({"dataset": "moons", "shuffle": "yes"}, "shuffle must be true or false"),
    ({"dataset": "moons", "normalize": "standrd"}, "did you mean 'standard'?"),
    ({"dataset": "moons", "normalize": {"standard": ["y"]}}, "labels are never normalized"),
    ({"dataset": "moons", "csv": "a.csv"}, "names 2 sources"),
    ({"samples": 3}, "needs a source"),
    ("spiral", "train.data must be a mapping"),
    # before: "has no array '['f']'", and "data file not found: True"
    ({"npz": "a.npz", "map": {"x": ["f"]}}, "map gives input 'x' the array [f], expected"),
    ({"npy": {"x": True, "y": "y.npy"}}, "npy must map each fed input to a .npy file, got "
                                         "{x: true, y: y.npy}"),
])
def test_config_errors(cfg, fragment):
    assert fragment in error(cfg)


def test_errors_carry_the_spec_mark():
    msg = error({"dataset": "spirl"}, mark=Mark("net.yaml", 12, 3))
    assert msg.startswith("net.yaml:12:3: unknown dataset")


class Marked(dict):
    """What graphc's YAML loader hands over: a dict that knows where its keys are."""
    key_marks = {"nosie": Mark("net.yaml", 14, 5)}
    value_marks = {}

    def mark_of(self, key):
        return self.value_marks.get(key)


def test_errors_point_at_the_key_when_cfg_is_marked():
    msg = error(Marked(dataset="moons", nosie=0.1), mark=Mark("net.yaml", 12, 3))
    assert msg.startswith("net.yaml:14:5: unknown key 'nosie'")


# --- validation split -------------------------------------------

def ids(n):
    """Rows that carry their own index, so a split can be checked for overlap and cover."""
    return {"x": np.arange(n, dtype=np.float64)[:, None], "y": np.arange(n) % 3}


def write_npz(tmp_path, name="data.npz", **arrays):
    np.savez(tmp_path / name, **arrays)
    return {"npz": name}


@pytest.mark.parametrize("n, fraction, n_valid", [(300, 0.2, 60), (10, 0.25, 2), (7, 0.01, 1)])
def test_validation_split_sizes_and_disjointness(tmp_path, n, fraction, n_valid):
    cfg = write_npz(tmp_path, **ids(n)) | {"validation": fraction}
    d = load(cfg, {"x": ("batch", 1), "y": ("batch",)}, spec_dir=tmp_path)
    train, valid = d.train["x"][:, 0], d.valid["x"][:, 0]
    assert len(valid) == n_valid and len(train) == n - n_valid
    assert sorted(np.r_[train, valid].tolist()) == list(range(n))
    assert np.array_equal(d.valid["y"], d.valid["x"][:, 0].astype(int) % 3)  # rows stay whole


def test_validation_split_is_shuffled_and_seeded(tmp_path):
    cfg = write_npz(tmp_path, **ids(100)) | {"validation": 0.3}
    inputs = {"x": ("batch", 1), "y": ("batch",)}
    a = load(cfg, inputs, spec_dir=tmp_path, seed=1).valid["x"]
    assert np.array_equal(a, load(cfg, inputs, spec_dir=tmp_path, seed=1).valid["x"])
    assert not np.array_equal(a, load(cfg, inputs, spec_dir=tmp_path, seed=2).valid["x"])
    assert not np.array_equal(np.sort(a[:, 0]), np.arange(70, 100))


def test_validation_without_shuffle_holds_out_the_last_rows(tmp_path):
    cfg = write_npz(tmp_path, **ids(100)) | {"validation": 0.3, "shuffle": False}
    d = load(cfg, {"x": ("batch", 1), "y": ("batch",)}, spec_dir=tmp_path)
    assert np.array_equal(d.valid["x"][:, 0], np.arange(70, 100))


def test_validation_too_large_for_the_data(tmp_path):
    cfg = write_npz(tmp_path, **ids(1)) | {"validation": 0.5}
    assert "leaves none to train on" in error(cfg, {"x": ("batch", 1), "y": ("batch",)},
                                              spec_dir=tmp_path)


# --- normalization ----------------------------------------------

def test_normalize_uses_training_stats_only():
    cfg = {"dataset": "blobs", "validation": 0.25, "samples": 200}
    raw = load(cfg, dtypes={"y": "int64", "x": "float64"})
    d = load(cfg | {"normalize": "standard"}, dtypes={"y": "int64", "x": "float64"})
    assert np.allclose(d.stats["x"]["mean"], raw.train["x"].mean(axis=0))
    assert np.allclose(d.stats["x"]["std"], raw.train["x"].std(axis=0))
    assert np.allclose(d.train["x"].mean(axis=0), 0, atol=1e-12)
    assert np.allclose(d.train["x"].std(axis=0), 1)
    expected_valid = (raw.valid["x"] - raw.train["x"].mean(axis=0)) / raw.train["x"].std(axis=0)
    assert np.allclose(d.valid["x"], expected_valid)
    assert not np.allclose(d.valid["x"].mean(axis=0), 0, atol=1e-3)
    assert np.array_equal(d.train["y"], raw.train["y"]) and "y" not in d.stats


def test_normalize_leaves_regression_targets_alone():
    inputs, dtypes = {"x": ("batch", 1), "y": ("batch",)}, {"y": "float64", "x": "float64"}
    raw = load({"dataset": "linear"}, inputs, dtypes)
    d = load({"dataset": "linear", "normalize": "standard"}, inputs, dtypes)
    assert set(d.stats) == {"x"} and np.array_equal(d.train["y"], raw.train["y"])


def test_normalize_an_explicit_list():
    inputs, dtypes = {"x": ("batch", 1), "y": ("batch",)}, {"y": "float64"}
    d = load({"dataset": "linear", "normalize": {"standard": ["y"]}}, inputs, dtypes)
    assert set(d.stats) == {"y"}


def test_normalize_keeps_the_input_dtype_and_constant_features(tmp_path):
    x = np.c_[np.arange(10.0), np.full(10, 4.0)]
    cfg = write_npz(tmp_path, x=x) | {"normalize": "standard"}
    d = load(cfg, {"x": ("batch", 2)}, {}, spec_dir=tmp_path)
    assert d.train["x"].dtype == np.float32
    assert d.stats["x"]["std"][1] == 1.0 and np.all(d.train["x"][:, 1] == 0)  # std 0 -> 1


def test_apply_stats_and_checkpoint_round_trip():
    stats = {"x": {"mean": np.array([1.0, 2.0]), "std": np.array([2.0, 4.0])}}
    out = apply_stats({"x": np.array([[3.0, 6.0]], np.float32), "y": np.array([1])}, stats)
    assert np.array_equal(out["x"], [[1.0, 1.0]]) and out["x"].dtype == np.float32
    assert np.array_equal(out["y"], [1])
    flat = stats_to_arrays(stats, prefix="__norm__/")
    assert set(flat) == {"__norm__/x/mean", "__norm__/x/std"}
    back = stats_from_arrays(flat | {"W1": np.zeros(2)}, prefix="__norm__/")
    assert np.array_equal(back["x"]["std"], stats["x"]["std"]) and set(back) == {"x"}


def test_apply_stats_rejects_mismatched_shapes():
    stats = {"x": {"mean": np.zeros(3), "std": np.ones(3)}}
    with pytest.raises(SpecError, match="stats for 'x' are for samples of shape"):
        apply_stats({"x": np.zeros((4, 2))}, stats)


# --- CSV --------------------------------------------------------

CSV_INPUTS = {"x": ("batch", 2), "label": ("batch",)}
CSV_DTYPES = {"label": "int64"}


def write(tmp_path, text, name="data.csv"):
    (tmp_path / name).write_text(text)
    return name


def load_csv(tmp_path, text, columns=None, inputs=CSV_INPUTS, **extra):
    cfg = {"csv": write(tmp_path, text)} | ({"columns": columns} if columns else {}) | extra
    return load(cfg, inputs, CSV_DTYPES, spec_dir=tmp_path)


def csv_error(tmp_path, text, columns=None, inputs=CSV_INPUTS, **extra):
    with pytest.raises(SpecError) as e:
        load_csv(tmp_path, text, columns, inputs, **extra)
    return str(e.value)


GOOD = "a,b,c,label\n1,2,3,0\n4,5,6,1\n\n7,8,9,2\n"


def test_csv_columns_list_single_and_rest(tmp_path):
    d = load_csv(tmp_path, GOOD, {"x": ["a", "c"], "label": "label"}, shuffle=False)
    assert np.array_equal(d.train["x"], [[1, 3], [4, 6], [7, 9]])
    assert np.array_equal(d.train["label"], [0, 1, 2]) and d.train["label"].dtype == np.int64
    d = load_csv(tmp_path, GOOD.replace("c,", "").replace("3,", "").replace("6,", "")
                 .replace("9,", ""), {"x": "rest", "label": "label"})
    assert np.array_equal(d.train["x"], [[1, 2], [4, 5], [7, 8]])


def test_csv_inputs_default_to_their_own_column(tmp_path):
    d = load_csv(tmp_path, " label , x\n1, 0.5\n0, 1.5\n",
                 inputs={"x": ("batch",), "label": ("batch",)})
    assert np.array_equal(d.train["x"], np.array([0.5, 1.5], np.float32))


def test_csv_path_is_relative_to_the_spec_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", GOOD)
    d = load({"csv": "sub/data.csv", "columns": {"x": ["a", "b"]}}, CSV_INPUTS, CSV_DTYPES,
             spec_dir=tmp_path)
    assert len(d.train["x"]) == 3


def test_csv_classes_bound_the_labels(tmp_path):
    d = load_csv(tmp_path, GOOD, {"x": ["a", "b"]}, classes=3)
    assert d.n_classes == 3
    msg = csv_error(tmp_path, GOOD, {"x": ["a", "b"]}, classes=2)
    assert "data.csv line 5, column 'label': label 2 is out of range for 2 classes" in msg


def test_declared_classes_bound_the_labels_below_the_graphs(tmp_path):
    # before: the graph's 3 classes replaced the declared 2, and label 2 trained silently
    with pytest.raises(SpecError, match="data.csv line 5, column 'label': label 2 is out of "
                                        "range for 2 classes"):
        load({"csv": write(tmp_path, GOOD), "columns": {"x": ["a", "b"]}, "classes": 2},
             CSV_INPUTS, CSV_DTYPES, spec_dir=tmp_path, classes={"label": 3})


def test_csv_labels_from_the_graph_bound_too(tmp_path):
    with pytest.raises(SpecError, match="data.csv line 5, column 'label': label 2"):
        load({"csv": write(tmp_path, GOOD), "columns": {"x": ["a", "b"]}}, CSV_INPUTS, CSV_DTYPES,
             spec_dir=tmp_path, classes={"label": 2})


@pytest.mark.parametrize("text, columns, fragment", [
    ("a,b,label\n1,2,0\n3,oops,1\n", None, "data.csv line 3, column 'b': 'oops' is not a number"),
    ("a,b,label\n1,,0\n", None, "data.csv line 2, column 'b': empty cell"),
    ("a,b,label\n1,2,0\n\n1,nan,1\n", None, "data.csv line 4, column 'b': NaN in the data"),
    ("a,b,label\n1,2,0\n1,2\n", None, "data.csv line 3: 2 fields, but the header has 3"),
    ("a,b,label\n1,2,0.5\n", None, "data.csv line 2, column 'label': 0.5 is not an integer"),
    ("a,b,label\n", None, "data.csv has no data rows"),
    ("", None, "data.csv is empty"),
    ("a,a,label\n1,2,0\n", {"x": ["a", "a"]}, "line 1: header has a repeated column name 'a'"),
    ("a,b,label\n1,2,0\n", {"x": ["a", "bb"]},
     "data.csv has no column 'bb' (wanted by input 'x'); did you mean 'b'?"),
    ("a,b,label\n1,2,0\n", {"x": ["a", "b"], "lable": "label"}, "columns names 'lable'"),
    ("a,b,label\n1,2,0\n", {"x": ["a", "label"]}, "column 'label' is given to both"),
    ("a,b,label\n1,2,0\n", {"x": "rest", "label": "rest"}, "both 'x' and 'label' ask for"),
    ("a,b,c\n1,2,0\n", {"x": ["a", "b"]}, "input 'label' has no columns in data.csv"),
    ("a,b,c,label\n1,2,3,0\n", {"x": "rest"}, "input 'x' expects 2 features per sample, "
                                               "data.csv (columns a, b, c) has 3"),
])
def test_csv_errors_name_file_line_and_column(tmp_path, text, columns, fragment):
    assert fragment in csv_error(tmp_path, text, columns or {"x": ["a", "b"]})


def test_csv_missing_file(tmp_path):
    msg = error({"csv": "nope.csv"}, CSV_INPUTS, spec_dir=tmp_path)
    assert "data file not found: nope.csv" in msg


# --- npz and npy ------------------------------------------------

def test_npz_happy_path(tmp_path):
    x, y = np.random.default_rng(0).normal(size=(20, 2)), np.arange(20) % 2
    d = load(write_npz(tmp_path, x=x, y=y, extra=np.zeros(3)), spec_dir=tmp_path)
    assert np.array_equal(d.train["x"], x.astype(np.float32)) and np.array_equal(d.train["y"], y)


def test_npz_map_renames(tmp_path):
    cfg = write_npz(tmp_path, features=np.zeros((4, 2)), y=np.zeros(4))
    cfg["map"] = {"x": "features"}
    assert load(cfg, spec_dir=tmp_path).train["x"].shape == (4, 2)


def test_npz_missing_key_lists_the_keys(tmp_path):
    msg = error(write_npz(tmp_path, X=np.zeros((4, 2)), y=np.zeros(4)), spec_dir=tmp_path)
    assert "data.npz has no array 'x' for input 'x'; it has: X, y" in msg


def test_npz_nan_names_the_array_and_index(tmp_path):
    x = np.zeros((5, 2))
    x[3, 1] = np.nan
    msg = error(write_npz(tmp_path, x=x, y=np.zeros(5)), spec_dir=tmp_path)
    assert "data.npz array 'x' at index (3, 1): NaN in the data" in msg


def test_npz_sample_counts_must_agree(tmp_path):
    msg = error(write_npz(tmp_path, x=np.zeros((5, 2)), y=np.zeros(4)), spec_dir=tmp_path)
    assert "different numbers of samples: 'x' has 5, 'y' has 4" in msg


@pytest.mark.parametrize("arrays, fragment", [
    ({"x": np.array(["a", "b"]), "y": np.zeros(2)}, "dtype <U1; data must be real numbers"),
    ({"x": np.float64(1.0), "y": np.zeros(2)}, "is a scalar"),
])
def test_npz_bad_arrays(tmp_path, arrays, fragment):
    assert fragment in error(write_npz(tmp_path, **arrays), spec_dir=tmp_path)


def test_npz_that_is_not_an_archive(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 2)))
    assert "not an .npz archive" in error({"npz": "x.npy"}, spec_dir=tmp_path)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    assert "cannot read junk.npz" in error({"npz": "junk.npz"}, spec_dir=tmp_path)


def test_npy_one_file_per_input(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((3, 2)))
    np.save(tmp_path / "y.npy", np.array([0, 1, 1]))
    d = load({"npy": {"x": "x.npy", "y": "y.npy"}}, spec_dir=tmp_path)
    assert d.train["x"].shape == (3, 2) and d.train["y"].tolist() == [0, 1, 1]
    d = load({"npy": "x.npy"}, {"x": ("batch", 2)}, {}, spec_dir=tmp_path)
    assert d.train["x"].shape == (3, 2)
    assert "input 'y' has no file in npy" in error({"npy": {"x": "x.npy"}}, spec_dir=tmp_path)


# --- mini-batches -----------------------------------------------

@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 200), batch_size=st.integers(1, 64), seed=st.integers(0, 2**32 - 1))
def test_batches_cover_every_sample_once_per_epoch(n, batch_size, seed):
    arrays = {"x": np.arange(n, dtype=np.float32)[:, None] * [1, -1], "y": np.arange(n)}
    got = list(batches(arrays, batch_size, np.random.default_rng(seed)))
    sizes = [len(b["y"]) for b in got]
    assert all(s == batch_size for s in sizes[:-1]) and 1 <= sizes[-1] <= batch_size
    seen = np.concatenate([b["y"] for b in got])
    assert sorted(seen.tolist()) == list(range(n))
    for b in got:  # rows stay aligned across inputs
        assert np.array_equal(b["x"][:, 0], b["y"]) and np.array_equal(b["x"][:, 1], -b["y"])


def test_each_epoch_draws_a_new_permutation():
    rng, arrays = np.random.default_rng(0), {"y": np.arange(100)}
    first = np.concatenate([b["y"] for b in batches(arrays, 32, rng)])
    second = np.concatenate([b["y"] for b in batches(arrays, 32, rng)])
    assert not np.array_equal(first, second) and sorted(first) == sorted(second)


def test_first_batch_is_in_file_order():
    arrays = {"y": np.arange(10)}
    assert first_batch(arrays, 4)["y"].tolist() == [0, 1, 2, 3]
    assert first_batch(arrays, 64)["y"].tolist() == list(range(10))


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_batch_size_must_be_positive(bad):
    with pytest.raises(SpecError, match="batch_size must be a positive integer"):
        batches({"y": np.arange(3)}, bad, np.random.default_rng(0))


def test_n_samples():
    assert n_samples({"x": np.zeros((4, 2)), "y": np.zeros(4)}) == 4
