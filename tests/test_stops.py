"""Whatever stops ``generate`` (SIGKILL, SIGTERM, two Ctrl-C 10 ms apart), the file on disk
decodes and holds every chunk finished more than one chunk before the stop."""

import re
import signal
import time

import av

from headforcing.io.decoders import pixel_frames
from headforcing.io.video import read_video

from .test_interactive import SMALL, Process


def decodable_frames(path) -> int:
    """Frames PyAV decodes from the start of ``path``, up to a cut-off tail (after SIGKILL the
    newest fragment may be half-written)."""
    count = 0
    try:
        with av.open(str(path)) as container:
            for _ in container.decode(video=0):
                count += 1
    except (av.error.InvalidDataError, EOFError):
        pass
    return count


def start(tmp_path):
    out = tmp_path / "video.mp4"
    run = Process("generate", "a red ball", "--seconds", "600", "--out", str(out), *SMALL)
    run.wait_for(r"chunk 3 written")
    return run, out


def chunks_seen(run) -> int:
    return max(int(n) for n in re.findall(r"chunk (\d+) written", run.text()))


def test_sigkill_leaves_every_chunk_but_the_newest(tmp_path):
    run, out = start(tmp_path)
    seen = chunks_seen(run)  # at least these are written when the kill lands
    run.popen.send_signal(signal.SIGKILL)
    assert run.popen.wait(30) == -signal.SIGKILL
    assert decodable_frames(out) >= pixel_frames(3 * (seen - 1))


def test_sigterm_closes_the_file_and_exits_143(tmp_path):
    run, out = start(tmp_path)
    seen = chunks_seen(run)
    run.popen.send_signal(signal.SIGTERM)
    assert run.popen.wait(60) == 143
    for reader in run.readers:
        reader.join(10)
    kept = int(re.search(r"interrupted \(SIGTERM\): kept (\d+)", run.text()).group(1))
    assert kept >= pixel_frames(3 * seen)
    assert read_video(out).shape[0] == kept  # the whole file decodes, tail included


def test_two_ctrl_c_10_ms_apart_leave_a_whole_file(tmp_path):
    run, out = start(tmp_path)
    seen = chunks_seen(run)
    run.popen.send_signal(signal.SIGINT)
    time.sleep(0.01)
    run.popen.send_signal(signal.SIGINT)
    assert run.popen.wait(60) == 130
    for reader in run.readers:
        reader.join(10)
    assert "Traceback" not in run.text()
    kept = int(re.search(r"interrupted \(SIGINT\): kept (\d+)", run.text()).group(1))
    assert kept >= pixel_frames(3 * seen)
    assert read_video(out).shape[0] == kept
