"""Where a real model's files live, and how the pipeline is assembled from them.

Two layouts of the Wan2.1-T2V-1.3B files are accepted, each named explicitly:

- ``--wan-dir``: the original repository (``Wan-AI/Wan2.1-T2V-1.3B``):
  ``models_t5_umt5-xxl-enc-bf16.pth``, ``google/umt5-xxl/`` (tokenizer), ``Wan2.1_VAE.pth``;
- ``--diffusers-dir``: the diffusers repository (``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``):
  ``text_encoder/``, ``tokenizer/``, ``vae/`` and, for ``--model diffusers``, ``transformer/``.

The transformer comes from ``--checkpoint`` (Self-Forcing, Causal Forcing, LongLive base +
``--lora``, CausVid), or from the diffusers folder's ``transformer/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

WAN_TEXT_ENCODER = "models_t5_umt5-xxl-enc-bf16.pth"
WAN_TOKENIZER = "google/umt5-xxl"
WAN_VAE = "Wan2.1_VAE.pth"


@dataclass(frozen=True)
class RealFiles:
    """Paths of a real model's files.

    Exactly one of ``wan_dir`` and ``diffusers_dir`` is set. ``checkpoint`` is required unless
    ``model == "diffusers"`` (then the transformer is ``diffusers_dir / "transformer"``).
    """

    model: str
    checkpoint: Path | None = None
    wan_dir: Path | None = None
    diffusers_dir: Path | None = None
    lora: Path | None = None
    lora_alpha: float | None = None
    use_ema: bool | None = None  # None: what the checkpoint kind's authors load

    def __post_init__(self) -> None:
        from headforcing.io.checkpoints import CHECKPOINT_KINDS

        if self.model not in CHECKPOINT_KINDS:
            valid = ", ".join(sorted(CHECKPOINT_KINDS))
            raise ValueError(f"unknown --model {self.model!r}; valid models: {valid}")
        if (self.wan_dir is None) == (self.diffusers_dir is None):
            raise ValueError(
                "give the text encoder and VAE files with exactly one of --wan-dir (the original "
                "Wan2.1-T2V-1.3B folder) or --diffusers-dir (Wan2.1-T2V-1.3B-Diffusers)"
            )
        if self.model == "diffusers":
            if self.diffusers_dir is None:
                raise ValueError("--model diffusers reads transformer/ from --diffusers-dir")
        elif self.checkpoint is None:
            raise ValueError(f"--model {self.model} needs --checkpoint FILE (the .pt)")
        if CHECKPOINT_KINDS[self.model].takes_lora:
            if self.lora is None or self.lora_alpha is None:
                raise ValueError(
                    f"--model {self.model} merges a LoRA into the base --checkpoint: pass --lora "
                    "FILE (its lora.pt) and --lora-alpha (LongLive: 256); for the base model "
                    "alone use --model self-forcing"
                )
            if not self.lora_alpha > 0:
                raise ValueError(f"--lora-alpha {self.lora_alpha:g}: give a number > 0, e.g. 256")
        elif self.lora is not None or self.lora_alpha is not None:
            raise ValueError(
                f"--lora and --lora-alpha go with --model longlive, not --model {self.model}"
            )
        for path in self.required_paths():
            if not path.exists():
                raise ValueError(f"missing {path}; see docs/real-models.md for the files to get")

    @property
    def transformer_path(self) -> Path:
        if self.model == "diffusers":
            return self.diffusers_dir / "transformer"
        return self.checkpoint

    def text_encoder_shape(self):
        """The umT5 encoder's sizes (:class:`~headforcing.io.umt5.UMT5Shape`) read from its
        file's tensor shapes or its config, without loading the weights; ``None`` when they
        cannot be read (the loader then says why)."""
        import json

        from headforcing.io.umt5 import UMT5Shape, load_wan_state_dict

        try:
            if self.wan_dir is not None:
                state_dict = load_wan_state_dict(self.wan_dir / WAN_TEXT_ENCODER)  # memory-mapped
                return UMT5Shape.from_wan_state_dict(state_dict)
            path = self.diffusers_dir / "text_encoder" / "config.json"
            config = json.loads(path.read_text(encoding="utf-8"))
            return UMT5Shape(
                vocab_size=config["vocab_size"],
                dim=config["d_model"],
                dim_attn=config["d_kv"] * config["num_heads"],
                dim_ffn=config["d_ff"],
                num_heads=config["num_heads"],
                num_layers=config["num_layers"],
                num_buckets=config["relative_attention_num_buckets"],
            )
        except (OSError, ValueError, KeyError, TypeError, RuntimeError):
            return None

    def required_paths(self) -> list[Path]:
        paths = [self.transformer_path]
        if self.lora is not None:
            paths.append(self.lora)
        if self.wan_dir is not None:
            paths += [self.wan_dir / name for name in (WAN_TEXT_ENCODER, WAN_TOKENIZER, WAN_VAE)]
        else:
            paths += [self.diffusers_dir / name for name in ("text_encoder", "tokenizer", "vae")]
        return paths


def load_real_parts(
    files: RealFiles,
    config,
    *,
    device: torch.device,
    dtype: torch.dtype,
    text_device: torch.device | None = None,
    keep_text_encoder: bool = False,
    vae_config=None,
    decode_frames_per_call: int | None = None,
):
    """Load ``(transformer, text encoder, VAE decoder)`` from ``files``.

    The text encoder runs on ``text_device`` (default: ``device``) in bf16 (its file's dtype)
    on a GPU or in a bf16 run, else float32; it frees its weights after each prompt and reads
    them again for the next unless ``keep_text_encoder``. The VAE decodes
    ``decode_frames_per_call`` latent frames per call (``None``: a chunk's). ``vae_config``
    overrides the Wan2.1 VAE shape (tests).
    """
    from headforcing.io.checkpoints import load_transformer
    from headforcing.io.umt5 import UMT5TextEncoder, umt5_dtype
    from headforcing.io.wan_vae import WanVAEDecoder

    model = load_transformer(
        files.transformer_path,
        config,
        kind=files.model,
        lora=files.lora,
        lora_alpha=files.lora_alpha,
        use_ema=files.use_ema,
        device=device,
        dtype=dtype,
    )
    text_device = text_device or device
    text_dtype = umt5_dtype(dtype, text_device)
    keep = keep_text_encoder
    if files.wan_dir is not None:
        text_encoder = UMT5TextEncoder.from_wan_files(
            files.wan_dir / WAN_TEXT_ENCODER,
            files.wan_dir / WAN_TOKENIZER,
            device=text_device,
            dtype=text_dtype,
            text_len=config.text_len,
            keep_loaded=keep,
        )
        decoder = WanVAEDecoder.from_wan_file(
            files.wan_dir / WAN_VAE,
            config=vae_config,
            device=device,
            dtype=dtype,
            frames_per_call=decode_frames_per_call,
        )
    else:
        text_encoder = UMT5TextEncoder.from_diffusers(
            files.diffusers_dir,
            device=text_device,
            dtype=text_dtype,
            text_len=config.text_len,
            keep_loaded=keep,
        )
        decoder = WanVAEDecoder.from_diffusers(
            files.diffusers_dir / "vae",
            device=device,
            dtype=dtype,
            frames_per_call=decode_frames_per_call,
        )
    return model, text_encoder, decoder
