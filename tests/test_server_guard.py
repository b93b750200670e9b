"""The live server answers only its own page: Host, Origin, token and JSON are checked, a
malformed request gets a 400 (no traceback), half-sent requests time out without stopping the
others, and a prompt after the run gets a 409."""

import json
import socket
import time

import pytest

from headforcing.cache import make_policy
from headforcing.interactive import LiveServer, LiveSession
from headforcing.pipeline import Pipeline


@pytest.fixture
def server(tmp_path):
    pipeline = Pipeline.with_standins("tiny", height=32, width=32)
    session = LiveSession(pipeline, make_policy("window"), "a red ball", 6, tmp_path / "v.mp4")
    server = LiveServer(session, 0, socket_timeout=1.0, max_handlers=4).start()
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
