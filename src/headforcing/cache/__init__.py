"""KV cache and cache policies."""

from headforcing.cache.kv import KVCache
from headforcing.cache.memory import EpisodicMemory
from headforcing.cache.policies import POLICIES, make_policy
from headforcing.cache.policy import CachePolicy, Layout, Retention

__all__ = [
    "POLICIES",
    "CachePolicy",
    "EpisodicMemory",
    "KVCache",
    "Layout",
    "Retention",
    "make_policy",
]
