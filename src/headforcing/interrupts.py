"""Stops at a clean point: SIGINT (Ctrl-C) and SIGTERM both raise :class:`Interrupted` in the
main thread, and a signal that arrives while a chunk is written, or while the video is closed,
waits until that is done, so a stopped run leaves a file of whole chunks and a finished tail.

Exit codes follow the shell's convention, ``128 + signal number``: 130 for SIGINT, 143 for
SIGTERM (:func:`exit_code`).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A stop signal turned into an exception; ``signum`` says which one."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(stop: BaseException) -> int:
    """The shell's exit status of a process stopped by ``stop``: 130 (SIGINT), 143 (SIGTERM)."""
    return 128 + getattr(stop, "signum", signal.SIGINT)


_received: list[int] = []  # stop signals taken by the handlers below (main thread only)


def _raise_interrupted(signum: int, frame) -> None:
    _received.append(signum)
    raise Interrupted(signum)


@contextmanager
def stop_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` for the block (main thread only).

    A signal the parent set to be ignored (``nohup``, a shell's background job) stays ignored.
    The previous handlers come back after the block, unless a stop signal came during it:
    then the process is on its way out, and a late second Ctrl-C is ignored rather than let
    kill it (and change its exit status) after the video was closed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for signum in STOP_SIGNALS:
        handler = signal.getsignal(signum)
        if handler is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, _raise_interrupted)
    _received.clear()
    try:
        yield
    finally:
        for signum, handler in previous.items():
            _restore(signum, signal.SIG_IGN if _received else handler)


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold SIGINT and SIGTERM for the block; raise :class:`Interrupted` after it if one came.

    Every signal that arrives during the block (a second Ctrl-C, too) is only recorded, so the
    block always finishes. Only the main thread can take signals: elsewhere this is a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    previous = {}
    for signum in STOP_SIGNALS:
        handler = signal.getsignal(signum)
        if handler is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, lambda got, frame: arrived.append(got))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            _restore(signum, handler)
    if arrived:
        _received.extend(arrived)
        raise Interrupted(arrived[0])


def _restore(signum: int, handler) -> None:
    if handler is None:  # a handler installed outside Python: fall back to Python's own
        handler = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
    signal.signal(signum, handler)
