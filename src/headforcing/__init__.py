"""headforcing: minute-long autoregressive video diffusion with a KV cache per head type.

The public API (docs/api.md). Names load on first use, so ``import headforcing`` stays light
and the command line can set OpenMP's wait policy before torch loads::

    import headforcing as hf

    pipe = hf.Pipeline.with_standins("tiny")  # random weights: mechanics, not pictures
    video = pipe.generate("a lighthouse", latent_frames=12, policy=hf.Window(21), seed=0)
    video.frames.shape                          # (frames, height, width, 3), uint8

Policies are dataclasses (``hf.HeadForcing(local_frames=6)``, ``hf.Window(21)``); a policy of
your own subclasses ``hf.UniformPolicy`` or ``hf.CachePolicy`` and registers itself with
``hf.register_policy`` (docs/api.md, "Writing a policy").
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> (module, attribute)
_EXPORTS = {
    # pipelines and what they make
    "Pipeline": ("headforcing.pipeline", "Pipeline"),
    "load_pipeline": ("headforcing.loading", "load_pipeline"),
    "Video": ("headforcing.pipeline", "Video"),
    "VideoChunk": ("headforcing.pipeline", "VideoChunk"),
    "PromptSchedule": ("headforcing.schedule", "PromptSchedule"),
    "PromptSegment": ("headforcing.schedule", "PromptSegment"),
    # the cache and what a policy is made of
    "KVCache": ("headforcing.cache.kv", "KVCache"),
    "CachePolicy": ("headforcing.cache.policy", "CachePolicy"),
    "UniformPolicy": ("headforcing.cache.policy", "UniformPolicy"),
    "HeadMapPolicy": ("headforcing.cache.policy", "HeadMapPolicy"),
    "Retention": ("headforcing.cache.policy", "Retention"),
    "HeadGroupSpec": ("headforcing.cache.policy", "HeadGroupSpec"),
    "EpisodicMemory": ("headforcing.cache.memory", "EpisodicMemory"),
    "FrameMemory": ("headforcing.cache.frame_memory", "FrameMemory"),
    "PatchMemory": ("headforcing.cache.patch_memory", "PatchMemory"),
    "TokenPoolMemory": ("headforcing.cache.token_pool", "TokenPoolMemory"),
    # the policies, by class and by short name
    "POLICIES": ("headforcing.cache.policies", "POLICIES"),
    "make_policy": ("headforcing.cache.policies", "make_policy"),
    "policy_class": ("headforcing.cache.policies", "policy_class"),
    "register_policy": ("headforcing.cache.policies", "register_policy"),
    "Full": ("headforcing.cache.policies", "FullPolicy"),
    "Window": ("headforcing.cache.policies", "WindowPolicy"),
    "Sink": ("headforcing.cache.policies", "SinkPolicy"),
    "HeadForcing": ("headforcing.cache.policies", "HeadForcingPolicy"),
    "DeepForcing": ("headforcing.cache.policies", "DeepForcingPolicy"),
    "InfinityRope": ("headforcing.cache.policies", "InfinityRopePolicy"),
    "DummyForcing": ("headforcing.cache.policies", "DummyForcingPolicy"),
    "PyramidForcing": ("headforcing.cache.policies", "PyramidForcingPolicy"),
    # heads: maps, profiling, recall
    "HeadMap": ("headforcing.heads.headmap", "HeadMap"),
    "profile_heads": ("headforcing.heads.profile", "profile_heads"),
    "measure_recall": ("headforcing.heads.recall", "measure_recall"),
    # long-video measures of any MP4
    "evaluate": ("headforcing.eval.report", "evaluate_file"),
    # testing a policy against dense attention
    "check_policy": ("headforcing.testing", "check_policy"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    try:
        module, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'headforcing' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
