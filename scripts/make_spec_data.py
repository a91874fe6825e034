"""Write the small data files the example specs read (specs/data/), from fixed seeds.

    python scripts/make_spec_data.py [--check]

Each file's generating rule is below and in the header of the spec that reads it, so a
test can compare what training learned with the numbers that made the data. `--check`
regenerates in memory and exits 1 if a committed file differs (bytes for .npy/.npz
contents, text for .csv).
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "specs" / "data"

# regression.csv: y = x1 @ W + B + NOISE * N(0, 1), columns y, x1, x2, x3
CSV_W, CSV_B, CSV_NOISE, CSV_ROWS = (2.0, -3.0, 0.5), 1.0, 0.1, 200
# robust.npz: target = features @ W + B + small noise, OUTLIERS of the rows shifted up by JUMP
NPZ_W, NPZ_B, NPZ_ROWS, NPZ_OUTLIERS, NPZ_JUMP = (1.5, -2.0), 0.5, 200, 20, 25.0
# gauss3_x.npy / gauss3_y.npy: 3 classes, 4 features, unit-variance clouds around MEANS
NPY_MEANS = ((0.0, 0.0, 0.0, 0.0), (3.0, 0.0, 3.0, 0.0), (0.0, 3.0, 0.0, 3.0))
NPY_PER_CLASS = 100


def regression_csv() -> str:
    """A CSV: header `y,x1,x2,x3`, then CSV_ROWS rows with 4 decimals."""
    rng = np.random.default_rng(101)
    x = rng.standard_normal((CSV_ROWS, 3))
    y = x @ np.array(CSV_W) + CSV_B + CSV_NOISE * rng.standard_normal(CSV_ROWS)
    lines = ["y,x1,x2,x3"] + [",".join(f"{v:.4f}" for v in (t, *row)) for t, row in zip(y, x)]
    return "\n".join(lines) + "\n"


def robust_npz() -> dict:
    """Arrays `features` [N, 2] and `target` [N]; the first NPZ_OUTLIERS targets jump by NPZ_JUMP."""
    rng = np.random.default_rng(102)
    features = rng.uniform(-1.0, 1.0, (NPZ_ROWS, 2))
    target = features @ np.array(NPZ_W) + NPZ_B + 0.05 * rng.standard_normal(NPZ_ROWS)
    target[:NPZ_OUTLIERS] += NPZ_JUMP
    return {"features": features, "target": target}


def gauss3_npy() -> dict:
    """x [300, 4] float64 around NPY_MEANS, y [300] int64 labels 0..2, rows shuffled."""
    rng = np.random.default_rng(103)
    y = np.repeat(np.arange(len(NPY_MEANS)), NPY_PER_CLASS)
    x = np.array(NPY_MEANS)[y] + rng.standard_normal((len(y), 4))
    order = rng.permutation(len(y))
    return {"gauss3_x.npy": x[order], "gauss3_y.npy": y[order].astype(np.int64)}


def files() -> dict:
    """file name -> bytes, every file of specs/data/."""
    out = {"regression.csv": regression_csv().encode()}
    buf = io.BytesIO()
    np.savez(buf, **robust_npz())
    out["robust.npz"] = buf.getvalue()
    for name, array in gauss3_npy().items():
        buf = io.BytesIO()
        np.save(buf, array)
        out[name] = buf.getvalue()
    return out


def same(path: Path, data: bytes) -> bool:
    """A committed file equals fresh bytes (an .npz compares its arrays, not zip timestamps)."""
    if not path.exists():
        return False
    if path.suffix != ".npz":
        return path.read_bytes() == data
    with np.load(path, allow_pickle=False) as old, np.load(io.BytesIO(data)) as new:
        return old.files == new.files and all(np.array_equal(old[k], new[k]) for k in old.files)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    args = parser.parse_args()
    stale = []
    OUT.mkdir(parents=True, exist_ok=True)
    for name, data in files().items():
        path = OUT / name
        if args.check:
            stale += [] if same(path, data) else [name]
        else:
            path.write_bytes(data)
            print(f"wrote {path.relative_to(OUT.parents[1])} ({len(data)} bytes)")
    if stale:
        print(f"stale: {', '.join(stale)}; run python scripts/make_spec_data.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
