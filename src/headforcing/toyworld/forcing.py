"""The diffusion-forcing objective: the transformer and the text encoder with the loss of one
batch, on the true past, on the model's own one-step reconstruction of it (self-context), or
on its own rollout through a KV cache (:mod:`headforcing.toyworld.train`)."""

from __future__ import annotations

import torch
from torch import nn

from headforcing.cache import KVCache, make_policy
from headforcing.model import (
    DenseAttention,
    TextContext,
    WanModel,
    block_causal_mask,
    get_preset,
)
from headforcing.sampling import FlowSchedule, generate_chunks
from headforcing.toyworld.codec import SPATIAL_STRIDE
from headforcing.toyworld.text import ToyTextEncoder
from headforcing.toyworld.train_config import CHUNK_FRAMES, PRESET
from headforcing.toyworld.train_data import (
    Batch,
    own_past_layout,
)


class DiffusionForcing(nn.Module):
    """The transformer and the text encoder with the diffusion-forcing loss of one batch."""

    def __init__(self, model: WanModel, text_encoder: ToyTextEncoder, clip_frames: int) -> None:
        super().__init__()
        self.model = model
        self.text_encoder = text_encoder
        config = model.config
        self.chunk_frames = CHUNK_FRAMES
        latent_size = get_preset(PRESET).video.height // SPATIAL_STRIDE
        self.grid = (latent_size // config.patch_size[1], latent_size // config.patch_size[2])
        self.mask = block_causal_mask(clip_frames, CHUNK_FRAMES)
        self.positions = torch.arange(clip_frames)
        self.own_past_positions, self.own_past_mask = own_past_layout(clip_frames, CHUNK_FRAMES)

    def loss(
        self,
        batch: Batch,
        sigmas: torch.Tensor,
        noise: torch.Tensor,
        context_levels: torch.Tensor | None = None,
        refine: tuple[float, torch.Tensor] | None = None,
        own_input: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """noise: ``[B, C, F, h, w]``; sigmas: ``[B, chunks]`` -> weighted MSE on v (scalar).

        ``context_levels [B, chunks]`` (:func:`self_context_levels`): clean chunks with a level
        above 0 are replaced by the model's one-step reconstruction from that level first;
        ``refine = (level, fresh noise)`` adds a second step from that level.
        ``own_input = (levels [B, chunks], noise)`` (:func:`own_input_levels`): noisy chunks
        with a level above 0 are noised from the model's x0 prediction from that level (made
        with that noise) instead of from the truth; their target is the v that leads back to
        the truth, ``(noisy - x0) / sigma``. ``mask``: the frame mask ``[F, F]`` of this batch
        (:func:`sink_only_mask`; block-causal by default).
        """
        latents = batch.latents
        context = self.model.encode_text(self.text_encoder.encode(batch.prompts))
        mask = self.mask if mask is None else mask
        attention = DenseAttention(self.model.rope, self.positions, *self.grid, mask)
        if context_levels is None:
            context_levels = torch.zeros_like(sigmas)
        own_levels = own_input[0] if own_input is not None else torch.zeros_like(sigmas)
        if bool((context_levels > 0).any()) or bool((own_levels > 0).any()):
            latents = self._own_context(
                latents, sigmas, noise, context_levels, context, attention, refine, own_input
            )
        sigma_frames = self._per_frame(sigmas, latents.shape[2])  # [B, F]
        sigma_b = sigma_frames[:, None, :, None, None]
        noisy = (1 - sigma_b) * latents + sigma_b * noise
        flow = self.model(noisy, sigma_frames * 1000, context, attention)
        target = noise - batch.latents
        own_b = self._per_frame(own_levels > 0, latents.shape[2])[:, None, :, None, None]
        if bool(own_b.any()):
            back = (noisy - batch.latents) / sigma_b.clamp(min=1e-6)
            target = torch.where(own_b, back, target)
        error = ((flow - target).pow(2) * batch.weights).mean(dim=(1, 3, 4))  # [B, F]
        weight = (sigma_frames > 0).float()
        return (error * weight).sum() / weight.sum().clamp(min=1)

    def loss_on_own_past(
        self, batch: Batch, past: torch.Tensor, sigmas: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """The loss of a rollout stage: every noisy chunk of the truth is denoised from the
        clean ``past [B, C, F, h, w]`` of the chunks before it (:func:`own_past_layout`); the
        flow-matching target and the weights are :meth:`loss`'s. Chunks at level 0 (a
        random-start clip's first) carry no loss."""
        latents = batch.latents
        frames = latents.shape[2]
        context = self.model.encode_text(self.text_encoder.encode(batch.prompts))
        attention = DenseAttention(
            self.model.rope, self.own_past_positions, *self.grid, self.own_past_mask
        )
        sigma_frames = self._per_frame(sigmas, frames)  # [B, F]
        sigma_b = sigma_frames[:, None, :, None, None]
        noisy = (1 - sigma_b) * latents + sigma_b * noise
        timesteps = torch.cat([torch.zeros_like(sigma_frames), sigma_frames], dim=1) * 1000
        flow = self.model(torch.cat([past, noisy], dim=2), timesteps, context, attention)
        error = ((flow[:, :, frames:] - (noise - latents)).pow(2) * batch.weights).mean(
            dim=(1, 3, 4)
        )
        weight = (sigma_frames > 0).float()
        return (error * weight).sum() / weight.sum().clamp(min=1)

    @torch.no_grad()
    def rollout(
        self, prompts: list[str], num_frames: int, steps: int, generator: torch.Generator
    ) -> torch.Tensor:
        """The model's own videos of ``prompts``, latents ``[B, C, F, h, w]``, generated as at
        inference: chunk by chunk through a full KV cache (each chunk's commit pass writes
        its K/V), with the toy sampler's shift at ``steps`` even steps; noise from
        ``generator``."""
        video = get_preset(PRESET).video
        config = self.model.config
        cache = KVCache(
            make_policy("full"),
            config,
            *self.grid,
            self.chunk_frames,
            video.trained_frames,
            batch=len(prompts),
            head_order=self.model.head_order,
        )
        schedule = FlowSchedule(
            tuple(round(1000 * (steps - i) / steps) for i in range(steps)), video.sampler_shift
        )
        latent_size = video.height // SPATIAL_STRIDE
        shape = (config.in_channels, latent_size, latent_size)
        context = self.model.encode_text(self.text_encoder.encode(prompts))
        chunks = generate_chunks(
            self.model, cache, context, num_frames, shape, generator, schedule, len(prompts)
        )
        return torch.cat([chunk.latents for chunk in chunks], dim=2)

    def _per_frame(self, per_chunk: torch.Tensor, frames: int) -> torch.Tensor:
        return per_chunk.repeat_interleave(self.chunk_frames, dim=1)[:, :frames]

    @torch.no_grad()
    def _own_context(
        self,
        latents: torch.Tensor,
        sigmas: torch.Tensor,
        noise: torch.Tensor,
        context_levels: torch.Tensor,
        context: TextContext,
        attention: DenseAttention,
        refine: tuple[float, torch.Tensor] | None = None,
        own_input: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``latents`` with the chosen chunks replaced by the model's x0 prediction, all from
        one model call: clean chunks with a context level above 0 from that level (a clean
        chunk's ``noise`` is otherwise unused, so it is reused here) and, with ``own_input =
        (levels, noise)``, noisy chunks with a level above 0 from that level and that noise;
        the other chunks are noised as in the loss pass. With ``refine = (level, noise)`` the
        context chunks' prediction is re-noised to ``level`` and predicted again (the noisy
        chunks keep their first prediction)."""
        frames = latents.shape[2]
        own_levels, own_noise = own_input or (torch.zeros_like(sigmas), noise)
        chosen = self._per_frame(context_levels > 0, frames)  # [B, F]
        own = self._per_frame(own_levels > 0, frames)
        per_chunk = torch.where(
            context_levels > 0, context_levels, torch.where(own_levels > 0, own_levels, sigmas)
        )
        levels = self._per_frame(per_chunk, frames)
        level_b = levels[:, None, :, None, None]
        chosen_b, own_b = chosen[:, None, :, None, None], own[:, None, :, None, None]
        noisy = (1 - level_b) * latents + level_b * torch.where(own_b, own_noise, noise)
        x0 = noisy - level_b * self.model(noisy, levels * 1000, context, attention)
        first = x0
        if refine is not None and bool(chosen.any()):
            level, fresh = refine
            noisy = torch.where(chosen_b, (1 - level) * x0 + level * fresh, noisy)
            levels = torch.where(chosen, torch.full_like(levels, level), levels)
            level_b = levels[:, None, :, None, None]
            x0 = noisy - level_b * self.model(noisy, levels * 1000, context, attention)
        return torch.where(chosen_b, x0, torch.where(own_b, first, latents))
