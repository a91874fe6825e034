"""Training: data -> mini-batches -> the compiled training step, per-epoch metrics, checkpoints.

One `StepGraph` (forward + backward + updates) is compiled per batch size; the learning
rate is written into its `hyper` leaf each epoch. A non-finite loss or gradient skips that
step's updates (see optim.py) and stops training with the node that first went
non-finite. Checkpoints (checkpoint.py) hold everything a resume needs to continue bit for
bit. A run holds a lock on its checkpoint (outfiles.locked); Ctrl-C, SIGTERM and SIGHUP
save one and exit 130, 143, 129. Under mpiexec every rank runs this loop on its share of
each batch (parallel.py); stops and saves are agreed, and rank 0 alone logs, locks and
writes (docs/scaling.md).
"""
from __future__ import annotations

import math
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional

import numpy as np

from . import checkpoint as C
from .checkpoint import RESERVED
from .data import batch_rows, n_samples, stats_to_arrays
from .errors import SpecError
from .evaluation import STATS, Evaluator
from .guard import diagnose
from .interrupts import deferred_stop, exit_code, signal_name
from .metrics import EarlyStopping
from .model import Model, Runner, zero_state
from .outfiles import NPZ, destination, locked, remove_stale_temps
from .optim import LR, SHARE, StepGraph, training_graph
from .parallel import SOLO, World, everywhere, world as this_world
from .remat import NONE, MemoryPolicy
from .trainconfig import TrainConfig, load_dataset

SHUFFLE_STREAM = 2          # the batch order's RNG: default_rng([seed, 2]) (data uses 1)
SAVE_INTERVAL_S = 1.0       # default checkpoint cadence: each epoch end, at most once a second


class Interrupted(SpecError):
    """Ctrl-C, SIGTERM or SIGHUP: a checkpoint was saved; exit 128 + the signal's number
    (130, 143, 129), as a shell reports the signal."""

    def __init__(self, message: str, signum: int, **kw):
        super().__init__(message, **kw)
        self.exit_code = exit_code(signum)


@dataclass
class EpochLog:
    epoch: int
    loss: float
    metrics: dict
    lr: float


@dataclass
class TrainResult:
    loss: float
    metrics: dict
    epochs: int
    samples_per_s: float
    history: list = field(default_factory=list)
    notes: list = field(default_factory=list)       # lines for the user (early stopping)
    checkpoint: dict = field(default_factory=dict, repr=False)  # the final checkpoint's arrays
    split: str = "training"              # where loss and metrics were measured, or "validation"
    samples: int = 0                     # that split's size
    restored_epoch: Optional[int] = None     # the epoch whose params early stopping restored

    def json(self) -> dict:
        return {"loss": self.loss, "metrics": self.metrics, "epochs": self.epochs,
                "samples_per_s": self.samples_per_s}


@dataclass
class Position:
    """Where a run is: `epoch` epochs done, `step` batches of the next one, the RNG state at
    that epoch's start (its batch order), and that partial epoch's loss sum and samples."""
    rng: np.ndarray
    epoch: int = 0
    step: int = 0
    global_step: int = 0
    global_samples: int = 0
    loss_sum: float = 0.0
    samples: int = 0

    COUNTS = ("epoch", "step", "global_step", "global_samples", "samples")

    def arrays(self) -> dict:
        out = {RESERVED + k: np.asarray(getattr(self, k), np.int64) for k in self.COUNTS}
        out[RESERVED + "loss_sum"] = np.asarray(self.loss_sum, np.float64)
        out[RESERVED + "rng"] = self.rng
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping, path) -> "Position":
        """The position a checkpoint saved, each array checked (C.entry) before use."""
        pos = cls(C.entry(arrays, RESERVED + "rng", path, (6,), np.uint64))
        for k in cls.COUNTS:
            setattr(pos, k, int(C.entry(arrays, RESERVED + k, path, (), np.int64, True)))
        pos.loss_sum = float(C.entry(arrays, RESERVED + "loss_sum", path, (), np.float64))
        return pos


def step_runner(model: Model, step: StepGraph, memory: MemoryPolicy = NONE) -> Runner:
    """The compiled training step over the model's store, its optimizer state zeroed (not
    the spec's state), its learning-rate leaf added (zero until written), under `memory`."""
    zero_state(model, step.graph, step.states)
    model.store[LR] = np.zeros((), dtype=model.graph.dtype)
    if step.together:
        model.store[SHARE] = np.ones((), dtype=model.graph.dtype)
    return Runner(step.graph, model.store, {model.graph.loss, step.guard}, forward=step.forward,
                  memory=memory, together=step.together)


class Run:
    """One training run's moving parts: step executor, evaluator, position, early stopping.
    Rank 0 alone `writes` to `out`; other ranks keep their checkpoints in memory."""

    def __init__(self, model: Model, cfg: TrainConfig, out: Optional[Path],
                 save_every: Optional[int], world: World = SOLO):
        self.model, self.cfg, self.out, self.save_every = model, cfg, out, save_every
        self.world, self.writes = world, out is not None and world.rank == 0
        if self.writes:
            destination(out, "checkpoint", NPZ)     # fail now, not after training
            remove_stale_temps(out)
        self.data = load_dataset(model, cfg)
        if cfg.early_stopping and self.data.valid is None:
            raise SpecError("early_stopping watches the validation split, and train.data has "
                            "none", mark=model.spec.train.mark_of("early_stopping"),
                            hint="add validation: 0.2 to train.data")
        self.step = training_graph(model.graph, cfg.optimizer, cfg.clip_grad_norm,
                                   synced=world.size > 1)
        self.runner = step_runner(model, self.step, cfg.memory)
        self.key = model.rng_key
        self.evaluate = Evaluator(model, cfg.metrics, world=world)
        self.rng = np.random.default_rng([cfg.seed, SHUFFLE_STREAM])
        self.pos = Position(C.rng_array(self.rng.bit_generator.state))
        self.early = cfg.early_stopping and EarlyStopping(cfg.early_stopping)
        self.best: dict = {}
        self.notes: list = []
        self.saved_epoch, self.last_save = None, time.monotonic()
        self.saved: dict = {}

    def state_names(self) -> list:
        return [s for names in self.step.states.values() for s in names]

    def loop(self, log, stopped) -> list:
        history = []
        while self.pos.epoch < self.cfg.epochs and not (self.early and self.early.stop):
            lr = self.cfg.schedule.lr(self.cfg.optimizer.lr, self.pos.epoch)
            self.model.store[LR][...] = lr
            self.rng.bit_generator.state = C.rng_state(self.pos.rng)
            n = n_samples(self.data.train)
            for i, rows in enumerate(batch_rows(n, self.cfg.batch_size, self.rng)):
                if i >= self.pos.step:
                    self._step(rows, i)
                    self._stop_if(stopped)
            history.append(self._end_epoch(lr))
            log(history[-1])
            self._stop_if(stopped)
        return history

    def _stop_if(self, stopped) -> None:
        """Stop here when any rank has had a stop signal (all ranks agree where)."""
        signum = self.world.agree(stopped())
        if signum:
            self._interrupt(signum)

    def _step(self, rows, i: int) -> None:
        if self.key is not None:
            self.key[:] = self.cfg.seed, self.pos.global_step
        shard, share = self.world.shard(rows)
        if self.step.together:
            self.model.store[SHARE][...] = share
        ex = self.runner.run_rows(self.data.train, shard)
        self.world.average(C.state_of(self.model).values(), share)     # running statistics
        loss, norm = float(ex[self.model.graph.loss]), float(ex[self.step.guard])
        if not (math.isfinite(loss) and math.isfinite(norm)):
            where = (f"epoch {self.pos.epoch + 1}, batch {i} "
                     f"(step {self.pos.global_step + 1})")
            batch = {k: v[shard] for k, v in self.data.train.items()}
            raise self.world.first(diagnose(self.model, batch, where, self._kept()))
        m = len(rows)
        p = self.pos
        p.loss_sum, p.samples, p.step = p.loss_sum + loss * m, p.samples + m, i + 1
        p.global_step, p.global_samples = p.global_step + 1, p.global_samples + m

    def _kept(self) -> str:
        if self.saved_epoch is None or self.out is None:
            return "training stopped before any checkpoint was saved"
        return (f"training stopped; {self.out} keeps the last good state (after epoch "
                f"{self.saved_epoch})")

    def _end_epoch(self, lr: float) -> EpochLog:
        p = self.pos
        loss = p.loss_sum / max(p.samples, 1)
        metrics = self.evaluate(self.data.train)[1] if self.cfg.metrics else {}
        if self.data.valid is not None:
            val_loss, val = self.evaluate(self.data.valid)
            metrics.update({"val_loss": val_loss, **{f"val_{k}": v for k, v in val.items()}})
        if self.early:
            watched = metrics["val_" + self.early.cfg.metric]
            if self.early.update(watched, p.epoch + 1):
                self.best = {k: v.copy() for k, v in C.leaves_of(self.model).items()}
        self.pos = Position(C.rng_array(self.rng.bit_generator.state), p.epoch + 1, 0,
                            p.global_step, p.global_samples)
        due = self.save_every and self.pos.epoch % self.save_every == 0 or not self.save_every \
            and time.monotonic() - self.last_save >= SAVE_INTERVAL_S
        if self.world.agree(int(bool(due))):
            self.save()
        return EpochLog(self.pos.epoch, loss, metrics, lr)

    def _interrupt(self, signum: int):
        self.save()
        p = self.pos
        at = f"epoch {p.epoch + 1}, batch {p.step}" if p.step else f"the end of epoch {p.epoch}"
        if self.out is None:
            raise everywhere(Interrupted(f"interrupted at {at} ({signal_name(signum)}); the "
                                         "params are those of that step", signum))
        raise everywhere(Interrupted(f"interrupted at {at} ({signal_name(signum)}); checkpoint "
                                     f"saved to {self.out}", signum,
                                     hint=f"continue with --resume {self.out}"))

    def save(self, extra: Optional[dict] = None) -> None:
        """Params and state, optimizer state, position, RNG, early stopping, spec and stats,
        checked identical across ranks; rank 0 writes them atomically to `out` (kept in
        memory, as `saved`, always)."""
        m = self.model
        arrays = {**C.leaves_of(m), **self.pos.arrays(),
                  **C.spec_arrays(m, self.cfg.run_settings()),
                  **stats_to_arrays(self.data.stats, STATS)}
        arrays.update({RESERVED + "state/" + s: m.store[s] for s in self.state_names()})
        if self.early:
            e = self.early
            arrays[RESERVED + "early"] = np.array([e.best, e.best_epoch, e.wait], np.float64)
            arrays.update({RESERVED + "best/" + k: v for k, v in self.best.items()})
        arrays.update(extra or {})
        self.world.check_identical([m.store[k] for k in [*C.leaves_of(m), *self.state_names()]],
                                   f"{self.pos.global_step} steps")
        self.saved = arrays
        if self.writes:
            C.write(self.out, arrays)
        self.saved_epoch, self.last_save = self.pos.epoch, time.monotonic()

    def restore(self, path) -> None:
        """Continue from a checkpoint of the same spec and settings, exactly where it was."""
        arrays = C.read(path)
        C.check_same_run(arrays, self.model, self.cfg.run_settings(), path)
        names = list(C.leaves_of(self.model)) + [RESERVED + "state/" + s
                                                 for s in self.state_names()]
        for key in names:
            stored = RESERVED + "last/" + key if RESERVED + "last/" + key in arrays else key
            if stored not in arrays:
                raise SpecError(f"cannot resume from {path}: it has no '{key}'",
                                hint="it was saved by another optimizer or graphc version")
            target = self.model.store[key[len(RESERVED + "state/"):]
                                      if key.startswith(RESERVED) else key]
            counts = key.rpartition(".")[2] in self.cfg.optimizer.NON_NEGATIVE
            target[...] = C.entry(arrays, stored, path, target.shape, target.dtype, counts)
        self.pos = Position.from_arrays(arrays, path)
        if self.early and RESERVED + "early" in arrays:
            self._restore_early(arrays, path)
        self.saved_epoch = self.pos.epoch

    def _restore_early(self, arrays: Mapping, path) -> None:
        """Early stopping's best value (NaN before the first), its epoch, the epochs waited,
        and the best params where saved."""
        best, epoch, wait = C.entry(arrays, RESERVED + "early", path, (3,))
        if not (np.isfinite([epoch, wait]).all() and epoch >= 0 and wait >= 0):
            raise SpecError(f"checkpoint {path}: '{RESERVED}early' holds {[epoch, wait]} as "
                            "epoch and patience count", hint=C.DAMAGED)
        self.early.best, self.early.best_epoch, self.early.wait = best, int(epoch), int(wait)
        if any(k.startswith(RESERVED + "best/") for k in arrays):
            self.best = {p: C.entry(arrays, RESERVED + "best/" + p, path, v.shape, v.dtype)
                         .copy() for p, v in C.leaves_of(self.model).items()}

    def finish(self) -> tuple:
        """Restore the best params and state (early stopping), evaluate, save the final one."""
        last = {}
        if self.best:
            for k, v in C.leaves_of(self.model).items():
                last[RESERVED + "last/" + k] = v.copy()
                v[...] = self.best[k]
            e = self.early
            stopped = f"stopped at epoch {self.pos.epoch} (patience {e.cfg.patience}); " \
                if e.stop else ""
            self.notes.append(f"early stopping: {stopped}restored the params of epoch "
                              f"{e.best_epoch}, val_{e.cfg.metric} {e.best:.4f}")
        loss, metrics = self.evaluate(self.final_split()[1])
        self.save(last)
        return loss, metrics

    def final_split(self) -> tuple:
        """(name, arrays) of the split the final numbers are measured on: the validation
        split where there is one, else the training set."""
        if self.data.valid is not None:
            return "validation", self.data.valid
        return "training", self.data.train


def train(model: Model, cfg: TrainConfig, *, out: Optional[Path],
          log: Callable[[EpochLog], None] = lambda e: None, resume=None,
          save_every: Optional[int] = None) -> TrainResult:
    """Train to cfg.epochs (from a checkpoint's position with `resume`); save checkpoints to
    `out` every `save_every` epochs (default: at epoch ends, at most once a second) and at the
    end. With `out=None` nothing is written; the result carries the final checkpoint.
    The checkpoint is locked from the end of set-up (data loaded, step compiled: bad input
    is reported first) to the last save. Under mpiexec every rank calls this alike; rank 0
    alone logs, locks and writes (docs/scaling.md)."""
    world = this_world()
    with ExitStack() as held:
        def setup() -> Run:
            run = Run(model, cfg, None if out is None else Path(out), save_every, world)
            if run.writes:
                held.enter_context(locked(out, "checkpoint"))
            if resume is not None:
                run.restore(resume)
            return run
        run = world.settle(setup)
        return _train(run, log if world.rank == 0 else lambda e: None, resume)


def _train(run: Run, log, resume) -> TrainResult:
    cfg = run.cfg
    if resume is not None:
        if run.pos.epoch >= cfg.epochs:
            run.notes.append(f"{resume} is already at epoch {run.pos.epoch} of {cfg.epochs}: "
                             "nothing left to train (raise --epochs to train longer)")
    start, done = time.perf_counter(), run.pos.global_samples
    with deferred_stop() as stopped, np.errstate(all="ignore"):
        history = run.loop(log, stopped)
    elapsed = time.perf_counter() - start
    loss, metrics = run.finish()
    seen = run.pos.global_samples - done
    split, arrays = run.final_split()
    return TrainResult(loss, metrics, run.pos.epoch, seen / elapsed if elapsed else 0.0,
                       history, run.notes, run.saved, split, n_samples(arrays),
                       run.early.best_epoch if run.best else None)
