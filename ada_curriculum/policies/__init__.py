"""Policy families behind one interface (`base.Policy`): diffusion and causal transformer."""

from __future__ import annotations

import dataclasses

from ada_curriculum.policies.base import Policy

KINDS = ("diffusion", "transformer")


def config_class(kind: str):
    if kind == "diffusion":
        from ada_curriculum.policies.diffusion import DiffusionConfig

        return DiffusionConfig
    if kind == "transformer":
        from ada_curriculum.policies.transformer import TransformerConfig

        return TransformerConfig
    raise ValueError(f"policy: unknown kind {kind!r} (known: {', '.join(KINDS)})")


def make_policy(kind: str, config=None, **overrides) -> Policy:
    """A policy of `kind` from its config dataclass (or a dict of its fields) plus overrides."""
    cls = config_class(kind)
    if config is None:
        config = cls()
    elif isinstance(config, dict):
        config = cls(**config)
    if overrides:
        config = dataclasses.replace(config, **overrides)
    config.validate()
    from ada_curriculum.policies.obs import obs_dim

    if kind == "diffusion":
        from ada_curriculum.policies.diffusion import DiffusionPolicy

        return DiffusionPolicy(config, obs_dim=obs_dim(config.obs_frame))
    from ada_curriculum.policies.transformer import TransformerPolicy

    return TransformerPolicy(config, obs_dim=obs_dim(config.obs_frame))


__all__ = ["KINDS", "Policy", "config_class", "make_policy"]
