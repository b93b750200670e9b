"""Reading an MP4's box structure with struct, independently of PyAV: the top-level boxes in
file order, and what the ``moov`` box says about the video (duration, samples, fragments)."""

import struct
from pathlib import Path

CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"mvex", b"edts", b"udta"}


def boxes(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[str, bytes]]:
    """``(type, payload)`` of every box in ``data[start:end]``, in order."""
    end = len(data) if end is None else end
    found = []
    while start + 8 <= end:
        size, kind = struct.unpack(">I4s", data[start : start + 8])
        header = 8
        if size == 1:  # a 64-bit size follows the type
            size, header = struct.unpack(">Q", data[start + 8 : start + 16])[0], 16
        elif size == 0:  # to the end of the file
            size = end - start
        found.append((kind.decode("latin-1"), data[start + header : start + size]))
        start += size
    return found


def top_level(path: Path) -> list[str]:
    """The types of the file's top-level boxes, in order (``ftyp``, ``moov``, ``mdat``, ...)."""
    return [kind for kind, _ in boxes(Path(path).read_bytes())]


def moov_facts(path: Path) -> dict:
    """From the first ``moov``: its movie duration in seconds (``mvhd``), the samples its
    sample table lists (``stsz``) and whether it announces fragments (``mvex``)."""
    moov = next(payload for kind, payload in boxes(Path(path).read_bytes()) if kind == "moov")
    facts = {"duration_s": None, "samples": 0, "mvex": False}

    def walk(payload: bytes) -> None:
        for kind, inner in boxes(payload):
            if kind == "mvhd":
                version = inner[0]
                if version == 1:
                    timescale, duration = struct.unpack(">IQ", inner[20:32])
                else:
                    timescale, duration = struct.unpack(">II", inner[12:20])
                facts["duration_s"] = duration / timescale
            elif kind == "stsz":
                facts["samples"] += struct.unpack(">I", inner[8:12])[0]
            elif kind == "mvex":
                facts["mvex"] = True
            if kind.encode("latin-1") in CONTAINERS:
                walk(inner)

    walk(moov)
    return facts
