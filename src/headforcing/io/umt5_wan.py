"""umT5-XXL in Wan2.1's own file format: the encoder's sizes (:class:`UMT5Shape`, read from
a state dict or Wan's ``umt5_xxl``), the key map from Wan's ``T5Encoder`` to transformers'
``UMT5EncoderModel``, the checks that name a bad key in Wan's terms, and the safe read of
``models_t5_umt5-xxl-enc-bf16.pth``. :mod:`headforcing.io.umt5` encodes prompts with it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from headforcing.io.safe_load import load_state_dict_file

if TYPE_CHECKING:
    from transformers import UMT5Config, UMT5EncoderModel

WAN_FORMAT = (
    "Wan2.1's umT5 encoder file (models_t5_umt5-xxl-enc-bf16.pth: a torch state dict with the "
    "keys of T5Encoder in wan/modules/t5.py: token_embedding, blocks.N.{norm1, attn.{q,k,v,o}, "
    "norm2, ffn.{gate.0,fc1,fc2}, pos_embedding.embedding}, norm)"
)

# Wan T5Encoder names -> transformers UMT5EncoderModel names. Used by wan_umt5_to_transformers and,
# reversed, to name keys in Wan's terms in error messages.
_WAN_TOP_LEVEL = {
    # transformers keeps the embedding twice (``shared`` and the encoder's tied copy).
    "token_embedding.weight": ("shared.weight", "encoder.embed_tokens.weight"),
    "norm.weight": ("encoder.final_layer_norm.weight",),
}
_WAN_BLOCK = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",  # the GELU branch
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",  # the linear branch
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_WAN_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")
_HF_BLOCK_KEY = re.compile(r"^encoder\.block\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class UMT5Shape:
    """Sizes of a umT5 encoder, in the names of Wan's ``T5Encoder``.

    Parameters
    ----------
    vocab_size, dim, dim_attn, dim_ffn, num_heads, num_layers, num_buckets
        Embedding rows, model width, attention width (``num_heads * head_dim``), FFN width,
        heads, layers and relative-position buckets. Every layer owns its bucket table (umT5).
    max_distance
        Relative distance at which the logarithmic buckets saturate (128 in Wan and umT5).
    eps
        RMSNorm epsilon.
    """

    vocab_size: int
    dim: int
    dim_attn: int
    dim_ffn: int
    num_heads: int
    num_layers: int
    num_buckets: int
    max_distance: int = 128
    eps: float = 1e-6

    def __post_init__(self) -> None:
        sizes = {
            "vocab_size": self.vocab_size,
            "dim": self.dim,
            "dim_attn": self.dim_attn,
            "dim_ffn": self.dim_ffn,
            "num_heads": self.num_heads,
            "num_layers": self.num_layers,
            "num_buckets": self.num_buckets,
            "max_distance": self.max_distance,
        }
        for name, value in sizes.items():
            if value < 1:
                raise ValueError(f"UMT5Shape.{name} must be >= 1, got {value}")
        if self.dim_attn % self.num_heads:
            raise ValueError(
                f"UMT5Shape.dim_attn ({self.dim_attn}) must be a multiple of num_heads "
                f"({self.num_heads})"
            )
        # The bidirectional buckets split in halves, each half again in exact and log buckets.
        if self.num_buckets < 4:
            raise ValueError(f"UMT5Shape.num_buckets must be >= 4, got {self.num_buckets}")

    @classmethod
    def from_wan_state_dict(cls, state_dict: Mapping[str, torch.Tensor]) -> UMT5Shape:
        """Read the sizes off the tensor shapes of a Wan-layout state dict."""
        needed = (
            "token_embedding.weight",
            "blocks.0.attn.q.weight",
            "blocks.0.ffn.fc1.weight",
            "blocks.0.pos_embedding.embedding.weight",
        )
        absent = [name for name in needed if name not in state_dict]
        if absent:
            present = sorted(state_dict)
            raise ValueError(
                f"cannot read the model sizes: missing {', '.join(absent)}. Expected {WAN_FORMAT}; "
                f"got {len(present)} keys, first ones: {', '.join(present[:5]) or 'none'}. "
                "For a diffusers text_encoder/ folder use UMT5TextEncoder.from_diffusers."
            )
        vocab_size, dim = state_dict["token_embedding.weight"].shape
        num_buckets, num_heads = state_dict["blocks.0.pos_embedding.embedding.weight"].shape
        layer_indices = {
            int(match.group(1)) for name in state_dict if (match := _WAN_BLOCK_KEY.match(name))
        }
        return cls(
            vocab_size=vocab_size,
            dim=dim,
            dim_attn=state_dict["blocks.0.attn.q.weight"].shape[0],
            dim_ffn=state_dict["blocks.0.ffn.fc1.weight"].shape[0],
            num_heads=num_heads,
            num_layers=max(layer_indices) + 1,
            num_buckets=num_buckets,
        )

    def to_config(self) -> UMT5Config:
        """The transformers ``UMT5Config`` of this encoder (gated GELU-tanh FFN, no dropout)."""
        from transformers import UMT5Config

        return UMT5Config(
            vocab_size=self.vocab_size,
            d_model=self.dim,
            d_kv=self.dim_attn // self.num_heads,
            d_ff=self.dim_ffn,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            relative_attention_num_buckets=self.num_buckets,
            relative_attention_max_distance=self.max_distance,
            layer_norm_epsilon=self.eps,
            feed_forward_proj="gated-gelu",
            dropout_rate=0.0,
            use_cache=False,
        )


# umt5_xxl in wan/modules/t5.py (encoder half): the encoder of Wan2.1 T2V/I2V.
UMT5_XXL = UMT5Shape(
    vocab_size=256384,
    dim=4096,
    dim_attn=4096,
    dim_ffn=10240,
    num_heads=64,
    num_layers=24,
    num_buckets=32,
)


def umt5_dtype(run_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The encoder's dtype in a run: bf16 (its file's) on a GPU or in a bf16 run, float32 in a
    float32 CPU run."""
    if device.type == "cuda" or run_dtype == torch.bfloat16:
        return torch.bfloat16
    return torch.float32


def wan_umt5_to_transformers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Wan ``T5Encoder`` state dict to transformers ``UMT5EncoderModel`` names.

    The token embedding goes to both ``shared.weight`` and ``encoder.embed_tokens.weight`` (the
    same tensor). Keys this map does not know are kept unchanged, so that strict loading reports
    them as unexpected instead of silently dropping them.
    """
    converted: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        block = _WAN_BLOCK_KEY.match(name)
        if name in _WAN_TOP_LEVEL:
            new_names: tuple[str, ...] = _WAN_TOP_LEVEL[name]
        elif block and block.group(2) in _WAN_BLOCK:
            new_names = (f"encoder.block.{block.group(1)}.{_WAN_BLOCK[block.group(2)]}",)
        else:
            new_names = (name,)
        for new_name in new_names:
            converted[new_name] = tensor
    return converted


def _wan_name(transformers_name: str) -> str:
    """The Wan name of a transformers key (for error messages); unknown names come back as is."""
    for wan_name, new_names in _WAN_TOP_LEVEL.items():
        if transformers_name in new_names:
            return wan_name
    block = _HF_BLOCK_KEY.match(transformers_name)
    if block:
        for wan_suffix, hf_suffix in _WAN_BLOCK.items():
            if block.group(2) == hf_suffix:
                return f"blocks.{block.group(1)}.{wan_suffix}"
    return transformers_name


def _natural_order(name: str) -> list[int | str]:
    """Sort key that puts blocks.2 before blocks.10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _listing(names: list[str], limit: int = 5) -> str:
    names = sorted(names, key=_natural_order)
    shown = ", ".join(names[:limit])
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return f"{len(names)}: {shown}{more}"


def _check_wan_keys(
    expected: Mapping[str, torch.Tensor],
    converted: Mapping[str, torch.Tensor],
    shape: UMT5Shape,
    source: str,
) -> None:
    """Raise one ValueError listing missing, unexpected and wrongly shaped keys, in Wan names."""
    missing = list({_wan_name(name) for name in expected if name not in converted})
    unexpected = [name for name in converted if name not in expected]
    wrong_shape = [
        f"{_wan_name(name)} {tuple(converted[name].shape)} != {tuple(tensor.shape)}"
        for name, tensor in expected.items()
        if name in converted and converted[name].shape != tensor.shape
    ]
    if not (missing or unexpected or wrong_shape):
        return
    problems = []
    if missing:
        problems.append(f"missing keys {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_listing(unexpected)}")
    if wrong_shape:
        problems.append(f"wrong shapes (file != model) {_listing(wrong_shape)}")
    raise ValueError(
        f"{source} does not match the expected format, {WAN_FORMAT}, for {shape}: "
        + "; ".join(problems)
        + ". Check that the file is Wan2.1's umT5 encoder (not a diffusers/transformers "
        "checkpoint: use UMT5TextEncoder.from_diffusers for those) and that `shape`, if given, "
        "matches it."
    )


def umt5_from_wan_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    shape: UMT5Shape | None = None,
    *,
    source: str = "the state dict",
) -> UMT5EncoderModel:
    """Build a ``UMT5EncoderModel`` on the meta device and assign a Wan-layout state dict to it.

    Parameters
    ----------
    state_dict
        Wan ``T5Encoder`` tensors; they become the model's parameters as they are (no copy, same
        device and dtype).
    shape
        Sizes of the encoder; read from the tensor shapes when ``None``.
    source
        What to call the state dict in error messages (the file path).

    Raises
    ------
    ValueError
        If keys are missing, unexpected or of the wrong shape (all listed in Wan's names).
    """
    from transformers import UMT5EncoderModel

    shape = shape if shape is not None else UMT5Shape.from_wan_state_dict(state_dict)
    converted = wan_umt5_to_transformers(state_dict)
    with torch.device("meta"):
        model = UMT5EncoderModel(shape.to_config())
    _check_wan_keys(model.state_dict(), converted, shape, source)
    model.load_state_dict(converted, strict=True, assign=True)
    # assign=True gave shared and encoder.embed_tokens one Parameter each; re-tie them so that a
    # later .to(device) moves one embedding matrix, not two.
    model.set_input_embeddings(model.shared)
    return model.eval().requires_grad_(False)


def load_wan_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a plain tensor state dict with ``weights_only=True`` (memory-mapped when possible).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file holds anything but a mapping of names to tensors; in particular a pickle that
        would run code on loading is refused without running it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"umT5 checkpoint {path} does not exist; expected {WAN_FORMAT}")
    return load_state_dict_file(path, WAN_FORMAT)
