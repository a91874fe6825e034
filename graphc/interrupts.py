"""Stop signals: Ctrl-C (SIGINT), SIGTERM and SIGHUP all stop graphc the same way.

Training defers them to a step boundary, saves a checkpoint and exits 128 + the
signal's number (130, 143, 129), as a shell reports a process the signal killed;
anywhere else they raise `Stopped` at once, and the CLI exits with that code.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _heeded() -> list:
    """The stop signals this process does not ignore: `nohup` ignores SIGHUP, and a shell
    ignores SIGINT for a background job; graphc keeps that choice."""
    return [s for s in STOP_SIGNALS if signal.getsignal(s) is not signal.SIG_IGN]


def exit_code(signum: int) -> int:
    """A shell's exit status for a process a signal stopped: 128 + its number."""
    return 128 + int(signum)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class Stopped(KeyboardInterrupt):
    """A stop signal arrived where graphc does not save: exit 128 + its number."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal_name(signum))
        self.signum = signum
        self.exit_code = exit_code(signum)


def _raise_stopped(signum, frame):
    raise Stopped(signum)


def stop_on_signals() -> None:
    """Make SIGTERM and SIGHUP raise `Stopped`, as SIGINT raises KeyboardInterrupt (so
    `finally` blocks run: temp files and locks are cleaned up). Main thread only; an
    ignored signal stays ignored."""
    if threading.current_thread() is threading.main_thread():
        for signum in set(_heeded()) - {signal.SIGINT}:
            signal.signal(signum, _raise_stopped)


@contextmanager
def deferred_stop():
    """Within: a first stop signal only records its number, which the caller polls (yields
    the poll: the signal number, or 0) to stop at a step boundary; a second one raises
    `Stopped` at once. An ignored signal stays ignored; outside the main thread: no-op."""
    hit = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: 0
        return

    def handler(signum, frame):
        if hit:
            raise Stopped(signum)
        hit.append(signum)
    previous = {s: signal.signal(s, handler) for s in _heeded()}
    try:
        yield lambda: hit[0] if hit else 0
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
