"""Typed configuration of the causal Wan transformer and the named presets."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class WanConfig:
    """Shape of a Wan2.1-style video diffusion transformer.

    Defaults are Wan2.1-T2V-1.3B (REFERENCE.md section 2).
    """

    dim: int = 1536
    ffn_dim: int = 8960
    freq_dim: int = 256
    text_dim: int = 4096
    text_len: int = 512
    num_heads: int = 12
    num_layers: int = 30
    patch_size: tuple[int, int, int] = (1, 2, 2)
    in_channels: int = 16
    out_channels: int = 16
    eps: float = 1e-6
    rope_theta: float = 10000.0
    # add a fixed 2D sin-cos embedding of each token's row and column (DiT) to every frame's
    # tokens; False (Wan) leaves positions to the RoPE alone
    spatial_pos_embed: bool = False

    def __post_init__(self) -> None:
        if self.spatial_pos_embed and self.dim % 4:
            raise ValueError(f"a spatial position embedding needs dim % 4 == 0, got {self.dim}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} must be divisible by num_heads {self.num_heads}")
        if self.head_dim % 2 or self.head_dim < 6:
            raise ValueError(f"head_dim {self.head_dim} must be even and >= 6 for the 3D RoPE")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


@dataclass(frozen=True)
class VideoConfig:
    """How a preset's latents relate to pixels and time.

    ``trained_frames`` is the number of latent frames the model saw in training: temporal
    positions at or beyond it were never trained (21 for Wan2.1, 5 s of video).
    """

    height: int = 480
    width: int = 832
    fps: int = 16
    vae_stride: tuple[int, int, int] = (4, 8, 8)
    chunk_frames: int = 3
    trained_frames: int = 21
    # the few-step sampler this model was made for (Self-Forcing: 4 steps, shift 5)
    sampler_steps: tuple[int, ...] = (1000, 750, 500, 250)
    sampler_shift: float = 5.0


@dataclass(frozen=True)
class Preset:
    name: str
    model: WanConfig
    video: VideoConfig
    description: str
    has_text_encoder: bool = True
    has_vae: bool = True
    aliases: tuple[str, ...] = field(default=())


PRESETS: dict[str, Preset] = {}


def register(preset: Preset) -> Preset:
    for name in (preset.name, *preset.aliases):
        PRESETS[name] = preset
    return preset


register(
    Preset(
        name="wan2.1-t2v-1.3b",
        model=WanConfig(),
        video=VideoConfig(),
        description="Wan2.1-T2V-1.3B shape (Self-Forcing, LongLive, CausVid weights)",
    )
)

register(
    Preset(
        name="tiny",
        model=WanConfig(
            dim=64,
            ffn_dim=128,
            freq_dim=32,
            text_dim=32,
            text_len=16,
            num_heads=4,
            num_layers=2,
        ),
        video=VideoConfig(height=128, width=128),
        description="random-weight model for tests; hashed-word text, linear latent preview",
        has_text_encoder=False,
        has_vae=False,
    )
)


register(
    Preset(
        name="toy",
        model=WanConfig(
            dim=256,  # > 192 = 3 x 8 x 8 values per token: the flow holds iid noise
            ffn_dim=512,
            freq_dim=64,
            text_dim=64,
            text_len=24,
            num_heads=4,
            num_layers=4,
            in_channels=48,
            out_channels=48,
            # a RoPE-only model hardly knows where a token is in the frame, which the
            # prompt-determined start and the wall bounces need (docs/toyworld.md)
            spatial_pos_embed=True,
        ),
        video=VideoConfig(
            height=32,
            width=32,
            fps=8,
            vae_stride=(1, 4, 4),
            chunk_frames=3,
            trained_frames=21,
            # measured (benchmarks/toyworld_sampler.py): 16 even steps, shift 3 scored best
            sampler_steps=tuple(round(1000 * (16 - i) / 16) for i in range(16)),
            sampler_shift=3.0,
        ),
        description="toy-world model trained here (headforcing.toyworld): 32x32 RGB, runs on CPU",
        has_text_encoder=False,
        has_vae=False,
    )
)


# Wan2.1-1.3B's cost shape at a size a CPU times in minutes (``headforcing bench``): heads of
# 128 channels, as many tokens per frame as channels (Wan: 1560 tokens, dim 1536), an FFN of
# 5.83x the width and text of a third of a frame's tokens (Wan: 8960, 512), so that attention
# over a 21-frame context is about two thirds of a pass, as on Wan (REFERENCE.md section 4).
register(
    Preset(
        name="cpu-bench",
        model=WanConfig(
            dim=384,
            ffn_dim=2240,
            freq_dim=256,
            text_dim=64,
            text_len=128,
            num_heads=3,
            num_layers=2,
        ),
        video=VideoConfig(height=256, width=384),  # 16 x 24 = 384 tokens per latent frame
        description="random-weight model with Wan2.1-1.3B's attention-to-linear cost ratio "
        "at CPU size (benchmarks)",
        has_text_encoder=False,
        has_vae=False,
    )
)


# Wan2.1-1.3B's depth and heads (30 layers x 12 heads) with negligible arithmetic (8 channels a
# head, 4 tokens a frame, a tiny FFN): what is left of a pass is dispatch, the host's cost of
# launching every op, the proxy for a GPU's launch overhead (``headforcing bench``).
register(
    Preset(
        name="wan-skeleton",
        model=WanConfig(
            dim=96,
            ffn_dim=16,
            freq_dim=16,
            text_dim=16,
            text_len=4,
            num_heads=12,
            num_layers=30,
        ),
        video=VideoConfig(height=32, width=32),  # 2 x 2 = 4 tokens per latent frame
        description="Wan2.1-1.3B's 30 layers x 12 heads with negligible arithmetic "
        "(dispatch and bookkeeping cost, benchmarks)",
        has_text_encoder=False,
        has_vae=False,
    )
)


def get_preset(name: str) -> Preset:
    """Look a preset up by name, with an error that lists the valid names."""
    try:
        return PRESETS[name]
    except KeyError:
        valid = ", ".join(sorted(PRESETS))
        raise ValueError(f"unknown preset {name!r}; valid presets: {valid}") from None
