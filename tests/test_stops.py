"""Whatever stops ``generate`` (SIGKILL, SIGTERM, two Ctrl-C 10 ms apart), the file on disk
decodes and holds every chunk finished more than one chunk before the stop, and stays a
fragmented MP4; a stop before the first chunk leaves no file at all, so the same command runs
again."""

import os
import re
import signal
import time

import av
import pytest

from headforcing.io.decoders import pixel_frames
from headforcing.io.video import read_video

from .mp4boxes import top_level
from .test_interactive import SMALL, Process

# frames large enough that the first chunk takes a second or more after the run header
SLOW_FIRST_CHUNK = [*SMALL[:2], "--height", "256", "--width", "256", *SMALL[6:]]


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
    assert "moof" in top_level(out)  # cut short: the fragments as written, not rewritten


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


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_before_the_first_chunk_leaves_no_file_and_the_command_runs_again(
    tmp_path, signum, code
):
    out = tmp_path / "video.mp4"
    argv = ("generate", "a red ball", "--frames", "6", "--out", str(out), *SLOW_FIRST_CHUNK)
    run = Process(*argv)
    run.wait_for(r"headforcing: tiny on cpu .*256x256")  # the run header: the model is loaded
    time.sleep(0.05)
    assert "chunk 1 written" not in run.text(), "the first chunk came too soon for this test"
    run.popen.send_signal(signum)
    assert run.popen.wait(60) == code
    for reader in run.readers:
        reader.join(10)
    err = run.text()
    assert "Traceback" not in err
    assert "before the first chunk: nothing was written to" in err.splitlines()[-1], err
    assert os.listdir(tmp_path) == []  # no file at --out, and nothing beside it
    again = Process(*argv)
    assert again.popen.wait(120) == 0, again.text()
    assert read_video(out).shape[0] == pixel_frames(6)
