"""The live server answers only its own page: Host, Origin, token and JSON are checked, a
malformed request gets a 400 (no traceback), half-sent requests time out without stopping the
others, slow or many clients cannot hold it (a whole-request deadline, a cap per client that
drops the oldest idle connection first), and a prompt after the run gets a 409."""

import contextlib
import json
import select
import socket
import threading
import time

import pytest

from headforcing.cache import make_policy
from headforcing.interactive import LiveServer, LiveSession
from headforcing.io.decoders import pixel_frames
from headforcing.pipeline import Pipeline


@pytest.fixture
def server(tmp_path):
    pipeline = Pipeline.with_standins("tiny", height=32, width=32)
    session = LiveSession(pipeline, make_policy("window"), "a red ball", 6, tmp_path / "v.mp4")
    server = LiveServer(
        session, 0, socket_timeout=1.0, request_deadline=1.0, max_per_client=4, max_connections=8
    ).start()
    yield server
    session.stop()
    session.join(30)
    server.shutdown()
    server.server_close()


def exchange(server, request: bytes, timeout: float = 10) -> tuple[int, dict]:
    with socket.create_connection(server.server_address, timeout=timeout) as connection:
        connection.sendall(request)
        reply = b""
        while chunk := connection.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    return status, json.loads(body) if body.startswith(b"{") else {}


def prompt_request(server, *, host=None, origin=None, token=None, kind="application/json",
                   length=None, body=b'{"prompt": "a blue cube"}') -> bytes:  # fmt: skip
    port = server.server_address[1]
    lines = [
        "POST /prompt HTTP/1.1",
        f"Host: {host or f'127.0.0.1:{port}'}",
        f"Content-Type: {kind}",
        f"Content-Length: {len(body) if length is None else length}",
        "Connection: close",
    ]
    if origin:
        lines.append(f"Origin: {origin}")
    if token is not False:
        lines.append(f"X-Headforcing-Token: {token or server.token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def get_request(server, path: str, host=None) -> bytes:
    port = server.server_address[1]
    host = host or f"127.0.0.1:{port}"
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()


def test_the_own_page_may_post(server):
    port = server.server_address[1]
    status, reply = exchange(server, prompt_request(server, origin=f"http://localhost:{port}"))
    assert status == 202 and reply["queued"] == "a blue cube"


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"origin": "http://evil.example"}, 403),
        ({"origin": "null"}, 403),
        ({"host": "attacker.example"}, 403),
        ({"host": "attacker.example:80"}, 403),
        ({"token": False}, 403),
        ({"token": "guessed"}, 403),
        ({"kind": "text/plain"}, 415),
        ({"kind": "application/x-www-form-urlencoded", "body": b"prompt=a+blue+cube"}, 415),
        ({"length": "abc"}, 400),
        ({"length": "-5"}, 400),
        ({"body": b"\xff\xfe not json"}, 400),
        ({"body": b"[" * 50_000}, 400),
    ],
)
def test_a_foreign_or_malformed_prompt_is_refused(server, capfd, change, status):
    got, reply = exchange(server, prompt_request(server, **change))
    assert got == status and reply["error"]
    assert server.session.state()["queued"] is None  # nothing was applied
    assert "Traceback" not in capfd.readouterr().err


def test_every_request_needs_the_token(server):
    assert exchange(server, get_request(server, "/state"))[0] == 403
    assert exchange(server, get_request(server, "/"))[0] == 403
    assert exchange(server, get_request(server, f"/state?token={server.token}"))[0] == 200
    assert server.url.endswith(f"/?token={server.token}")


def test_a_malformed_query_is_a_400_without_traceback(server, capfd):
    for index in ("%C2%B2", "1" * 5000, "-1", "x"):
        path = f"/frame.png?i={index}&token={server.token}"
        assert exchange(server, get_request(server, path))[0] == 400
    assert "Traceback" not in capfd.readouterr().err


def test_half_sent_requests_do_not_stop_the_server(server):
    port = server.server_address[1]
    idle = []
    for _ in range(12):  # three times the handler limit, each stuck in its headers
        connection = socket.create_connection(server.server_address, timeout=10)
        connection.sendall(f"POST /prompt HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode())
        idle.append(connection)
    try:
        began = time.monotonic()
        status, _ = exchange(server, get_request(server, f"/state?token={server.token}"), 20)
        assert status == 200 and time.monotonic() - began < 15
    finally:
        for connection in idle:
            connection.close()


def test_a_prompt_after_the_run_ended_is_a_409(server):
    server.session.pace = False
    server.session.start()
    server.session.join(60)
    status, reply = exchange(server, prompt_request(server))
    assert status == 409 and "ended" in reply["error"]


@contextlib.contextmanager
def live_server(tmp_path, frames: int = 6, pace: bool = False, **limits):
    pipeline = Pipeline.with_standins("tiny", height=32, width=32)
    session = LiveSession(
        pipeline, make_policy("window"), "a red ball", frames, tmp_path / "v.mp4", pace=pace
    )
    server = LiveServer(session, 0, **limits).start()
    try:
        yield server
    finally:
        session.stop()
        session.join(60)
        server.shutdown()
        server.server_close()


def closed_by_server(connection: socket.socket, within: float) -> bool:
    """Whether the server closes ``connection`` within ``within`` seconds (it sends nothing)."""
    readable, _, _ = select.select([connection], [], [], within)
    if not readable:
        return False
    try:
        return connection.recv(1) == b""
    except ConnectionResetError:
        return True


def test_a_trickled_request_is_cut_at_its_deadline_not_at_the_read_timeout(tmp_path):
    with live_server(tmp_path, socket_timeout=30.0, request_deadline=1.0) as server:
        port = server.server_address[1]
        connection = socket.create_connection(server.server_address, timeout=10)
        connection.sendall(f"GET /state HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode())
        began = time.monotonic()
        closed = False
        while not closed and time.monotonic() - began < 10:
            try:  # a header line every 0.2 s: every read finishes long before its timeout
                connection.sendall(b"X-Slow: 1\r\n")
            except OSError:
                break
            closed = closed_by_server(connection, 0.2)
        took = time.monotonic() - began
        connection.close()
        assert took < 3, f"a trickled request held its connection {took:.1f} s"
        assert server.connections.dropped >= 1


def test_a_new_connection_drops_the_oldest_idle_one_of_its_client(tmp_path):
    with live_server(tmp_path, request_deadline=30.0, max_per_client=4) as server:
        idle = [socket.create_connection(server.server_address, timeout=10) for _ in range(4)]
        time.sleep(0.3)  # all four counted in, oldest first
        try:
            began = time.monotonic()
            status, _ = exchange(server, get_request(server, f"/state?token={server.token}"))
            assert status == 200 and time.monotonic() - began < 1
            assert closed_by_server(idle[0], 2)  # the oldest idle one made room
            assert not any(closed_by_server(c, 0.2) for c in idle[2:])  # the newer ones stay
        finally:
            for connection in idle:
                connection.close()


class Tricklers:
    """``count`` sockets that each send one header line of an endless request every ``every``
    seconds, and open again (with a new request line) when the server closes them."""

    def __init__(self, address, count: int, every: float) -> None:
        self.address, self.count, self.every = address, count, every
        port = address[1]
        self.request_line = f"GET /state HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode()
        self.sockets: list[socket.socket | None] = [None] * count
        self.reopened = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _open(self, index: int) -> None:
        try:
            connection = socket.create_connection(self.address, timeout=2)
            connection.sendall(self.request_line)
            self.sockets[index] = connection
        except OSError:
            self.sockets[index] = None

    def _run(self) -> None:
        for index in range(self.count):
            self._open(index)
        while not self.stop.is_set():
            for index in range(self.count):  # one line per socket every ``every`` seconds
                if self.stop.wait(self.every / self.count):
                    return
                connection = self.sockets[index]
                try:
                    if connection is None or closed_by_server(connection, 0):
                        raise OSError("closed by the server")
                    connection.sendall(b"X-Trickle: 1\r\n")
                except OSError:
                    if connection is not None:
                        connection.close()
                    self.reopened += 1
                    self._open(index)

    def __enter__(self) -> "Tricklers":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(30)
        for connection in self.sockets:
            if connection is not None:
                connection.close()


def test_200_trickling_sockets_cannot_hold_the_page_or_the_video(tmp_path):
    # the server's own limits, a paced run of about 6 s of video
    frames = 24
    with live_server(tmp_path, frames=frames, pace=True) as server:
        with Tricklers(server.server_address, count=200, every=4.0) as tricklers:
            time.sleep(1.0)  # all 200 open
            server.session.start()
            latencies = []
            while server.session.running:
                began = time.monotonic()
                request = get_request(server, f"/state?token={server.token}")
                status, _ = exchange(server, request)
                latencies.append(time.monotonic() - began)
                assert status == 200
                time.sleep(0.1)
            reopened = tricklers.reopened
        state = server.session.state()
    median = sorted(latencies)[len(latencies) // 2]
    print(
        f"/state under 200 trickling sockets: {len(latencies)} requests, slowest "
        f"{max(latencies) * 1000:.0f} ms, median {median * 1000:.0f} ms; {reopened} trickler "
        f"reconnects, {server.connections.dropped} connections dropped"
    )
    assert max(latencies) < 1.0
    assert reopened > 0  # the server did close trickling connections
    assert state["done"] and state["error"] is None
    assert state["latent_frames"] == frames and state["frames_written"] == pixel_frames(frames)
