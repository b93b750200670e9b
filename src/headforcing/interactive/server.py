"""The local web page of interactive mode, served by the standard library on 127.0.0.1.

Endpoints (all small, no framework):

- ``GET /``: the page: the video, a text box for a new prompt, the switches applied so far;
- ``GET /state``: JSON: frames written, the prompt in effect, a queued prompt, switches, done;
- ``GET /frame.png?i=N``: pixel frame ``N`` as PNG (the newest if ``N`` is gone);
- ``POST /prompt``: ``{"prompt": "..."}`` (JSON or a form field): drives the next chunk.

The page polls ``/state`` and plays the frames it has not shown yet at the video's fps (it
jumps ahead when it falls behind). PNG, written here with zlib, keeps the server free of image
libraries; frames are small at the sizes this runs at.
"""

from __future__ import annotations

import json
import struct
import threading
import zlib
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np

from headforcing.interactive.page import PAGE
from headforcing.interactive.session import LiveSession

MAX_BODY_BYTES = 64 * 1024


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
    """A threading HTTP server that knows its session."""

    daemon_threads = True

    def __init__(self, session: LiveSession, port: int = 0, host: str = "127.0.0.1") -> None:
        self.session = session
        super().__init__((host, port), LiveHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


class LiveHandler(BaseHTTPRequestHandler):
    server: LiveServer

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        session = self.server.session
        if url.path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, PAGE.encode(), "text/html; charset=utf-8")
        elif url.path == "/state":
            self._json(HTTPStatus.OK, session.state())
        elif url.path == "/frame.png":
            index = parse_qs(url.query).get("i", [None])[0]
            held = session.frame(int(index) if index and index.isdigit() else None)
            if held is None:
                self._json(HTTPStatus.NOT_FOUND, {"error": "no frame yet"})
                return
            number, frame = held
            self._send(HTTPStatus.OK, png_bytes(frame), "image/png", {"X-Frame": str(number)})
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no page {url.path}"})

    def do_POST(self) -> None:
        if urlsplit(self.path).path != "/prompt":
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no endpoint {self.path}"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "the request is too large"})
            return
        body = self.rfile.read(length).decode("utf-8", errors="replace")
        try:
            prompt = self._prompt_from(body)
            queued = self.server.session.submit(prompt)
        except ValueError as error:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(error)})
            return
        note = "takes effect at the next chunk boundary"
        self._json(HTTPStatus.ACCEPTED, {"queued": queued, "note": note})

    def _prompt_from(self, body: str) -> str:
        if self.headers.get("Content-Type", "").startswith("application/json"):
            try:
                data = json.loads(body)
            except json.JSONDecodeError:
                raise ValueError('send JSON like {"prompt": "a red fox"}') from None
            prompt = data.get("prompt") if isinstance(data, dict) else None
        else:
            prompt = parse_qs(body).get("prompt", [None])[0]
        if not isinstance(prompt, str):
            raise ValueError('no "prompt" in the request')
        return prompt

    def _json(self, status: HTTPStatus, data: dict) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _send(self, status, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        """No access log: the page polls several times a second."""


def serve(session: LiveSession, port: int = 0) -> LiveServer:
    """Start the server for ``session`` on 127.0.0.1 (``port`` 0: any free port) in a thread."""
    server = LiveServer(session, port)
    threading.Thread(target=server.serve_forever, name="headforcing-server", daemon=True).start()
    return server
