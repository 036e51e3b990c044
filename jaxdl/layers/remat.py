"""Rematerialisation (activation checkpointing) policies selectable by name from a config."""

from __future__ import annotations

from typing import Any

import jax

REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")


def checkpoint_policy(name: str) -> Any:
    """The ``jax.checkpoint`` policy for a ``remat_policy`` name ('full' saves nothing: None)."""
    if name not in REMAT_POLICIES or name == "none":
        raise ValueError(f"remat policy must be one of {REMAT_POLICIES[1:]}, got {name!r}")
    return None if name == "full" else getattr(jax.checkpoint_policies, name)
