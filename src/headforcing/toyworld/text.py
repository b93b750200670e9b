"""The toy text encoder: a learned word table, learned positions and one self-attention layer.

Cross-attention in the Wan block has no positional signal on the text side, so a bare word table
could not tell "a red circle and a blue square" from "a blue circle and a red square". One small
bidirectional layer mixes each word with its neighbours (umT5 plays this role for Wan). Unknown
words map to a dedicated UNK row that training never updates (no training prompt contains an
unknown word), so it stays the fixed vector it was initialised to. Positions past the prompt are
zero, as io.text.TextEncoder requires.

A toy-world prompt is read one sprite per phrase, in canonical order (:func:`slot_prompt`):
"two white circles and a magenta square ..." reads as "a magenta square and a white circle and a
white circle ...". So the order a user names the sprites in does not matter, and the phrase of
sprite ``k`` always sits at words ``4k .. 4k + 2``: the canonical start puts sprite ``k`` in slot
``k``, and the model reads slot ``k`` off a fixed place in the prompt instead of counting.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from headforcing.toyworld.world import Scene

_WORD = re.compile(r"[\w']+|[^\w\s]")


class ToyTextEncoder(nn.Module):
    """Prompts -> ``[B, text_len, text_dim]`` embeddings (satisfies ``io.text.TextEncoder``).

    Parameters
    ----------
    vocabulary:
        The known words; row ``len(vocabulary)`` of the table is UNK.
    text_len, text_dim:
        Output shape per prompt; tokens past ``text_len`` are cut.
    num_heads:
        Heads of the mixing layer.
    """

    def __init__(
        self, vocabulary: list[str], text_len: int, text_dim: int, num_heads: int = 2
    ) -> None:
        super().__init__()
        if len(set(vocabulary)) != len(vocabulary):
            raise ValueError("the vocabulary has duplicate words")
        self.vocabulary = list(vocabulary)
        self.index = {word: i for i, word in enumerate(self.vocabulary)}
        self.unk = len(self.vocabulary)
        self.text_len = text_len
        self.text_dim = text_dim
        self.words = nn.Embedding(len(self.vocabulary) + 1, text_dim)
        self.positions = nn.Parameter(torch.randn(text_len, text_dim) * 0.1)
        self.norm1 = nn.LayerNorm(text_dim)
        self.attention = nn.MultiheadAttention(text_dim, num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(text_dim)
        self.mlp = nn.Sequential(
            nn.Linear(text_dim, 2 * text_dim), nn.GELU(), nn.Linear(2 * text_dim, text_dim)
        )

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids ``[B, text_len]`` (0 past the end) and the valid mask ``[B, text_len]``."""
        ids = torch.zeros(len(prompts), self.text_len, dtype=torch.long)
        valid = torch.zeros(len(prompts), self.text_len, dtype=torch.bool)
        for row, prompt in enumerate(prompts):
            words = _WORD.findall(slot_prompt(prompt).lower())[: self.text_len]
            if not words:
                raise ValueError(f"prompt {prompt!r} has no words")
            ids[row, : len(words)] = torch.tensor([self.index.get(w, self.unk) for w in words])
            valid[row, : len(words)] = True
        return ids, valid

    def count_tokens(self, prompt: str) -> int:
        """Tokens of ``prompt`` as :meth:`tokenize` reads it (after :func:`slot_prompt`)."""
        return len(_WORD.findall(slot_prompt(prompt).lower()))

    def forward(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """ids, valid: ``[B, L]`` -> embeddings ``[B, L, text_dim]``, zero where not valid."""
        device = self.positions.device
        ids, valid = ids.to(device), valid.to(device)
        x = self.words(ids) + self.positions[: ids.shape[1]]
        h = self.norm1(x)
        x = x + self.attention(h, h, h, key_padding_mask=~valid, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        return x * valid[..., None]

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> ``[B, text_len, text_dim]`` float32."""
        return self(*self.tokenize(prompts))


def slot_prompt(prompt: str) -> str:
    """A toy-world prompt rewritten with one phrase per sprite, in canonical order (it parses back
    to the same scene); any other text unchanged."""
    try:
        scene = Scene.from_prompt(prompt)
    except ValueError:
        return prompt
    phrases = " and ".join(f"a {sprite.colour} {sprite.shape}" for sprite in scene.sprites)
    verb = "bounces" if len(scene.sprites) == 1 else "bounce"
    return f"{phrases} {verb} over a {scene.background} {scene.pattern} background"
