"""``full``: keep every token. With absolute positions this is plain causal attention over the
whole history, the exact reference every other policy is compared with. Memory and cost grow
without bound."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from headforcing.cache.policy import Retention, UniformPolicy, check_position_mode


@dataclass
class FullPolicy(UniformPolicy):
    """Keep everything.

    Parameters
    ----------
    positions:
        ``absolute`` (Self-Forcing) or ``relative``.
    """

    name: ClassVar[str] = "full"
    positions: str = "absolute"

    def __post_init__(self) -> None:
        check_position_mode(self.positions)

    def retention(self, chunk_frames: int) -> Retention:
        return Retention(recent_frames=None, positions=self.positions)
