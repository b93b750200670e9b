"""Ctrl-C at a clean point: a SIGINT that arrives while a chunk is being written waits until the
chunk is written, so an interrupted run leaves a file of whole chunks."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold SIGINT for the block; raise KeyboardInterrupt after it if one arrived.

    Only the main thread can take signals: elsewhere this is a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: arrived.append(signum))
    if previous is None:  # a handler installed outside Python: fall back to Python's own
        previous = signal.default_int_handler
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if arrived:
        raise KeyboardInterrupt
