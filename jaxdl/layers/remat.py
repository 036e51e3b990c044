"""Rematerialisation (activation checkpointing) policies selectable by name from a config."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from jaxdl.parallel.gradients import save_all_but_gathers

REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")
# Not a config choice: what a block uses for 'none' inside a data-parallel manual region, where
# its FSDP parameter shards are gathered on use (keep everything but the gathered weights).
REGATHER = "regather"


def checkpoint_policy(name: str) -> Any:
    """The ``jax.checkpoint`` policy for a ``remat_policy`` name ('full' saves nothing: None)."""
    if name == REGATHER:
        return save_all_but_gathers
    if name not in REMAT_POLICIES or name == "none":
        raise ValueError(f"remat policy must be one of {REMAT_POLICIES[1:]}, got {name!r}")
    return None if name == "full" else getattr(jax.checkpoint_policies, name)


def _call_with_positional_train(block: nn.Module, *args: Any) -> Any:
    """``block(*inputs, train=train)`` for ``args = (*inputs, train)``.

    ``jax.checkpoint`` traces keyword arguments, and ``static_argnums`` can only name positional
    ones, so the Python bool ``train`` is moved to the end of the positional arguments here.
    """
    *inputs, train = args
    return block(*inputs, train=train)


def remat_call(
    block: nn.Module, *inputs: Any, train: bool, policy: str, prevent_cse: bool = True
) -> Any:
    """Call ``block(*inputs, train=train)`` under ``nn.remat`` with the named ``policy``.

    ``block`` is a (named) submodule created in the caller's compact method; its parameters stay
    where an un-rematted call would put them, and ``train`` is a static argument. ``inputs``
    are positional (arrays or None). ``prevent_cse=False`` is only safe inside ``nn.scan``.
    """
    rematted = nn.remat(
        _call_with_positional_train,
        policy=checkpoint_policy(policy),
        prevent_cse=prevent_cse,
        # Index 0 is the module itself, then the inputs, then train.
        static_argnums=(len(inputs) + 1,),
    )
    return rematted(block, *inputs, train)
