"""The cache policies, by name."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path

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


# the entry-point group through which an installed package offers its policies by name
ENTRY_POINTS = "headforcing.policies"


def register_policy(policy_cls: type[CachePolicy]) -> type[CachePolicy]:
    """Make a policy class available by its ``name`` (usable as a class decorator): to
    ``make_policy``, the CLI's ``--policy`` and every command that takes one."""
    if not (isinstance(policy_cls, type) and issubclass(policy_cls, CachePolicy)):
        raise ValueError(f"{policy_cls!r} is not a headforcing.CachePolicy subclass")
    if not hasattr(policy_cls, "__dataclass_fields__"):
        raise ValueError(f"policy {policy_cls.__name__} must be a @dataclass")
    name = getattr(policy_cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"policy {policy_cls.__name__} needs a class attribute name = '...'")
    known = POLICIES.get(name)
    if known is not None and known is not policy_cls:
        raise ValueError(f"a policy named {name!r} exists already ({known.__module__})")
    POLICIES[name] = policy_cls
    return policy_cls


def _load(reference: str) -> type[CachePolicy]:
    """``module:Class`` or ``path/to/file.py:Class``: import it and register the class."""
    where, _, attribute = reference.rpartition(":")
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise ValueError(f"--policy {reference}: no file {path}")
            spec = importlib.util.spec_from_file_location(f"headforcing_user.{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # dataclasses look their module up
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except ImportError as error:
        raise ValueError(f"--policy {reference}: cannot import {where} ({error})") from None
    policy_cls = getattr(module, attribute, None)
    if policy_cls is None:
        raise ValueError(f"--policy {reference}: {where} has no {attribute}")
    known = isinstance(policy_cls, type) and issubclass(policy_cls, CachePolicy)
    if known and POLICIES.get(policy_cls.name) is policy_cls:
        return policy_cls
    return register_policy(policy_cls)


def policy_class(name: str) -> type[CachePolicy]:
    """The policy class ``name`` names: a registered name, ``module:Class``,
    ``path/to/file.py:Class``, or a name an installed package offers through the
    ``headforcing.policies`` entry points."""
    if name in POLICIES:
        return POLICIES[name]
    if ":" in name:
        return _load(name)
    for entry in importlib.metadata.entry_points(group=ENTRY_POINTS):
        if entry.name == name:
            return register_policy(entry.load())
    valid = ", ".join(sorted(POLICIES))
    raise ValueError(
        f"unknown policy {name!r}; valid policies: {valid}, or your own as module:Class or "
        "file.py:Class (docs/api.md)"
    )


def make_policy(name: str, **params) -> CachePolicy:
    """Build a policy by name (see :func:`policy_class`); ``params`` left as ``None`` take the
    policy's defaults."""
    policy_cls = policy_class(name)
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
    "policy_class",
    "register_policy",
]
