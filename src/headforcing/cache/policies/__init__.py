"""The cache policies, by name."""

from __future__ import annotations

from headforcing.cache.policies.deep_forcing import DeepForcingPolicy
from headforcing.cache.policies.dummy_forcing import DummyForcingPolicy
from headforcing.cache.policies.full import FullPolicy
from headforcing.cache.policies.head_forcing import HeadForcingPolicy
from headforcing.cache.policies.infinity_rope import InfinityRopePolicy
from headforcing.cache.policies.pyramid_forcing import PyramidForcingPolicy
from headforcing.cache.policies.sink import SinkPolicy
from headforcing.cache.policies.window import WindowPolicy
from headforcing.cache.policy import CachePolicy

POLICIES: dict[str, type[CachePolicy]] = {
    policy.name: policy
    for policy in (
        FullPolicy,
        WindowPolicy,
        SinkPolicy,
        HeadForcingPolicy,
        DeepForcingPolicy,
        InfinityRopePolicy,
        DummyForcingPolicy,
        PyramidForcingPolicy,
    )
}


def make_policy(name: str, **params) -> CachePolicy:
    """Build a policy by name; ``params`` left as ``None`` take the policy's defaults."""
    try:
        policy_cls = POLICIES[name]
    except KeyError:
        valid = ", ".join(sorted(POLICIES))
        raise ValueError(f"unknown policy {name!r}; valid policies: {valid}") from None
    fields = policy_cls.__dataclass_fields__
    unknown = [key for key, value in params.items() if value is not None and key not in fields]
    if unknown:
        raise ValueError(f"policy {name!r} takes no parameter {', '.join(unknown)}")
    return policy_cls(**{key: value for key, value in params.items() if value is not None})


__all__ = [
    "POLICIES",
    "DeepForcingPolicy",
    "DummyForcingPolicy",
    "FullPolicy",
    "HeadForcingPolicy",
    "InfinityRopePolicy",
    "PyramidForcingPolicy",
    "SinkPolicy",
    "WindowPolicy",
    "make_policy",
]
