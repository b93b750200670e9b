"""Text encoders: prompt strings -> padded text embeddings for cross-attention.

Every encoder returns ``[B, text_len, text_dim]`` with the positions past the prompt's tokens set
to zero, which is how Self-Forcing feeds umT5 output to the transformer.
"""

from __future__ import annotations

import hashlib
import re
from typing import Protocol

import torch

_WORD = re.compile(r"[\w']+|[^\w\s]")


class TextEncoder(Protocol):
    """Anything that turns prompts into ``[B, text_len, text_dim]`` embeddings."""

    text_len: int
    text_dim: int

    def encode(self, prompts: list[str]) -> torch.Tensor: ...


class HashedTextEncoder:
    """Stand-in text encoder for presets that ship no language model (``tiny``).

    Each lower-cased word (or punctuation mark) maps to a fixed unit-variance vector drawn from a
    generator seeded by the word's BLAKE2 digest, so the same word always gets the same vector on
    every machine and prompts that share words share embeddings. Tokens past ``text_len`` are cut;
    the padding is zero.
    """

    def __init__(self, text_len: int, text_dim: int) -> None:
        if text_len < 1 or text_dim < 1:
            raise ValueError(f"text_len and text_dim must be >= 1, got {text_len}, {text_dim}")
        self.text_len = text_len
        self.text_dim = text_dim

    def _word_vector(self, word: str) -> torch.Tensor:
        digest = hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)
        return torch.randn(self.text_dim, generator=generator)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        # embeddings: [B, text_len, text_dim], float32 on the CPU
        embeddings = torch.zeros(len(prompts), self.text_len, self.text_dim)
        for row, prompt in enumerate(prompts):
            words = _WORD.findall(prompt.lower())[: self.text_len]
            for position, word in enumerate(words):
                embeddings[row, position] = self._word_vector(word)
        return embeddings
