"""The local web page of interactive mode, served by the standard library on 127.0.0.1.

Endpoints (all small, no framework):

- ``GET /``: the page: the video, a text box for a new prompt, the switches applied so far;
- ``GET /state``: JSON: frames written, the prompt in effect, a queued prompt, switches, done;
- ``GET /frame.png?i=N``: pixel frame ``N`` as PNG (the newest if ``N`` is gone);
- ``POST /prompt``: ``{"prompt": "..."}`` as ``application/json``: drives the next chunk
  (202), or 409 once the run has ended.

Only the server's own page may drive it (docs/prompts.md, "What the server accepts"): every
request must name the served address as its ``Host`` (127.0.0.1, localhost or [::1], with the
port: this stops DNS rebinding), carry an ``Origin`` of that address if it carries one (a
browser always does on a POST: this stops other pages' forms and scripts), and carry the run's
random token (``?token=`` in the URL the command prints, which the page passes on, or the
``X-Headforcing-Token`` header); a prompt must be JSON, which a cross-site form cannot send,
and text the text encoder can take (:func:`~headforcing.io.text.check_prompt`; a refused one
gets a 400 and the running prompt stays). Slow or many clients cannot hold the server
(:mod:`.connections`): a whole request must arrive within :data:`REQUEST_DEADLINE` seconds,
one client address holds at most :data:`MAX_CONNECTIONS_PER_CLIENT` connections and all
together :data:`MAX_CONNECTIONS` (a new one closes the oldest idle one first), and every read
or write times out after :data:`SOCKET_TIMEOUT` seconds; the generator never waits on a client
(a handler only copies the session's state under its lock). A malformed request gets a 400,
never a traceback.

The page polls ``/state`` and plays the frames it has not shown yet at the video's fps (it
jumps ahead when it falls behind). PNG, written here with zlib, keeps the server free of image
libraries; frames are small at the sizes this runs at.
"""

from __future__ import annotations

import json
import secrets
import struct
import sys
import threading
import zlib
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np

from headforcing.interactive.connections import ConnectionTable
from headforcing.interactive.page import PAGE
from headforcing.interactive.session import LiveSession, RunEnded

MAX_BODY_BYTES = 64 * 1024
SOCKET_TIMEOUT = 10.0  # s, any one read or write
REQUEST_DEADLINE = 5.0  # s, a whole request: line, headers, body
MAX_CONNECTIONS_PER_CLIENT = 16
MAX_CONNECTIONS = 64
POLL_SECONDS = 0.25  # how often the accept loop looks for late requests
TOKEN_HEADER = "X-Headforcing-Token"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def png_bytes(frame: np.ndarray) -> bytes:
    """uint8 ``[H, W, 3]`` -> a PNG file (8-bit RGB, no filter, fast zlib level)."""
    height, width, _ = frame.shape
    rows = np.concatenate([np.zeros((height, 1), np.uint8), frame.reshape(height, -1)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), 1))
        + chunk(b"IEND", b"")
    )


class LiveServer(ThreadingHTTPServer):
    """A threading HTTP server on 127.0.0.1 that knows its session and its token.

    Bind first (:meth:`bind`: a busy port fails before any model loads), then :meth:`start`
    with the session.
    """

    daemon_threads = True
    request_queue_size = 256  # a burst of connections waits to be accepted, not refused

    def __init__(
        self,
        session: LiveSession | None,
        port: int = 0,
        host: str = "127.0.0.1",
        socket_timeout: float = SOCKET_TIMEOUT,
        request_deadline: float = REQUEST_DEADLINE,
        max_per_client: int = MAX_CONNECTIONS_PER_CLIENT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.session = session
        self.token = secrets.token_urlsafe(18)
        self.socket_timeout = socket_timeout
        self.connections = ConnectionTable(max_per_client, max_connections, request_deadline)
        super().__init__((host, port), LiveHandler)
        port = self.server_address[1]
        self.allowed_hosts = {f"{name}:{port}" for name in LOOPBACK_NAMES}
        self.allowed_origins = {f"http://{host}" for host in self.allowed_hosts}

    @classmethod
    def bind(cls, port: int) -> LiveServer:
        """Bind 127.0.0.1:``port`` (0: any free port), or a ValueError naming the fix."""
        if not 0 <= port <= 65535:
            raise ValueError(f"--port {port} is not a port; give 1..65535, or 0 for any free one")
        try:
            return cls(None, port)
        except OSError as error:
            raise ValueError(
                f"--port {port}: cannot listen on 127.0.0.1:{port} ({error.strerror}); choose "
                "another --port, or --port 0 for any free one"
            ) from None

    def start(self, session: LiveSession | None = None) -> LiveServer:
        """Serve ``session`` (if given here) in a daemon thread."""
        if session is not None:
            self.session = session
        threading.Thread(
            target=self.serve_forever, args=(POLL_SECONDS,), name="headforcing-server", daemon=True
        ).start()
        return self

    @property
    def url(self) -> str:
        """The page's address, token included: the only URL that works."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/?token={self.token}"

    @property
    def base(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    # the accept loop never waits: a connection is counted in (closing the oldest idle ones it
    # needs room from) and gets its thread, or is closed at once when every one it would
    # replace is busy answering
    def process_request(self, request, client_address) -> None:
        if not self.connections.admit(request, client_address[0]):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.connections.remove(request)
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.remove(request)

    def service_actions(self) -> None:
        """Between two accepts (every :data:`POLL_SECONDS` at least): close the connections
        past their request deadline."""
        self.connections.expire()

    def handle_error(self, request, client_address) -> None:
        """A dropped or timed-out connection is routine; anything else gets one line."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            return
        print(f"headforcing server: {type(error).__name__}: {error}", file=sys.stderr)


class BadRequest(ValueError):
    """A request refused with ``status`` and a message for the client."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class LiveHandler(BaseHTTPRequestHandler):
    server: LiveServer

    def setup(self) -> None:
        self.timeout = self.server.socket_timeout  # StreamRequestHandler sets it on the socket
        super().setup()

    def handle_one_request(self) -> None:
        self.server.connections.waiting(self.request)  # the request's deadline starts now
        super().handle_one_request()

    def do_GET(self) -> None:
        self._answer(self._get)

    def do_POST(self) -> None:
        self._answer(self._post)

    def _answer(self, handle) -> None:
        try:
            self._check_caller()
            if self.server.session is None:
                raise BadRequest(HTTPStatus.SERVICE_UNAVAILABLE, "the model is still loading")
            handle(urlsplit(self.path))
        except BadRequest as error:
            self._json(error.status, {"error": str(error)})

    def _check_caller(self) -> None:
        """Host, Origin and token: only the server's own page (or curl with the token)."""
        host = self.headers.get("Host", "")
        if host.lower() not in self.server.allowed_hosts:
            raise BadRequest(
                HTTPStatus.FORBIDDEN, f"this server answers to 127.0.0.1:{self.server.server_port}"
            )
        origin = self.headers.get("Origin")
        if origin is not None and origin.lower() not in self.server.allowed_origins:
            raise BadRequest(HTTPStatus.FORBIDDEN, "requests from other pages are refused")
        query = parse_qs(urlsplit(self.path).query)
        token = self.headers.get(TOKEN_HEADER) or query.get("token", [""])[0]
        if not secrets.compare_digest(token.encode(), self.server.token.encode()):
            raise BadRequest(
                HTTPStatus.FORBIDDEN,
                "missing or wrong token: open the URL the command printed (it ends in ?token=...)",
            )

    def _get(self, url) -> None:
        session = self.server.session
        if url.path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, PAGE.encode(), "text/html; charset=utf-8")
        elif url.path == "/state":
            self._json(HTTPStatus.OK, session.state())
        elif url.path == "/frame.png":
            index = parse_qs(url.query).get("i", [None])[0]
            if index is not None and not (index.isascii() and index.isdigit() and len(index) < 19):
                raise BadRequest(HTTPStatus.BAD_REQUEST, "i must be a frame number, e.g. ?i=12")
            held = session.frame(int(index) if index is not None else None)
            if held is None:
                self._json(HTTPStatus.NOT_FOUND, {"error": "no frame yet"})
                return
            number, frame = held
            self._send(HTTPStatus.OK, png_bytes(frame), "image/png", {"X-Frame": str(number)})
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no page {url.path}"})

    def _post(self, url) -> None:
        if url.path != "/prompt":
            raise BadRequest(HTTPStatus.NOT_FOUND, f"no endpoint {url.path}")
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise BadRequest(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                'send the prompt as application/json: {"prompt": "a red fox"}',
            )
        length = self.headers.get("Content-Length", "")
        if not (length.isascii() and length.isdigit() and len(length) < 19):
            raise BadRequest(HTTPStatus.BAD_REQUEST, "Content-Length must be a number of bytes")
        if int(length) > MAX_BODY_BYTES:
            raise BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "the request is too large")
        body = self.rfile.read(int(length))
        if len(body) < int(length):
            raise BadRequest(HTTPStatus.BAD_REQUEST, "the body is shorter than Content-Length")
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise BadRequest(
                HTTPStatus.BAD_REQUEST, 'send UTF-8 JSON like {"prompt": "a red fox"}'
            ) from None
        prompt = data.get("prompt") if isinstance(data, dict) else None
        if not isinstance(prompt, str):
            raise BadRequest(HTTPStatus.BAD_REQUEST, 'no "prompt" in the request')
        try:
            queued = self.server.session.submit(prompt)
        except RunEnded as error:
            raise BadRequest(HTTPStatus.CONFLICT, str(error)) from None
        except ValueError as error:
            raise BadRequest(HTTPStatus.BAD_REQUEST, str(error)) from None
        note = "takes effect at the next chunk boundary"
        self._json(HTTPStatus.ACCEPTED, {"queued": queued, "note": note})

    def _json(self, status: HTTPStatus, data: dict) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _send(self, status, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.server.connections.answering(self.request)  # the whole request is in
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        """No access log: the page polls several times a second."""


def serve(session: LiveSession, port: int = 0) -> LiveServer:
    """Start the server for ``session`` on 127.0.0.1 (``port`` 0: any free port) in a thread."""
    return LiveServer(session, port).start()
