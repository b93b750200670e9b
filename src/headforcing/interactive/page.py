"""The page of interactive mode: one HTML file, a few lines of plain JavaScript, no framework.

It reads the run's token from its own URL (``?token=...``, printed by the command) and passes
it on with every request. It polls ``/state`` four times a second, plays the frames it has not
shown yet at the video's fps on a canvas (a frame is drawn once decoded, so the picture never
blanks between frames; ``data-frame`` says which pixel frame is on screen), and posts a typed
prompt to ``/prompt``. It says what runs: the cache policy (``#policy``), the frames/s reached
end to end against the video's fps and of the DiT alone (``#speed``), the K/V the cache holds
(``#kv``) and how many frames the picture is behind the newest frame written (``#behind``).
Text from the server goes in with ``textContent``, never as HTML.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>headforcing: interactive</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 760px; margin: 1.5em auto; padding: 0 1em; }
  #video { width: 100%; max-width: 640px; min-height: 64px; background: #111; display: block;
           image-rendering: pixelated; }
  #prompt-form { display: flex; gap: .5em; margin: 1em 0; }
  #prompt-input { flex: 1; font-size: 1em; padding: .4em; }
  .muted { color: #666; }
</style>
</head>
<body>
<h1>headforcing</h1>
<canvas id="video" width="64" height="64" data-frame="-1">the video as it is generated</canvas>
<p id="status" class="muted">waiting for the first chunk</p>
<p id="run" class="muted">policy <span id="policy">-</span> | <span id="speed">-</span> |
  K/V <span id="kv">-</span> | <span id="behind">-</span></p>
<p>Prompt in effect: <strong id="current"></strong></p>
<form id="prompt-form">
  <input id="prompt-input" name="prompt" autocomplete="off"
         placeholder="type a new prompt and press Enter: it drives the next chunk">
  <button id="send" type="submit">Send</button>
</form>
<p id="reply" class="muted"></p>
<h2>Prompt switches</h2>
<ol id="switches"></ol>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const video = $("video"), painter = video.getContext("2d");
const token = new URLSearchParams(window.location.search).get("token") || "";
const withToken = (path) =>
  `${path}${path.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
let fps = 16, available = 0, cursor = 0, loading = false, switchCount = 0;

async function poll() {
  try {
    const state = await (await fetch(withToken("/state"), {cache: "no-store"})).json();
    fps = state.fps;
    available = state.frames_written;
    $("current").textContent = state.prompt;
    $("policy").textContent = state.policy;
    if (state.chunks > 0) {
      const reached = state.frames_per_second, pace = reached / fps;
      $("speed").textContent = `${reached.toFixed(1)} frames/s reached of ${fps} fps ` +
        `(${pace >= 0.995 ? "real time" : (100 * pace).toFixed(0) + " % of real time"}; ` +
        `DiT only ${state.dit_frames_per_second.toFixed(1)} frames/s)`;
      $("kv").textContent = `${(state.kv_bytes / 2 ** 20).toFixed(1)} MiB`;
      const shown = Number(video.dataset.frame), behind = available - 1 - Math.max(shown, -1);
      $("behind").textContent = `${behind} frames (${(behind / fps).toFixed(1)} s) behind ` +
        "the generator";
    }
    let status = `${state.frames_written} frames (${(state.frames_written / fps).toFixed(1)} s), ` +
      `latent frame ${state.latent_frames} of ${state.total_latent_frames}`;
    if (state.queued) status += ` | next chunk: "${state.queued}"`;
    if (state.done) status += state.error ? ` | stopped: ${state.error}` : " | done";
    $("status").textContent = status;
    if (state.switches.length !== switchCount) {
      switchCount = state.switches.length;
      $("switches").replaceChildren(...state.switches.map((s) => {
        const item = document.createElement("li");
        item.textContent =
          `latent frame ${s.latent_frame} (pixel frame ${s.pixel_frame}): ${s.prompt}`;
        return item;
      }));
    }
    setTimeout(poll, state.done ? 2000 : 250);
  } catch (error) {
    $("status").textContent = "the server has stopped";
  }
}

function play() {
  if (!loading && cursor < available) {
    if (available - cursor > 2 * fps) cursor = available - 1;  // fell behind: jump ahead
    const index = cursor++, image = new Image();
    loading = true;
    image.onload = () => {
      if (video.width !== image.naturalWidth || video.height !== image.naturalHeight) {
        video.width = image.naturalWidth;
        video.height = image.naturalHeight;
      }
      painter.drawImage(image, 0, 0);
      video.dataset.frame = index;
      loading = false;
    };
    image.onerror = () => { loading = false; };
    image.src = withToken(`/frame.png?i=${index}`);
  }
  setTimeout(play, 1000 / fps);
}

$("prompt-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const response = await fetch("/prompt", {
    method: "POST",
    headers: {"Content-Type": "application/json", "X-Headforcing-Token": token},
    body: JSON.stringify({prompt: $("prompt-input").value}),
  });
  const reply = await response.json();
  $("reply").textContent = response.ok ? `"${reply.queued}" ${reply.note}` : reply.error;
  if (response.ok) $("prompt-input").value = "";
});

poll();
play();
</script>
</body>
</html>
"""
