"""Files graphc writes for the user: regular files only, atomically, honouring the umask.

Every user-named output (checkpoints, `grad --out`, DOT, SVG, plots) goes
through `atomic_write`: a temp file `.{name}.graphc-{pid}-{random}.tmp` in the
target's folder, created with mode 0666 less the umask (an existing target keeps
its mode), fsynced and `os.replace`d over the target. Only a regular file or a
new path is replaced; a symlink to a regular file is followed (its target is
replaced, the link stays); device nodes, FIFOs, sockets, folders and dangling or
looping links are refused. `destination` runs the same checks, and creates and
removes a temp file, before any work, so an unwritable folder or a name too long
for the file system fails at once; given the suffixes of the format a flag writes
(`NPZ`, `DOT`, `SVG`, ...), it also refuses a name that says another format.
`locked` holds an advisory lock on `{target}.lock` while a run writes the target.
"""
from __future__ import annotations

import errno
import os
import re
import secrets
import socket
import stat
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence

from .errors import SpecError

try:
    import fcntl
except ImportError:                 # not POSIX: no advisory locks
    fcntl = None

# the names of each format graphc writes (docs/cli.md, "Output files")
NPZ, DOT, SVG, ONNX, YAML = (".npz",), (".dot", ".gv"), (".svg",), (".onnx",), (".yaml", ".yml")
CSV = (".csv",)
TEMP_STEM = 100         # characters of the target's name kept in a temp file's name
KINDS = {stat.S_IFDIR: "a folder", stat.S_IFCHR: "a character device",
         stat.S_IFBLK: "a block device", stat.S_IFIFO: "a FIFO (named pipe)",
         stat.S_IFSOCK: "a socket"}


def _temp_prefix(path: Path) -> str:
    return f".{path.name[:TEMP_STEM]}.graphc-"


def temp_pattern(path: Path) -> re.Pattern:
    """The names of temp files graphc creates for `path`: group 1 is the writer's pid."""
    return re.compile(re.escape(_temp_prefix(path)) + r"(\d+)-[0-9a-f]{8}\.tmp")


def _temp_name(path: Path) -> Path:
    return path.with_name(f"{_temp_prefix(path)}{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _refuse(what: str, path, problem: str, hint: Optional[str] = None) -> SpecError:
    return SpecError(f"cannot write {what} {path}: {problem}",
                     hint=hint or "choose another path")


def named_as(path, what: str, suffixes: Sequence[str]) -> None:
    """SpecError unless `path`'s name ends in one of `suffixes` (any case), the format
    graphc writes there: never an .npz or SVG under a name that says another format.
    A path that names no file ('', '.', '..', '/') is refused too."""
    given, path = os.fspath(path), Path(path)
    if path.name in ("", ".."):
        raise SpecError(f"{what} {given!r}: expected a file name, got a folder's",
                        hint=f"name the file, e.g. {path / ('out' + (suffixes or ('',))[0])}")
    if not suffixes or path.suffix.lower() in suffixes:
        return
    raise SpecError(f"{what} {path}: expected a {' or '.join(suffixes)} file",
                    hint=f"name it {path.with_name(path.stem + suffixes[0])}")


def destination(path, what: str, suffixes: Sequence[str] = ()) -> Path:
    """The file a write to `path` replaces: `path`, or the regular file its symlink points to.
    SpecError (naming `what` and the path) for a name without one of `suffixes` (where
    given), anything but a regular file, a missing or unwritable folder, or a name too
    long; a temp file is created and removed to prove the folder."""
    named_as(path, what, suffixes)
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise _refuse(what, path, f"it is a symlink to nothing ({os.readlink(path)})",
                          "remove the link or point it at a file") from None
        st = None
    except OSError as exc:          # ELOOP, ENAMETOOLONG, ENOTDIR, EACCES
        raise _refuse(what, path, exc.strerror or str(exc)) from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise _refuse(what, path, f"it is {kind}; graphc writes only regular files")
    target = Path(os.path.realpath(path)) if st is not None else path
    _probe_folder(target, what, path)
    return target


def _probe_folder(target: Path, what: str, shown: Path) -> None:
    folder = target.parent
    if not folder.is_dir():
        raise _refuse(what, shown, f"there is no folder {folder}",
                      f"create it first (mkdir -p {folder}) or choose another path")
    name_max = _name_max(folder)
    if len(os.fsencode(target.name)) > name_max:
        raise _refuse(what, shown, f"the name is longer than the {name_max} bytes "
                      "the file system allows", "choose a shorter name")
    probe = _temp_name(target)
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        os.unlink(probe)
    except OSError as exc:
        raise _refuse(what, shown, f"folder {folder}: {exc.strerror or exc}") from None


def check_outputs(paths: Mapping[str, Optional[Path]],
                  formats: Mapping[str, Sequence[str]] = {},
                  reads: Mapping[str, Optional[Path]] = {}) -> None:
    """destination() of every path given, keyed by its flag, with the suffixes `formats`
    gives that flag, and not_read() against the files the run `reads`: all outputs
    checked before the work that fills them."""
    for what, path in paths.items():
        if path is not None:
            destination(path, what, formats.get(what, ()))
            not_read(path, what, reads)


def not_read(path, what: str, reads: Mapping[str, Optional[Path]]) -> None:
    """SpecError where output `path` (flag `what`) is a file the same run reads, keyed by
    what reads it: writing it would replace the user's input (predict --inputs x.npz
    --out x.npz)."""
    for source, read in reads.items():
        not_same(path, what, read, f"the file {source} reads")


def not_same(path, what: str, other: Optional[Path], called: str) -> None:
    """SpecError where output `path` (flag `what`) is the file `other`, which the user
    knows as `called` ("the spec file"): writing it would replace it."""
    try:
        same = other is not None and os.path.samefile(path, other)
    except OSError:                 # either is missing: nothing to replace
        same = False
    if same:
        raise SpecError(f"{what} {path} is {called}; writing it would replace it",
                        hint=f"name another file for {what}")


def writable_folder(folder, what: str, names: Iterable[str]) -> None:
    """SpecError unless `folder` is, or can be made as, a folder where files `names` can
    be written (each checked like destination())."""
    folder = Path(folder)
    existing = folder
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise _refuse(what, folder, f"{existing} is not a folder")
    if existing != folder:
        _probe_folder(existing / "probe", what, folder)
        return
    for name in names:
        destination(folder / name, what)


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def atomic_write(path, write: Callable, what: str, suffixes: Sequence[str] = ()) -> Path:
    """Call write(binary file) on a temp file beside `path`'s destination (named with one
    of `suffixes`, where given), fsync it and os.replace it there: all or nothing.
    Returns the file written; SpecError on failure."""
    target = destination(path, what, suffixes)
    tmp = _temp_name(target)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            if target.exists():
                os.chmod(f.fileno(), stat.S_IMODE(os.stat(target).st_mode))
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _refuse(what, path, exc.strerror or str(exc)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def write_text(path, text: str, what: str, suffixes: Sequence[str] = ()) -> Path:
    """atomic_write of UTF-8 text."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")), what, suffixes)


def remove_stale_temps(path) -> None:
    """Delete the temp files of `path` (graphc's own names only) whose writer has died."""
    target = Path(path)
    pattern = temp_pattern(target)
    try:
        names = os.listdir(target.parent)
    except OSError:
        return
    for name in names:
        found = pattern.fullmatch(name)
        if found and not _alive(int(found.group(1))):
            (target.parent / name).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


@contextmanager
def locked(path, what: str):
    """Hold an exclusive advisory lock on `{destination}.lock` (which records pid, host,
    start time and command) while the block runs; SpecError naming the holder if another
    process holds it."""
    target = destination(path, what)
    if fcntl is None:
        yield target
        return
    lock = target.with_name(target.name + ".lock")
    fd = _acquire(lock, target, what)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, _holder_line().encode("utf-8"))
        yield target
    finally:
        Path(lock).unlink(missing_ok=True)      # still locked: a waiter re-checks the inode
        os.close(fd)


def _acquire(lock: Path, target: Path, what: str) -> int:
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
        except OSError as exc:
            raise _refuse(what, target, f"cannot create lock file {lock}: "
                                        f"{exc.strerror or exc}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise _refuse(what, target, f"lock file {lock} is not a regular file",
                          f"remove {lock}")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.read(fd, 4096).decode("utf-8", errors="replace").strip()
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise _refuse(what, target, f"cannot lock {lock}: {exc.strerror}") from None
            raise SpecError(f"{what} {target} is in use by another graphc run "
                            f"({holder or 'holder unknown'})",
                            hint="wait for it to finish, stop it, or choose another --out")
        if _same_file(fd, lock):
            return fd
        os.close(fd)                # the holder removed it as we opened it: take the new one


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _holder_line() -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    command = " ".join(["graphc", *sys.argv[1:]])
    return f"pid {os.getpid()} on {socket.gethostname()}, started {started}: {command}\n"
