"""More than one process: the MPI world a data-parallel run trains in (docs/scaling.md).

`world()` is this process's place in the run: `SOLO` (one process, no MPI) unless an
MPI launcher (mpiexec, mpirun, srun) started more than one, which its environment
says (PMI_SIZE, OMPI_COMM_WORLD_SIZE, ...). Then mpi4py (`pip install 'graphc[mpi]'`)
is required: without it, or with an mpi4py whose MPI library sees this process alone
(built for another MPI than the launcher's), every process stops with an error
rather than train on its own. mpi4py is imported only under a launcher, so a plain
run never pays for it.

A `World` offers the few collectives training needs: an in-place sum of an array
(the gradients), an agreed maximum (a stop signal), an allgather (metrics, errors),
`settle` (set-up that fails on one rank fails on all, with that rank's message) and
`abort` (a rank that cannot go on ends every rank now).
"""
from __future__ import annotations

import hashlib
import os
from typing import Callable, Mapping, Optional

import numpy as np

from .errors import CheckFailed, GraphcError, SpecError

INSTALL = "pip install 'graphc[mpi]'"
# what MPI launchers put in each process's environment: the world size and the rank
SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "PMIX_RANK")


class World:
    """One process alone: every collective is the identity."""
    size, rank = 1, 0

    def share(self, n: int) -> tuple:
        """[start, stop) of the n rows this rank takes: np.array_split's contiguous pieces,
        in rank order, sizes differing by at most one."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (self.rank < extra)

    def shard(self, rows: np.ndarray) -> tuple:
        """(this rank's rows of a batch, their fraction of it). A rank left with none (a
        batch smaller than the ranks) takes the batch's first row with fraction 0, so it
        runs the step like the others and adds nothing."""
        start, stop = self.share(len(rows))
        return (rows[start:stop] if stop > start else rows[:1]), (stop - start) / len(rows)

    def allreduce(self, buffer: np.ndarray) -> None:
        """buffer <- the sum of every rank's buffer, in place (identical on every rank)."""

    def agree(self, value: int) -> int:
        """The largest of every rank's `value`."""
        return value

    def allgather(self, obj) -> list:
        """[rank 0's obj, rank 1's, ...] on every rank."""
        return [obj]

    def first(self, error: GraphcError) -> GraphcError:
        """Of one error every rank raised at once (each its own diagnosis), the lowest
        rank's that names a node, else rank 0's, raised alike everywhere."""
        return error

    def check_identical(self, arrays: list, when: str) -> None:
        """CheckFailed unless every rank holds the same `arrays`, bit for bit."""

    def settle(self, setup: Callable):
        """setup()'s result on every rank, or, where it raised a GraphcError on any rank,
        that error (the lowest such rank's) raised on every rank."""
        return setup()

    def abort(self, code: int) -> None:
        """End every rank now with exit status `code` (only this process, alone)."""
        raise SystemExit(code)


SOLO = World()


class MPIWorld(World):
    """The processes of one MPI job (mpi4py's COMM_WORLD)."""

    def __init__(self, comm, mpi):
        self.comm, self.mpi = comm, mpi
        self.size, self.rank = comm.Get_size(), comm.Get_rank()
        self._flag = np.zeros(1, np.int64)

    def allreduce(self, buffer: np.ndarray) -> None:
        self.comm.Allreduce(self.mpi.IN_PLACE, buffer, op=self.mpi.SUM)

    def agree(self, value: int) -> int:
        self._flag[0] = value
        self.comm.Allreduce(self.mpi.IN_PLACE, self._flag, op=self.mpi.MAX)
        return int(self._flag[0])

    def allgather(self, obj) -> list:
        return self.comm.allgather(obj)

    def first(self, error: GraphcError) -> GraphcError:
        found = self.allgather((str(error), error.node is not None))
        rank = next((r for r, (_, named) in enumerate(found) if named), 0)
        return everywhere(RankError(f"rank {rank} of {self.size}: {found[rank][0]}",
                                    error.exit_code))

    def check_identical(self, arrays: list, when: str) -> None:
        digest = hashlib.sha256()
        for a in arrays:
            digest.update(np.ascontiguousarray(a).tobytes())
        if len(set(self.allgather(digest.hexdigest()))) > 1:
            raise everywhere(CheckFailed(
                f"the ranks' parameters differ after {when}: their updates were not "
                "identical (does this MPI library's allreduce give ranks different sums?)",
                hint="train with one process, and report it"))

    def settle(self, setup: Callable):
        result, failure = None, None
        try:
            result = setup()
        except GraphcError as exc:
            failure = exc
        reports = self.allgather(None if failure is None else
                                 (str(failure), failure.exit_code))
        first = next(((r, rep) for r, rep in enumerate(reports) if rep is not None), None)
        if first is None:
            return result
        rank, (text, code) = first
        raise everywhere(failure if rank == self.rank else
                         RankError(f"rank {rank} of {self.size}: {text}", code))

    def abort(self, code: int) -> None:
        self.comm.Abort(code)


class RankError(GraphcError):
    """Another rank's error, as it printed it, with its exit status."""

    def __init__(self, text: str, code: int):
        super().__init__(text)
        self.exit_code = code


def everywhere(exc: GraphcError) -> GraphcError:
    """Mark `exc` as raised alike on every rank: rank 0 alone reports it, and no rank
    aborts the others (they are all stopping)."""
    exc.everywhere = True
    return exc


def launched(env: Mapping = os.environ) -> int:
    """How many processes an MPI launcher says it started (1 without one); a rank above 0
    with no size means at least two."""
    sizes = [int(env[v]) for v in SIZE_VARS if env.get(v, "").isdigit()]
    ranks = [int(env[v]) for v in RANK_VARS if env.get(v, "").isdigit()]
    return max(sizes + [2 if any(ranks) else 1])


_world: Optional[World] = None


def world() -> World:
    """This process's world, made on first use: SOLO, or the MPI job a launcher started."""
    global _world
    if _world is None:
        _world = _connect(launched()) if launched() > 1 else SOLO
    return _world


def current() -> Optional[World]:
    """The world if `world()` has made one, else None (nothing joined, nothing to abort)."""
    return _world


def _connect(processes: int) -> World:
    try:
        from mpi4py import MPI
    except ImportError:
        raise SpecError(f"this is one of {processes} processes an MPI launcher started, and "
                        "graphc trains data-parallel over MPI with mpi4py, which is not "
                        "installed; each process would train alone",
                        hint=f"install it with {INSTALL}, or run without mpiexec") from None
    comm = MPI.COMM_WORLD
    if comm.Get_size() == 1:
        raise SpecError(f"an MPI launcher started {processes} or more processes, but mpi4py's "
                        "MPI library sees this one alone: mpi4py was built for another MPI "
                        "than this launcher's, and each process would train alone",
                        hint="launch with the mpiexec of the MPI that mpi4py uses ("
                             "python -c 'import mpi4py; print(mpi4py.get_config())')")
    return MPIWorld(comm, MPI)
