"""Our transformer against diffusers' independent WanTransformer3DModel."""

import dataclasses

import pytest
import torch

from headforcing.io.keymap import diffusers_to_wan
from headforcing.model import DenseAttention

from .conftest import random_model
from .reference import reference_2d_sincos

diffusers = pytest.importorskip("diffusers")


def diffusers_twin(config):
    reference = diffusers.WanTransformer3DModel(
        patch_size=config.patch_size,
        num_attention_heads=config.num_heads,
        attention_head_dim=config.head_dim,
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        text_dim=config.text_dim,
        freq_dim=config.freq_dim,
        ffn_dim=config.ffn_dim,
        num_layers=config.num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=config.eps,
    )
    return reference.eval()


@pytest.mark.parametrize("per_frame_t", [False, True])
def test_one_chunk_matches_diffusers(small_config, per_frame_t):
    reference = diffusers_twin(small_config)
    with torch.no_grad():
        for param in reference.parameters():
            param.copy_(torch.randn_like(param) / max(param.shape[-1], 1) ** 0.5)
    ours = random_model(small_config)
    ours.load_state_dict(diffusers_to_wan(reference.state_dict()), strict=True)

    frames, height, width = 3, 12, 16  # latent grid -> 6 x 8 tokens per frame
    latents = torch.randn(2, small_config.in_channels, frames, height, width)
    text = torch.randn(2, small_config.text_len, small_config.text_dim)
    if per_frame_t:
        timesteps = torch.tensor([[937.5, 625.0, 250.0], [1000.0, 0.0, 833.3]])
        tokens = (height // 2) * (width // 2)
        reference_t = timesteps.repeat_interleave(tokens, dim=1)  # diffusers: per token
    else:
        timesteps = torch.tensor([[833.3] * frames, [625.0] * frames])
        reference_t = timesteps[:, 0]

    with torch.no_grad():
        expected = reference(latents, reference_t, text, return_dict=False)[0]
        attention = DenseAttention(ours.rope, torch.arange(frames), height // 2, width // 2)
        actual = ours(latents, timesteps, ours.encode_text(text), attention)

    error = (actual - expected).abs().max() / expected.abs().max()
    assert error <= 1e-4, f"max relative error {error:.2e}"


def test_spatial_position_embedding_is_added_to_every_frames_tokens(small_config):
    """The toy preset's fixed 2D sin-cos position embedding against diffusers' Wan with DiT's
    table (written out in tests/reference.py) added to its patch embedding's output."""
    reference = diffusers_twin(small_config)
    with torch.no_grad():
        for param in reference.parameters():
            param.copy_(torch.randn_like(param) / max(param.shape[-1], 1) ** 0.5)
    ours = random_model(dataclasses.replace(small_config, spatial_pos_embed=True))
    ours.load_state_dict(diffusers_to_wan(reference.state_dict()), strict=True)  # no new weights

    frames, height, width = 3, 12, 16  # 6 x 8 tokens per frame
    table = reference_2d_sincos(small_config.dim, height // 2, width // 2)
    hook = reference.patch_embedding.register_forward_hook(
        lambda module, inputs, output: output + table[:, None]
    )
    latents = torch.randn(1, small_config.in_channels, frames, height, width)
    text = torch.randn(1, small_config.text_len, small_config.text_dim)
    timesteps = torch.tensor([[625.0] * frames])
    with torch.no_grad():
        expected = reference(latents, timesteps[:, 0], text, return_dict=False)[0]
        attention = DenseAttention(ours.rope, torch.arange(frames), height // 2, width // 2)
        actual = ours(latents, timesteps, ours.encode_text(text), attention)
        error = (actual - expected).abs().max() / expected.abs().max()
        assert error <= 1e-4, f"max relative error {error:.2e}"

        hook.remove()  # and it matters: without the table the outputs differ
        plain = reference(latents, timesteps[:, 0], text, return_dict=False)[0]
        assert (actual - plain).abs().max() > 100 * (actual - expected).abs().max()
