"""The base models ``--model`` names, one documented config each.

A base is a public set of weights of the Self-Forcing family on Wan2.1-T2V-1.3B: where its
checkpoint lives and in which layout (:mod:`headforcing.io.checkpoints`), which of its state
dicts its authors' inference loads, the few-step sampler it was distilled for, its chunk size,
and what a run without further options uses: the cache policy, the parameters of each policy
it has its own values for, and the switch mode. Facts from the bases' public code and configs
(REFERENCE.md sections 2, 3 and 3.1b); the table is in docs/real-models.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from headforcing.cache.policies import POLICIES, SinkPolicy, WindowPolicy, make_policy
from headforcing.cache.policy import CachePolicy
from headforcing.io.checkpoints import CHECKPOINT_KINDS
from headforcing.sampling import FlowSchedule

# The sampler Self-Forcing distilled for: [1000, 750, 500, 250] warped through the shift-5 table
SELF_FORCING_SAMPLER = FlowSchedule((1000, 750, 500, 250), 5.0)

# what a run uses for a policy the base has no values of its own for: relative positions keep
# every kept frame inside the trained range (docs/design.md, "positions")
DEFAULT_POSITIONS = "relative"


@dataclass(frozen=True)
class BaseModel:
    """One base's weights and the inference its authors run.

    Parameters
    ----------
    name:
        ``--model``.
    checkpoint_kind:
        The reader of :data:`headforcing.io.checkpoints.CHECKPOINT_KINDS`.
    repository, checkpoint:
        Where the weights are published and the file (or folder) in it.
    sampler:
        The few-step schedule (steps on the 1000-step scale and the shift that warps them).
    chunk_frames, trained_frames:
        Latent frames per chunk (``num_frame_per_block``) and of the training clips.
    policy:
        ``--policy`` by default.
    policy_defaults:
        Policies with this base's own parameters (positions included): a run of one of them
        starts from these values; every other policy from its own defaults with relative
        positions.
    switch:
        ``--switch`` by default; ``None``: the policy's.
    source:
        Where these facts were read.
    """

    name: str
    checkpoint_kind: str
    repository: str
    checkpoint: str
    sampler: FlowSchedule = SELF_FORCING_SAMPLER
    chunk_frames: int = 3
    trained_frames: int = 21
    policy: str = "window"
    policy_defaults: tuple[CachePolicy, ...] = ()
    switch: str | None = None
    source: str = ""

    def __post_init__(self) -> None:
        names = [policy.name for policy in self.policy_defaults]
        if len(set(names)) != len(names):
            raise ValueError(f"base {self.name!r}: one default per policy, got {names}")
        if self.policy not in POLICIES:
            raise ValueError(f"base {self.name!r}: unknown default policy {self.policy!r}")

    @property
    def use_ema(self) -> bool:
        """Whether the authors' inference loads ``generator_ema`` (else ``generator``)."""
        return CHECKPOINT_KINDS[self.checkpoint_kind].ema_default

    def defaults_of(self, policy: str) -> CachePolicy | None:
        """The base's own values of ``policy``, if it has some."""
        return next((p for p in self.policy_defaults if p.name == policy), None)


BASES: dict[str, BaseModel] = {
    base.name: base
    for base in (
        BaseModel(
            "self-forcing",
            checkpoint_kind="self-forcing",
            repository="gdhe17/Self-Forcing",
            checkpoint="checkpoints/self_forcing_dmd.pt",
            policy_defaults=(WindowPolicy(window_frames=21, positions=DEFAULT_POSITIONS),),
            source="guandeh17/Self-Forcing: README (--use_ema), configs/self_forcing_dmd.yaml",
        ),
        BaseModel(
            "causal-forcing",
            checkpoint_kind="causal-forcing",
            repository="zhuhz22/Causal-Forcing",
            checkpoint="chunkwise/causal_forcing.pt",
            policy_defaults=(WindowPolicy(window_frames=21, positions=DEFAULT_POSITIONS),),
            source="thu-ml/Causal-Forcing: inference.py, configs/causal_forcing_dmd_chunkwise.yaml "
            "(the chunk-wise README command loads 'generator', no --use_ema)",
        ),
        BaseModel(
            "longlive",
            checkpoint_kind="longlive",
            repository="Efficient-Large-Model/LongLive-1.3B",
            checkpoint="models/longlive_base.pt + models/lora.pt",
            policy="sink",
            # local_attn_size 12 frames attended (sink and chunk included), sink_size 3, RoPE
            # at each frame's own index: LongLive's inference exactly
            policy_defaults=(
                SinkPolicy(window_frames=12, sink_frames=3, positions="absolute"),
                WindowPolicy(window_frames=12, positions="absolute"),
            ),
            switch="recache",
            source="NVlabs/LongLive 1.x: configs/longlive_inference.yaml and "
            "longlive_interactive_inference.yaml (use_ema false, global_sink true)",
        ),
        BaseModel(
            "causvid",
            checkpoint_kind="causvid",
            repository="tianweiy/CausVid",
            checkpoint="autoregressive_checkpoint/model.pt",
            # denoising_step_list [1000, 757, 522, 0], the 0 dropped at inference, not warped:
            # sigma = t / 1000 (shift 1 here; CausVid's shift-8 table lookup is within 3e-4)
            sampler=FlowSchedule((1000, 757, 522), 1.0),
            policy_defaults=(WindowPolicy(window_frames=21, positions=DEFAULT_POSITIONS),),
            source="tianweiy/CausVid: configs/wan_causal_dmd.yaml, causvid/models/wan/"
            "causal_inference.py (a 21-frame KV cache, num_frame_per_block 3)",
        ),
        BaseModel(
            "diffusers",
            checkpoint_kind="diffusers",
            repository="a diffusers WanTransformer3DModel folder of a causal model",
            checkpoint="transformer/",
            policy_defaults=(WindowPolicy(window_frames=21, positions=DEFAULT_POSITIONS),),
            source="Self-Forcing's sampler and chunking (the folder names no base of its own)",
        ),
    )
}


def get_base(name: str) -> BaseModel:
    """The base ``--model name``, with an error that lists the valid names."""
    try:
        return BASES[name]
    except KeyError:
        valid = ", ".join(BASES)
        raise ValueError(f"unknown --model {name!r}; valid models: {valid}") from None


def base_policy(base: BaseModel | None, name: str | None, **params) -> CachePolicy:
    """Policy ``name`` (default: the base's, else ``window``) with ``params`` given as not
    ``None``; the rest from the base's values of that policy, else the policy's own defaults
    with relative positions."""
    name = name or (base.policy if base is not None else "window")
    given = {key: value for key, value in params.items() if value is not None}
    template = base.defaults_of(name) if base is not None else None
    if template is None:
        given.setdefault("positions", DEFAULT_POSITIONS)
        return make_policy(name, **given)
    fields = {field.name: getattr(template, field.name) for field in dataclasses.fields(template)}
    return make_policy(name, **{**fields, **given})
