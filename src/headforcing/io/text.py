"""Text encoders: prompt strings -> padded text embeddings for cross-attention, and the one
check every prompt passes where it enters (:func:`check_prompt`).

Every encoder returns ``[B, text_len, text_dim]`` with the positions past the prompt's tokens set
to zero, which is how Self-Forcing feeds umT5 output to the transformer.

A prompt comes from a command-line argument, a schedule file (JSONL or one per line), a
``batch`` item or the live page's ``POST /prompt``; each entry calls :func:`check_prompt` with
where the text came from, so text an encoder cannot take is refused there, in one line, and never
reaches the chunk loop: text that is not valid Unicode (a lone surrogate, which is how Python
carries undecodable bytes and JSON carries ``"\\ud800"``: it cannot be encoded as UTF-8),
control characters (tab, newline and carriage return are whitespace and pass), empty text, more
than :data:`MAX_PROMPT_CHARS` characters, and, once the encoder is known, more tokens than it
reads (it would drop the rest silently).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Protocol

import torch

_WORD = re.compile(r"[\w']+|[^\w\s]")
# more text than any encoder here reads (umT5: 512 tokens of a few characters each); checked
# before an encoder is loaded, and a bound on what a client of the live page may send
MAX_PROMPT_CHARS = 4096
WHITESPACE_CONTROLS = "\t\n\r"


class TextEncoder(Protocol):
    """Anything that turns prompts into ``[B, text_len, text_dim]`` embeddings.

    An encoder may also tell how many of its ``text_len`` tokens a prompt takes
    (``count_tokens(prompt) -> int``); :func:`check_prompt` then refuses a prompt it would cut.
    """

    text_len: int
    text_dim: int

    def encode(self, prompts: list[str]) -> torch.Tensor: ...


def check_prompt(text, where: str | None = None, encoder: TextEncoder | None = None) -> str:
    """``text`` if a text encoder can take it whole, else a one-line ValueError that starts
    with ``where`` (``PROMPT``, ``story.jsonl line 3``; none: the live page's reply) and says
    why and what to do. ``encoder``: also refuse more tokens than it reads."""
    prefix = f"{where}: " if where else ""
    if not isinstance(text, str):
        raise ValueError(f"{prefix}the prompt must be text, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"{prefix}the prompt is not valid UTF-8 text (a lone surrogate, "
            f"U+{ord(text[error.start]):04X}, at character {error.start + 1}: bytes that are "
            "not UTF-8, or a broken \\u escape); give the prompt as UTF-8 text"
        ) from None
    for index, character in enumerate(text):
        if unicodedata.category(character) == "Cc" and character not in WHITESPACE_CONTROLS:
            raise ValueError(
                f"{prefix}the prompt holds the control character U+{ord(character):04X} at "
                f"character {index + 1}, which the text encoder cannot take; remove it"
            )
    if not text.strip():
        raise ValueError(f"{prefix}the prompt is empty")
    if len(text) > MAX_PROMPT_CHARS:
        raise ValueError(
            f"{prefix}the prompt has {len(text)} characters; at most {MAX_PROMPT_CHARS}: shorten it"
        )
    count_tokens = getattr(encoder, "count_tokens", None)
    if count_tokens is not None:
        tokens = count_tokens(text)
        if tokens > encoder.text_len:
            raise ValueError(
                f"{prefix}the prompt is {tokens} tokens long; the text encoder reads "
                f"{encoder.text_len} and would drop the rest: shorten it"
            )
    return text


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

    def count_tokens(self, prompt: str) -> int:
        """Words and punctuation marks of ``prompt`` (its tokens)."""
        return len(_WORD.findall(prompt.lower()))

    def encode(self, prompts: list[str]) -> torch.Tensor:
        # embeddings: [B, text_len, text_dim], float32 on the CPU
        embeddings = torch.zeros(len(prompts), self.text_len, self.text_dim)
        for row, prompt in enumerate(prompts):
            words = _WORD.findall(prompt.lower())[: self.text_len]
            for position, word in enumerate(words):
                embeddings[row, position] = self._word_vector(word)
        return embeddings
