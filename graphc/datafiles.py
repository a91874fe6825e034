"""Reading `train.data`'s files: CSV tables and .npz/.npy arrays, with errors that point
into the file (its name as the spec wrote it, `shown`, and a line or array name).

These readers know nothing of inputs or the spec; graphc/datasources.py decides which
file and which columns or arrays feed which input.
"""
from __future__ import annotations

import csv
import math
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import SpecError

from .limits import check_memory

CSV_BYTES_PER_BYTE = 32      # cells as Python strs in lists: 24x the file measured
NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0,
               (2, 0): np.lib.format.read_array_header_2_0,
               (3, 0): np.lib.format.read_array_header_2_0}   # 3.0 differs in text encoding


def resolve(spec_dir: Path, text: str) -> Path:
    """Relative paths are relative to the spec's folder, not the working directory. A
    SpecError unless the path names a regular file: missing, a folder, or a device or
    pipe each say which."""
    if not text:
        raise SpecError("the data file's path is empty", hint="name the file, e.g. data.npz")
    path = Path(text).expanduser()
    path = path if path.is_absolute() else spec_dir / path
    if path.is_file():
        return path
    if not path.exists():
        raise SpecError(f"data file not found: {text}", hint=f"looked for {path}")
    what = "a folder" if path.is_dir() else "not a regular file (a device, pipe or socket)"
    raise SpecError(f"data file {text} is {what}", hint="name a .npz, .npy or .csv file")


def read_csv(path: Path, shown: str) -> tuple[list[str], list[list[str]], list[int]]:
    """Header, data rows and each row's 1-based line; blank lines skipped, widths checked.
    The rows' memory (CSV_BYTES_PER_BYTE per byte of file) is checked before reading."""
    check_memory(path.stat().st_size * CSV_BYTES_PER_BYTE, f"reading {shown}")
    rows, lines, header = [], [], None
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            for row in reader:
                if not row or all(not cell.strip() for cell in row):
                    continue
                if header is None:
                    header = [cell.strip() for cell in row]
                    _check_header(header, shown, reader.line_num)
                elif len(row) != len(header):
                    raise SpecError(f"{shown} line {reader.line_num}: {len(row)} fields, but the "
                                    f"header has {len(header)}")
                else:
                    rows.append(row)
                    lines.append(reader.line_num)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise _unreadable(e, shown) from None
    if not rows:
        raise SpecError(f"{shown} has no data rows" if header else f"{shown} is empty",
                        hint="the first row names the columns; each later row is one sample")
    return header, rows, lines


def csv_header(path: Path, shown: str) -> list[str]:
    """The column names of a CSV file: its first non-blank row, without reading the rest."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            for row in reader:
                if row and any(cell.strip() for cell in row):
                    header = [cell.strip() for cell in row]
                    _check_header(header, shown, reader.line_num)
                    return header
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise _unreadable(e, shown) from None
    raise SpecError(f"{shown} is empty",
                    hint="the first row names the columns; each later row is one sample")


def _unreadable(e: Exception, shown: str) -> SpecError:
    """The error for a CSV file that cannot be read as text: not UTF-8 says which byte."""
    if isinstance(e, UnicodeDecodeError):
        return SpecError(f"{shown} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
                         f"{e.start})", hint="save the file as UTF-8")
    return SpecError(f"cannot read {shown}: {getattr(e, 'strerror', None) or e}")


SEPARATORS = {";": "semicolons", "\t": "tabs", "|": "bars"}     # what spreadsheets also write


def _check_header(header: list[str], shown: str, line: int) -> None:
    """Distinct, non-empty column names; a header of one name holding another separator
    is a file that is not comma-separated."""
    other = [word for sep, word in SEPARATORS.items() if len(header) == 1 and sep in header[0]]
    if other:
        raise SpecError(f"{shown} line {line}: the header is one column, {header[0]!r}: the "
                        f"file looks separated by {other[0]}", hint="graphc reads comma-"
                        "separated values: export the file as CSV with commas")
    seen = set()
    for name in header:
        if not name or name in seen:
            raise SpecError(f"{shown} line {line}: header has "
                            f"{'an empty' if not name else 'a repeated'} column name "
                            f"{name!r}", hint="give every column a distinct name")
        seen.add(name)


def parse_cells(rows, lines, picks: list[int], cols: list[str], shown: str) -> np.ndarray:
    """The picked columns as float64 [rows, len(picks)]. A cell is an ASCII number as
    float() reads it; float()'s extras, digit separators ('1_000') and non-ASCII digits,
    are errors like a cell float() rejects: a spreadsheet never writes them."""
    out = np.empty((len(rows), len(picks)))
    for i, row in enumerate(rows):
        for j, pick in enumerate(picks):
            cell = row[pick].strip()
            try:
                if "_" in cell or not cell.isascii():
                    raise ValueError(cell)
                out[i, j] = float(cell)
            except ValueError:
                raise SpecError(f"{shown} line {lines[i]}, column '{cols[j]}': "
                                f"{_not_a_number(cell)}",
                                hint="every data cell must be a number, written with ASCII "
                                     "digits (1000 or 1e3)") from None
    return out


def _not_a_number(cell: str) -> str:
    if not cell:
        return "empty cell"
    if "_" in cell:
        return f"{cell!r} is not a number (digit separators such as '_' are not read)"
    return f"{cell!r} is not a number"


def np_load(path: Path, shown: str, *, archive: bool, hint: Optional[str] = None):
    """np.load without pickles (data files must not run code); an .npz archive or one array.
    `hint` says what to write instead when the file is of the other kind."""
    try:
        with open(path, "rb") as f:
            head = f.read(6)
            if head == np.lib.format.MAGIC_PREFIX:
                f.seek(0)
                check_memory(npy_nbytes(f, shown), f"reading {shown}")
            elif not head.startswith(b"PK"):    # np.load would call it pickled data
                raise SpecError(f"cannot read {shown}: it is neither an .npz archive nor an "
                                ".npy array", hint=hint)
        loaded = np.load(path, allow_pickle=False)
    except zipfile.BadZipFile:
        raise SpecError(f"cannot read {shown}: it starts as an .npz archive but is cut short "
                        "or damaged", hint="write or copy it again") from None
    except OSError as e:        # "No such file or directory", not "[Errno 2] ...: 'x.npz'"
        raise SpecError(f"cannot read {shown}: {e.strerror or e}") from None
    except (ValueError, EOFError) as e:
        raise SpecError(f"cannot read {shown}: {e}") from None
    is_archive = isinstance(loaded, np.lib.npyio.NpzFile)
    if is_archive and not archive:
        loaded.close()
        raise SpecError(f"{shown} is an .npz archive; npy wants one array per file", hint=hint)
    if archive and not is_archive:
        raise SpecError(f"{shown} holds one array, not an .npz archive of named arrays",
                        hint=hint)
    return loaded


def npy_nbytes(f, shown: str) -> int:
    """Bytes the .npy array in file `f` takes once read, from its header alone: a small file
    may claim terabytes."""
    try:
        version = np.lib.format.read_magic(f)
        shape, _, dtype = NPY_HEADERS[version](f)
    except (KeyError, ValueError, OSError, EOFError) as e:
        raise SpecError(f"cannot read {shown}: not a readable .npy header ({e})") from None
    return math.prod(shape) * dtype.itemsize


def archive_nbytes(archive, keys, shown: str) -> int:
    """Bytes the arrays `keys` of an open .npz take once read, from their headers."""
    total = 0
    for key in keys:
        name = key + ".npy" if key + ".npy" in archive.zip.namelist() else key
        try:
            with archive.zip.open(name) as f:
                total += npy_nbytes(f, f"array '{key}' of {shown}")
        except (OSError, zipfile.BadZipFile) as e:
            raise SpecError(f"cannot read array '{key}' of {shown}: {e}") from None
    return total


def member(archive, key: str, shown: str) -> np.ndarray:
    """One array of an open .npz, its size checked against the memory limit first."""
    check_memory(archive_nbytes(archive, [key], shown), f"reading array '{key}' of {shown}")
    try:
        return archive[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise SpecError(f"cannot read array '{key}' of {shown}: {e}") from None


def numeric(arr: np.ndarray, what: str, samples: bool = True) -> np.ndarray:
    """An array of real numbers (bools read as 0/1; complex numbers and text refused),
    samples-first unless `samples` is False."""
    if arr.dtype.kind not in "biuf":
        raise SpecError(f"{what} has dtype {arr.dtype}; data must be real numbers")
    if samples and arr.ndim == 0:
        raise SpecError(f"{what} is a scalar; data arrays hold one sample per row")
    return arr.astype(np.int64) if arr.dtype.kind == "b" else arr
