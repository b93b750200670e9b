"""Progress of a run that writes a video, on stderr: a bar on a terminal, one line per written
chunk elsewhere (a log, a pipe)."""

from __future__ import annotations

import sys


class ChunkProgress:
    """A progress bar on a terminal; elsewhere (a log, a pipe) one line per written chunk, so
    that whoever reads the log knows what the file on disk holds."""

    def __init__(self, num_frames: int) -> None:
        from tqdm import tqdm

        self.bar = None
        if sys.stderr.isatty():
            self.bar = tqdm(total=num_frames, unit="frame", desc="generating", file=sys.stderr)
        self.num_frames = num_frames
        self.chunks = 0

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def chunk_written(self, chunk, frames_written: int) -> None:
        self.chunks += 1
        done = chunk.first_frame + chunk.latents.shape[2]
        if self.bar is not None:
            self.bar.update(chunk.latents.shape[2])
            self.bar.set_postfix(kv_mib=f"{chunk.kv_bytes / 2**20:.1f}", max_pos=chunk.max_position)
        else:
            print(
                f"chunk {self.chunks} written: latent frames {done}/{self.num_frames}, "
                f"{frames_written} frames, K/V {chunk.kv_bytes / 2**20:.1f} MiB",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
