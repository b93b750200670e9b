"""Who may hold a connection to the live server, and for how long.

The server gives every connection a thread, so slow or many clients must not be able to keep
threads (and with them the page's own requests) waiting. :class:`ConnectionTable` bounds them:

- **a whole-request deadline**: a connection that waits for, or is still receiving, a request
  (request line, headers, body) longer than ``deadline`` seconds after it opened or after its
  previous answer is closed, however slowly it trickles bytes (a per-read timeout alone lets a
  client that sends one header line every few seconds hold a thread for ever);
- **a cap per client address** and **a cap in all**: a new connection beyond either one closes
  the oldest *idle* connection (one waiting for or receiving its request) of that address, or
  of any address, first; a connection busy answering is never dropped. Only when every
  connection counted against a cap is busy is the new one refused.

So the page's own requests, which arrive whole at once, are answered at once however many
half-sent requests are open. Closing a connection is a ``shutdown`` of its socket, which wakes
its thread from any read; the thread then ends as for a client that hung up.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field


@dataclass(eq=False)
class Connection:
    """One open connection: its socket, its client's address, and whether it waits for (or is
    still receiving) a request, since when."""

    sock: socket.socket
    client: str
    idle: bool = True
    since: float = field(default_factory=time.monotonic)


class ConnectionTable:
    """The open connections of a server (thread-safe); see the module docstring.

    Parameters
    ----------
    per_client:
        Connections one client address may hold at once.
    total:
        Connections all clients may hold at once.
    deadline:
        Seconds a connection may take to deliver a whole request.
    """

    def __init__(self, per_client: int, total: int, deadline: float) -> None:
        if not 1 <= per_client <= total:
            raise ValueError(f"need 1 <= per_client <= total, got {per_client}, {total}")
        self.per_client = per_client
        self.total = total
        self.deadline = deadline
        self._lock = threading.Lock()
        self._open: dict[socket.socket, Connection] = {}
        self.dropped = 0  # idle connections closed to make room, or past their deadline

    def admit(self, sock: socket.socket, client: str) -> bool:
        """Count a new connection in, closing the oldest idle ones it needs room from; False
        (the caller closes it) when every connection it would replace is busy answering."""
        with self._lock:
            drop = []
            same = [c for c in self._open.values() if c.client == client]
            if len(same) >= self.per_client:
                drop += self._oldest_idle(same, len(same) - self.per_client + 1)
            rest = [c for c in self._open.values() if c not in drop]
            if len(rest) >= self.total:
                drop += self._oldest_idle(rest, len(rest) - self.total + 1)
            if len(same) - len([c for c in drop if c.client == client]) >= self.per_client:
                return False
            if len(self._open) - len(drop) >= self.total:
                return False
            for connection in drop:
                del self._open[connection.sock]
            self._open[sock] = Connection(sock, client)
            self.dropped += len(drop)
        for connection in drop:
            _close(connection.sock)
        return True

    @staticmethod
    def _oldest_idle(connections: list[Connection], count: int) -> list[Connection]:
        idle = sorted((c for c in connections if c.idle), key=lambda c: c.since)
        return idle[:count]

    def waiting(self, sock: socket.socket) -> None:
        """``sock`` waits for its next request: its deadline starts now."""
        with self._lock:
            connection = self._open.get(sock)
            if connection is not None:
                connection.idle, connection.since = True, time.monotonic()

    def answering(self, sock: socket.socket) -> None:
        """``sock`` has its whole request and is being answered: never dropped meanwhile."""
        with self._lock:
            connection = self._open.get(sock)
            if connection is not None:
                connection.idle = False

    def remove(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.pop(sock, None)

    def expire(self) -> int:
        """Close every connection whose request is not whole within the deadline; how many."""
        now = time.monotonic()
        with self._lock:
            late = [c for c in self._open.values() if c.idle and now - c.since > self.deadline]
            for connection in late:
                del self._open[connection.sock]
            self.dropped += len(late)
        for connection in late:
            _close(connection.sock)
        return len(late)

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)


def _close(sock: socket.socket) -> None:
    """Wake the connection's thread from its read (it then closes the socket itself)."""
    with contextlib.suppress(OSError):  # already closed by its client
        sock.shutdown(socket.SHUT_RDWR)
