"""The Wan2.1 VAE as a streaming latent decoder (diffusers ``AutoencoderKLWan``).

The Wan VAE decoder is causal in time: every 3D convolution sees the current latent frame and a
cache of the last two frames before it. Decoding a video chunk by chunk while keeping that cache
gives the same pixels as decoding all latent frames at once, so frames can be written as soon as
their chunk is generated. The cache is cleared only by ``reset()``.

Two weight formats load into the same diffusers model:

- a diffusers folder (``vae/`` of Wan2.1-T2V-1.3B-Diffusers): ``WanVAEDecoder.from_diffusers``;
- the original ``Wan2.1_VAE.pth``, a plain state dict in the layout of Wan's
  ``wan/modules/vae.py``: ``WanVAEDecoder.from_wan_file``, renamed by
  ``convert_wan_vae_state_dict``.

diffusers is imported inside the functions that need it, so ``import headforcing`` stays light.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from headforcing.io.decoders import to_uint8_frames
from headforcing.io.safe_load import check_diffusers_folder, first_line, load_state_dict_file

if TYPE_CHECKING:
    from diffusers import AutoencoderKLWan

_WAN_FORMAT = "the original Wan2.1 VAE state dict (Wan2.1_VAE.pth, layout of wan/modules/vae.py)"
_DIFFUSERS_FORMAT = "a diffusers AutoencoderKLWan folder (config.json + weights)"


@dataclass(frozen=True)
class WanVAEConfig:
    """Architecture of a Wan2.1 VAE; the defaults are the released Wan2.1 VAE (127 M parameters).

    These are diffusers' ``AutoencoderKLWan`` arguments (spelling ``temperal`` included). The
    latent statistics default (``None``) to diffusers' Wan2.1 values, which exist for
    ``z_dim == 16`` only. The original Wan layout is defined for at most four stages
    (``len(dim_mult) <= 4``) and no attention outside the middle blocks.
    """

    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.base_dim < 1 or self.z_dim < 1 or self.num_res_blocks < 1:
            raise ValueError(
                "base_dim, z_dim and num_res_blocks must be >= 1, got "
                f"{self.base_dim}, {self.z_dim}, {self.num_res_blocks}"
            )
        if not 1 <= len(self.dim_mult) <= 4:
            raise ValueError(f"dim_mult must have 1 to 4 stages, got {self.dim_mult}")
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(
                f"temperal_downsample needs len(dim_mult) - 1 = {len(self.dim_mult) - 1} "
                f"entries, got {self.temperal_downsample}"
            )
        for name in ("latents_mean", "latents_std"):
            stats = getattr(self, name)
            if stats is None and self.z_dim != 16:
                raise ValueError(f"{name} is required for z_dim {self.z_dim} (defaults need 16)")
            if stats is not None and len(stats) != self.z_dim:
                raise ValueError(f"{name} needs z_dim = {self.z_dim} values, got {len(stats)}")

    def diffusers_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``AutoencoderKLWan(...)``."""
        kwargs = {key: value for key, value in asdict(self).items() if value is not None}
        return {
            key: list(value) if isinstance(value, tuple) else value for key, value in kwargs.items()
        }


def _decoder_upsample_names(config: WanVAEConfig) -> dict[int, str]:
    """Original ``decoder.upsamples.<index>`` -> diffusers ``decoder.up_blocks.<stage>...``.

    Wan keeps the decoder's blocks in one flat ``nn.Sequential``: per stage ``num_res_blocks + 1``
    residual blocks, then one resample block (all stages but the last). diffusers nests them.
    """
    names = {}
    index = 0
    for stage in range(len(config.dim_mult)):
        for resnet in range(config.num_res_blocks + 1):
            names[index] = f"decoder.up_blocks.{stage}.resnets.{resnet}"
            index += 1
        if stage != len(config.dim_mult) - 1:
            names[index] = f"decoder.up_blocks.{stage}.upsamplers.0"
            index += 1
    return names


# Applied in order, each at most once per key. Residual blocks are `nn.Sequential`s in Wan:
# 0 norm, 1 SiLU, 2 conv, 3 norm, 4 SiLU, 5 dropout, 6 conv.
_KEY_RENAMES = (
    (re.compile(r"^conv1\."), "quant_conv."),
    (re.compile(r"^conv2\."), "post_quant_conv."),
    (re.compile(r"^(encoder|decoder)\.conv1\."), r"\1.conv_in."),
    (re.compile(r"^(encoder|decoder)\.head\.0\."), r"\1.norm_out."),
    (re.compile(r"^(encoder|decoder)\.head\.2\."), r"\1.conv_out."),
    (re.compile(r"^(encoder|decoder)\.middle\.0\."), r"\1.mid_block.resnets.0."),
    (re.compile(r"^(encoder|decoder)\.middle\.1\."), r"\1.mid_block.attentions.0."),
    (re.compile(r"^(encoder|decoder)\.middle\.2\."), r"\1.mid_block.resnets.1."),
    (re.compile(r"^encoder\.downsamples\."), "encoder.down_blocks."),
    (re.compile(r"\.residual\.0\."), ".norm1."),
    (re.compile(r"\.residual\.2\."), ".conv1."),
    (re.compile(r"\.residual\.3\."), ".norm2."),
    (re.compile(r"\.residual\.6\."), ".conv2."),
    (re.compile(r"\.shortcut\."), ".conv_shortcut."),
)
_DECODER_UPSAMPLE = re.compile(r"^decoder\.upsamples\.(\d+)\.")


def convert_wan_vae_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: WanVAEConfig
) -> dict[str, torch.Tensor]:
    """Rename an original Wan2.1 VAE state dict to diffusers ``AutoencoderKLWan`` keys.

    Shapes are identical in both layouts; only names change. Keys the map does not know pass
    through unchanged, so that a strict load reports them as unexpected.
    """
    upsample_names = _decoder_upsample_names(config)
    converted = {}
    for key, tensor in state_dict.items():
        new_key = key
        match = _DECODER_UPSAMPLE.match(key)
        if match and int(match.group(1)) in upsample_names:
            new_key = f"{upsample_names[int(match.group(1))]}.{key[match.end() :]}"
        for pattern, replacement in _KEY_RENAMES:
            new_key = pattern.sub(replacement, new_key, count=1)
        converted[new_key] = tensor
    return converted


def _raise_on_mismatch(
    missing: list[str], unexpected: list[str], mismatched: list[str], source: Path, expected: str
) -> None:
    """One ValueError listing missing, unexpected and wrongly shaped keys (a few of each)."""
    problems = []
    for label, keys in (
        ("missing (diffusers names)", missing),
        ("unexpected", unexpected),
        ("wrong shape", mismatched),
    ):
        if keys:
            shown = ", ".join(sorted(keys)[:5]) + (", ..." if len(keys) > 5 else "")
            problems.append(f"{len(keys)} {label} ({shown})")
    if problems:
        raise ValueError(f"{source} does not match {expected}: " + "; ".join(problems))


def _load_torch_file(path: Path) -> dict[str, torch.Tensor]:
    """``torch.load`` restricted to tensors; memory-mapped when the file is a zip archive."""
    return load_state_dict_file(path, _WAN_FORMAT)


def load_wan_vae(path: str | Path, config: WanVAEConfig | None = None) -> AutoencoderKLWan:
    """Load ``Wan2.1_VAE.pth`` into a diffusers ``AutoencoderKLWan`` on the CPU, strictly.

    The model is built on the meta device and takes the (memory-mapped) checkpoint tensors as
    its parameters, so nothing is allocated twice and untouched weights are never read.
    """
    from diffusers import AutoencoderKLWan

    path = Path(path)
    config = config or WanVAEConfig()
    original = _load_torch_file(path)
    converted = convert_wan_vae_state_dict(original, config)
    if len(converted) != len(original):
        raise ValueError(f"{path}: several keys map to one diffusers key; expected {_WAN_FORMAT}")
    original_names = dict(zip(converted, original, strict=True))
    with torch.device("meta"):
        vae = AutoencoderKLWan(**config.diffusers_kwargs())
    expected = vae.state_dict()
    _raise_on_mismatch(
        missing=[key for key in expected if key not in converted],
        unexpected=[original_names[key] for key in converted if key not in expected],
        mismatched=[
            f"{original_names[key]}: {tuple(tensor.shape)} vs {tuple(expected[key].shape)}"
            for key, tensor in converted.items()
            if key in expected and tensor.shape != expected[key].shape
        ],
        source=path,
        expected=f"{_WAN_FORMAT} for {config}",
    )
    vae.load_state_dict(converted, strict=True, assign=True)
    return vae


class WanVAEDecoder:
    """Streams normalised Wan latents ``[B, 16, F, h, w]`` to frames ``[B, F_pix, 8h, 8w, 3]``.

    Satisfies ``headforcing.io.decoders.LatentDecoder``. Only the decoder half of the VAE (and
    its ``post_quant_conv``) is used; those modules are moved to ``device`` / ``dtype`` in place,
    the encoder stays where it is (memory-mapped and never read when loaded from a file).

    Parameters
    ----------
    vae
        A diffusers ``AutoencoderKLWan`` of the Wan2.1 layout (no ``patch_size``, not residual).
    device, dtype
        Where and in which precision to decode (default: where the decoder's weights are).
        Use ``torch.bfloat16`` on a GPU (half the memory and faster convolutions; diffusers
        still normalises in float32 inside its RMS norms); float32 is the exact reference.
    channels_last
        Store the 3D convolution weights as ``torch.channels_last_3d`` so that cuDNN may run them
        in NDHWC layout, which can be faster in bf16 on tensor-core GPUs. Same results; off by
        default because the gain depends on the GPU and the resolution (measure it).
    compile
        Run the decoder through ``torch.compile(dynamic=False)``. Opt-in: each new cache state
        and chunk shape compiles once (four variants over the first three chunks of a video on
        CPU inductor: first frame, rest of the first chunk, then twice while the cached tensors'
        layouts settle); later chunks of the same shape, and later videos, reuse them.
    frames_per_call
        Latent frames per decoder call (``None``: a chunk's in one call). The same pixels; the
        decoder's transient memory grows with the frames of a call, so 1 bounds it
        (``headforcing.resources``: 3.8 instead of 7.8 GiB at 480x832 in bf16).
    """

    def __init__(
        self,
        vae: AutoencoderKLWan,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        channels_last: bool = False,
        compile: bool = False,
        frames_per_call: int | None = None,
    ) -> None:
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

        if frames_per_call is not None and frames_per_call < 1:
            raise ValueError(f"frames_per_call must be >= 1 or None, got {frames_per_call}")
        self.frames_per_call = frames_per_call

        config = vae.config
        if config.patch_size is not None or config.is_residual:
            raise ValueError(
                "WanVAEDecoder supports the Wan2.1 VAE layout (patch_size None, is_residual "
                f"False), got patch_size={config.patch_size}, is_residual={config.is_residual}"
            )
        weight = next(vae.decoder.parameters())
        self.device = torch.device(device) if device is not None else weight.device
        self.dtype = dtype if dtype is not None else weight.dtype
        self.temporal_stride = 2 ** sum(config.temperal_downsample)
        self.spatial_stride = 2 ** (len(config.dim_mult) - 1)
        self.latent_channels = config.z_dim

        self.post_quant_conv = vae.post_quant_conv.to(self.device, self.dtype).eval()
        decoder = vae.decoder.to(self.device, self.dtype).eval()
        decoder.requires_grad_(False)
        self.post_quant_conv.requires_grad_(False)
        if channels_last:
            for module in decoder.modules():
                if isinstance(module, nn.Conv3d):
                    module.to(memory_format=torch.channels_last_3d)
        self.decoder = decoder
        self._run_decoder = torch.compile(decoder, dynamic=False) if compile else decoder
        self._cached_convs = sum(isinstance(m, WanCausalConv3d) for m in decoder.modules())

        # z = latents * std + mean, broadcast over [B, C, F, h, w]
        stats = {"dtype": self.dtype, "device": self.device}
        self._latents_mean = torch.tensor(config.latents_mean, **stats).view(1, -1, 1, 1, 1)
        self._latents_std = torch.tensor(config.latents_std, **stats).view(1, -1, 1, 1, 1)
        self.reset()

    @classmethod
    def from_diffusers(
        cls,
        vae_dir: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        compile: bool = False,
        frames_per_call: int | None = None,
    ) -> WanVAEDecoder:
        """Load a diffusers ``AutoencoderKLWan`` folder (e.g. the ``vae/`` of the Diffusers repo).

        Loading is strict: a missing, unexpected or mis-shaped weight raises ``ValueError``.
        """
        from diffusers import AutoencoderKLWan

        check_diffusers_folder(vae_dir, _DIFFUSERS_FORMAT)
        try:
            vae, info = AutoencoderKLWan.from_pretrained(
                vae_dir, local_files_only=True, output_loading_info=True, use_safetensors=True
            )
        except (OSError, ValueError, RuntimeError) as error:
            raise ValueError(
                f"{vae_dir}: the VAE does not load ({first_line(error)}); expected "
                f"{_DIFFUSERS_FORMAT}"
            ) from None
        _raise_on_mismatch(
            missing=info["missing_keys"],
            unexpected=info["unexpected_keys"],
            mismatched=[str(key) for key in info["mismatched_keys"]],
            source=Path(vae_dir),
            expected=_DIFFUSERS_FORMAT,
        )
        return cls(
            vae,
            device=device,
            dtype=dtype,
            channels_last=channels_last,
            compile=compile,
            frames_per_call=frames_per_call,
        )

    @classmethod
    def from_wan_file(
        cls,
        path: str | Path,
        *,
        config: WanVAEConfig | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        compile: bool = False,
        frames_per_call: int | None = None,
    ) -> WanVAEDecoder:
        """Load the original ``Wan2.1_VAE.pth`` (see ``load_wan_vae``); config: Wan2.1's."""
        vae = load_wan_vae(path, config)
        return cls(
            vae,
            device=device,
            dtype=dtype,
            channels_last=channels_last,
            compile=compile,
            frames_per_call=frames_per_call,
        )

    def reset(self) -> None:
        """Start a new video: forget the causal-convolution cache."""
        # One slot per causal conv of the decoder, filled in call order by diffusers' decoder.
        self._feat_cache: list[Any] = [None] * self._cached_convs
        self._started = False

    @torch.inference_mode()
    def decode_chunk_float(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``[B, C, F, h, w]`` -> video ``[B, 3, F_pix, H, W]`` in [-1, 1].

        ``F_pix`` is ``1 + 4 * (F - 1)`` for the first chunk of a video, ``4 * F`` afterwards
        (4 = ``temporal_stride``). The result is in ``self.dtype`` on ``self.device``; it equals
        diffusers' ``vae.decode`` of the whole latent video, sliced to this chunk's frames.
        """
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"latents must be [B, {self.latent_channels}, F, h, w], got {tuple(latents.shape)}"
            )
        # z: [B, C, F, h, w] in the VAE's own latent space
        z = torch.addcmul(
            self._latents_mean, latents.to(self.device, self.dtype), self._latents_std
        )
        z = self.post_quant_conv(z)
        pieces = []
        if not self._started:
            # The first latent frame of a video decodes to one pixel frame: diffusers marks the
            # temporal upsamplers on this call and skips their time convolution.
            pieces.append(self._decode_frames(z[:, :, :1], first_chunk=True))
            z = z[:, :, 1:]
            self._started = True
        step = self.frames_per_call or max(z.shape[2], 1)
        for start in range(0, z.shape[2], step):
            pieces.append(self._decode_frames(z[:, :, start : start + step], first_chunk=False))
        video = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2)
        return video.clamp_(-1.0, 1.0)

    def _decode_frames(self, z: torch.Tensor, *, first_chunk: bool) -> torch.Tensor:
        # z: [B, C, F, h, w] -> [B, 3, F_pix, H, W]. Several frames per call give the same result
        # as one at a time (diffusers' loop): the cache holds the two frames before the call.
        return self._run_decoder(
            z, feat_cache=self._feat_cache, feat_idx=[0], first_chunk=first_chunk
        )

    def decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``[B, C, F, h, w]`` -> frames ``[B, F_pix, H, W, 3]`` uint8 (CPU)."""
        return to_uint8_frames(self.decode_chunk_float(latents))
