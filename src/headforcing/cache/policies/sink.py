"""``sink``: attention-sink frames plus a recent window.

LongLive (Yang et al., 2025, arXiv 2509.22622) keeps a 3-frame sink and a short recent window
(12 frames in all, the chunk included); StreamingLLM (Xiao et al., 2023, arXiv 2309.17453)
introduced the sink for language models. The mechanism is Self-Forcing's window with a sink, so
this is :class:`WindowPolicy` with LongLive's defaults and a sink of at least one frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from headforcing.cache.policies.window import WindowPolicy


@dataclass
class SinkPolicy(WindowPolicy):
    """``sink_frames`` first frames + the most recent frames, ``window_frames`` in all.

    Parameters
    ----------
    window_frames:
        Frames one chunk attends to, sink and chunk included (LongLive: 12).
    sink_frames:
        First frames kept for ever (LongLive: 3). At least 1.
    positions:
        ``absolute`` (LongLive) or ``relative``.
    """

    name: ClassVar[str] = "sink"
    window_frames: int = 12
    sink_frames: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sink_frames < 1:
            raise ValueError(f"the sink policy needs sink_frames >= 1, got {self.sink_frames}")
