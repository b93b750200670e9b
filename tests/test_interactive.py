"""Interactive mode and interrupted runs: a new prompt applies at the next chunk, the page shows
the new frames (a real headless Chromium), and Ctrl-C leaves a playable file of whole chunks."""

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from headforcing.cache import make_policy
from headforcing.interactive import LiveSession, serve
from headforcing.interactive.server import png_bytes
from headforcing.io.decoders import pixel_frames
from headforcing.io.video import read_video
from headforcing.pipeline import Pipeline

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
# --scale 1: the file holds the frames the page shows, pixel for pixel (no display upscaling)
SMALL = ["--preset", "tiny", "--height", "64", "--width", "64", "--device", "cpu", "--scale", "1"]


class Process:
    """``python -m headforcing.cli ...`` with its stdout and stderr collected as they come."""

    def __init__(self, *argv: str) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "headforcing.cli", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            # the tests send Ctrl-C: a shell that runs pytest in the background (``cmd &``) hands
            # its children SIGINT ignored, and Python then never raises KeyboardInterrupt
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.out, self.err = [], []
        self.readers = [
            threading.Thread(target=self._read, args=(stream, sink), daemon=True)
            for stream, sink in ((self.popen.stdout, self.out), (self.popen.stderr, self.err))
        ]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream, sink) -> None:
        while chunk := os.read(stream.fileno(), 4096):
            sink.append(chunk.decode(errors="replace"))

    def text(self, which="err") -> str:
        return "".join(self.out if which == "out" else self.err)

    def wait_for(self, pattern: str, which: str = "err", timeout: float = 60) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            matches = list(re.finditer(pattern, self.text(which)))
            if matches:
                return matches[-1]
            if self.popen.poll() is not None:
                break
            time.sleep(0.05)
        self.popen.kill()
        raise AssertionError(f"no {pattern!r} in:\n{self.text('out')}\n{self.text('err')}")

    def interrupt(self, timeout: float = 60) -> int:
        self.popen.send_signal(signal.SIGINT)
        try:
            return self.popen.wait(timeout)
        finally:
            if self.popen.poll() is None:
                self.popen.kill()
            for reader in self.readers:  # the process has exited: read its output to the end
                reader.join(timeout=10)


def split_url(url: str) -> tuple[str, str]:
    """The printed page URL -> (base ``http://127.0.0.1:PORT/``, token)."""
    base, _, token = url.partition("?token=")
    return base, token


def get_json(url: str) -> dict:
    """GET a URL of the page's API (``base + path``, with ``?token=`` in it)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def state_of(server_url: str) -> dict:
    base, token = split_url(server_url)
    return get_json(f"{base}state?token={token}")


def post_prompt(server_url: str, body: bytes, content_type="application/json", headers=None):
    base, token = split_url(server_url)
    headers = {"Content-Type": content_type, "X-Headforcing-Token": token, **(headers or {})}
    request = urllib.request.Request(base + "prompt", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def wait_until(condition, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def whole_chunks(frames: int, chunk_frames: int = 3) -> bool:
    """``frames`` pixel frames are exactly some whole chunks of latent frames."""
    return any(pixel_frames(k * chunk_frames) == frames for k in range(1, 1000))


# ------------------------------------------------------------------- Ctrl-C in `generate`


def test_sigint_mid_stream_leaves_a_playable_mp4_of_every_finished_chunk(tmp_path):
    out = tmp_path / "video.mp4"
    run = Process("generate", "a red ball", "--seconds", "600", "--out", str(out), *SMALL)
    run.wait_for(r"chunk 3 written")
    assert run.interrupt() == 130
    err = run.text()
    kept = int(re.search(r"interrupted \(SIGINT\): kept (\d+) finished frames", err).group(1))
    assert f"wrote {out} ({kept} frames" in err
    assert whole_chunks(kept) and kept < pixel_frames(2401)
    frames = read_video(out)
    assert frames.shape == (kept, 64, 64, 3)
    assert frames.float().std() > 1


# ------------------------------------------------------------------- the session and its API


def test_png_is_a_valid_image():
    image = pytest.importorskip("PIL.Image", reason="Pillow decodes the reference")
    frame = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    decoded = np.asarray(image.open(io.BytesIO(png_bytes(frame))))
    assert (decoded == frame).all()


def test_prompt_posted_mid_stream_applies_at_the_next_chunk(tmp_path):
    pipeline = Pipeline.with_standins("tiny", height=64, width=64)
    out = tmp_path / "live.mp4"
    session = LiveSession(pipeline, make_policy("window"), "a red ball", 18, out, pace=True)
    server = serve(session, port=0)
    try:
        base = server.url
        with urllib.request.urlopen(base, timeout=10) as response:
            assert "text/html" in response.headers["Content-Type"]
        status, reply = post_prompt(base, b"{}")
        assert status == 400 and 'no "prompt"' in reply["error"]
        status, reply = post_prompt(base, json.dumps({"prompt": "  "}).encode())
        assert status == 400 and reply["error"] == "the prompt is empty"

        session.start()
        wait_until(lambda: state_of(base)["chunks"] >= 1, what="the first chunk")
        before = state_of(base)["latent_frames"]
        status, reply = post_prompt(base, json.dumps({"prompt": "a blue cube"}).encode())
        after = state_of(base)["latent_frames"]
        assert status == 202 and reply["queued"] == "a blue cube"
        assert "next chunk" in reply["note"]

        state = wait_until(lambda: (s := state_of(base))["switches"] and s, what="switch")
        (switch,) = state["switches"]
        assert switch["prompt"] == "a blue cube" and switch["latent_frame"] % 3 == 0
        # the next chunk that started: the DiT runs one chunk ahead of what the page shows (the
        # shown chunk is decoded beside the next one's generation)
        assert before <= switch["latent_frame"] <= after + 6
        assert switch["pixel_frame"] == pixel_frames(switch["latent_frame"])
        root, token = split_url(base)
        frame_url = f"{root}frame.png?i={switch['pixel_frame']}&token={token}"
        with urllib.request.urlopen(frame_url, timeout=10) as response:
            assert response.headers["Content-Type"] == "image/png"
            assert int(response.headers["X-Frame"]) >= switch["pixel_frame"] - 64
        session.join(30)
        state = state_of(base)
        assert state["done"] and state["error"] is None and state["queued"] is None
        # what runs: the policy, frames/s reached (paced: about the video's fps), the K/V held
        assert state["policy"] == "window(window=21, sink=0), absolute positions, switch head-aware"
        assert 0 < state["frames_per_second"] <= state["dit_frames_per_second"]
        assert state["kv_bytes"] == session.kv_bytes > 0
    finally:
        session.stop()
        session.join(30)
        server.shutdown()
        server.server_close()
    assert read_video(out).shape[0] == state["frames_written"] == pixel_frames(18)


def test_the_toy_model_refuses_prompts_it_cannot_read(tmp_path):
    from headforcing.prompts import check_toy_prompts
    from headforcing.toyworld.pretrained import load_toy_pipeline

    pipeline = load_toy_pipeline()
    prompt = "a red circle bounces over a green striped background"

    def check(text):
        check_toy_prompts(pipeline, text)

    policy, out = make_policy("window"), tmp_path / "live.mp4"
    with pytest.raises(ValueError, match="cannot parse toy-world prompt 'a cat'"):
        LiveSession(pipeline, policy, "a cat", 6, out, check_prompt=check)
    session = LiveSession(pipeline, policy, prompt, 6, out, check_prompt=check)
    server = serve(session, port=0)
    try:
        status, reply = post_prompt(server.url, json.dumps({"prompt": "a blue cube"}).encode())
        assert status == 400 and "--preset tiny" in reply["error"]
        other = "two cyan squares bounce over a brown dotted background"
        status, reply = post_prompt(server.url, json.dumps({"prompt": other}).encode())
        assert status == 202 and reply["queued"] == other
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------- the page in a real headless browser


# the frame on the page's canvas: its index and RGBA bytes
SNAPSHOT = """
const canvas = arguments[0];
const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
return [Number(canvas.dataset.frame), Array.from(pixels)];
"""


def chromium_driver(user_data_dir: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    flags = (
        "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run "
        "--disable-background-networking --disable-component-update --disable-sync"
    )
    for flag in [*flags.split(), f"--user-data-dir={user_data_dir}"]:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
    "chromium-driver; .ci/run installs them)",
)
def test_browser_types_a_prompt_mid_stream_and_sees_the_new_frames(tmp_path, monkeypatch):
    pytest.importorskip("selenium", reason="needs selenium (pip install selenium)")
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never download anything
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    out = tmp_path / "live.mp4"
    run = Process(
        "interactive", "a red ball", "--port", "0", "--seconds", "12", "--out", str(out), *SMALL
    )
    base = run.wait_for(r"open (http://127\.0\.0\.1:\d+/\?token=[\w-]+)", which="out").group(1)
    driver = chromium_driver(tempfile.mkdtemp(prefix="chromium-", dir=tmp_path))
    try:
        driver.get(base)
        video = driver.find_element(By.ID, "video")
        shown = lambda: int(video.get_attribute("data-frame"))  # noqa: E731
        wait_until(lambda: shown() >= 0, what="the page to show a frame")

        # type a new prompt mid-stream
        before = state_of(base)["latent_frames"]
        field = driver.find_element(By.ID, "prompt-input")
        field.send_keys("a blue cube", Keys.ENTER)
        wait_until(lambda: "next chunk" in driver.find_element(By.ID, "reply").text, what="reply")
        after = state_of(base)["latent_frames"]

        # the server applies it at the next chunk boundary
        wait_until(
            lambda: driver.find_element(By.ID, "current").text == "a blue cube", what="switch"
        )
        (switch,) = state_of(base)["switches"]
        assert switch["latent_frame"] % 3 == 0 and before <= switch["latent_frame"] <= after + 6
        assert "a blue cube" in driver.find_element(By.ID, "switches").text

        # the page says what runs, from /state: the policy, frames/s reached, the K/V held, and
        # how far behind the newest written frame the picture is
        state = state_of(base)
        assert driver.find_element(By.ID, "policy").text == state["policy"]
        assert state["policy"].startswith("window(window=21, sink=0), relative positions")
        speed = wait_until(
            lambda: re.fullmatch(
                r"([\d.]+) frames/s reached of 16 fps \((real time|\d+ % of real time); DiT "
                r"only ([\d.]+) frames/s\)",
                driver.find_element(By.ID, "speed").text,
            ),
            what="frames/s on the page",
        )
        assert float(speed.group(1)) > 0 and float(speed.group(3)) >= float(speed.group(1)) - 0.1
        kv = wait_until(
            lambda: re.fullmatch(r"([\d.]+) MiB", driver.find_element(By.ID, "kv").text),
            what="K/V on the page",
        )
        assert abs(float(kv.group(1)) - state_of(base)["kv_bytes"] / 2**20) < 0.05
        assert re.fullmatch(
            r"\d+ frames \([\d.]+ s\) behind the generator",
            driver.find_element(By.ID, "behind").text,
        )

        # the page shows the new prompt's frames: the pixels on its canvas are the file's
        wait_until(lambda: shown() >= switch["pixel_frame"] + 2, what="new frames on the page")
        index, pixels = driver.execute_script(SNAPSHOT, video)
        assert index >= switch["pixel_frame"] + 2

        # the growing file plays up to the new frames while the run goes on
        growing = read_video(out)
        assert growing.shape[0] > index
        on_page = torch.tensor(pixels, dtype=torch.float32).view(64, 64, 4)[..., :3]
        same = (on_page - growing[index].float()).abs().mean()
        before_switch = (on_page - growing[switch["pixel_frame"] - 1].float()).abs().mean()
        print(f"page vs file: {same:.2f} (same frame), {before_switch:.2f} (before the switch)")
        assert same < 8 and before_switch > 3 * same  # x264 (crf 18, 4:2:0) is close, not exact
        state = state_of(base)
        assert not state["done"], "the run ended before Ctrl-C: make it longer"
    finally:
        driver.quit()
        code = run.interrupt()

    # Ctrl-C mid-run: the server stops, the video holds every finished chunk, exit 130
    assert code == 130, run.text()
    written = int(re.search(r"wrote .* \((\d+) frames, 1 prompt switches\)", run.text()).group(1))
    assert whole_chunks(written) and written < pixel_frames(49)
    assert read_video(out).shape == (written, 64, 64, 3)
    with pytest.raises(urllib.error.URLError):
        state_of(base)


def test_live_session_hands_over_a_head_map_profiled_online(tmp_path):
    pipeline = Pipeline.with_standins("tiny", height=64, width=64)
    maps = []
    session = LiveSession(
        pipeline,
        make_policy("head_forcing"),
        "a red ball",
        24,
        tmp_path / "live.mp4",
        pace=False,
        on_head_map=maps.append,
    )
    session.start()
    session.join(120)
    assert not session.running
    assert len(maps) == 1 and maps[0].preset == "tiny"
    assert sum(maps[0].counts().values()) == 2 * 4
