"""Starting a run from other weights: a jaxdl workdir or any Orbax checkpoint of a params tree.

``config.init`` names the source and which parameter subtrees to take; everything else keeps its
fresh initialisation. Fine-tuning a pretrained encoder with a new head, importing converted
torchvision weights and loading a distillation teacher all go through ``warm_start``.

Paths are ``/``-joined tree keys of the train state:
``params/encoder/layers/attention/query/kernel``,
``batch_stats/stem_norm/mean``. Patterns are shell-style (``fnmatch``): ``params/*`` takes all
parameters, ``params/head/*`` names the classifier head.

Token ids mean nothing without their tokenizer: when the trainer passes the run's data ``info``,
taking token-indexed parameters (``TOKEN_INDEXED``) from a ``from_workdir`` whose
``tokenizer.json`` differs from the run's tokenizer is refused (``check_tokenizer``).
"""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxdl.checkpoint import read_tree_metadata
from jaxdl.data.tokenizer_store import TOKENIZER_FILENAME, load_tokenizer, tokenizer_signature
from jaxdl.errors import ConfigError
from jaxdl.integrity import key_path_str

DEFAULT_TAKE = ("params/*", "batch_stats/*")
# Subtrees of the train state that can be taken from another run (optimiser state, step and rng
# always start fresh).
TRANSFERABLE = ("params", "batch_stats")
# Leaves indexed by token id: the embedding table, an untied LM head, the MLM output bias.
TOKEN_INDEXED = ("*token_embed/*", "*lm_head/*", "*mlm_bias")


def flatten_paths(tree: Any) -> dict[str, Any]:
    """``{'params/a/kernel': leaf, ...}`` for a nested tree of arrays/metadata."""
    return {key_path_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _matches(path: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns)


def resolve_source(init_config: Mapping[str, Any]) -> str | None:
    """The directory of the Orbax item to read weights from, or None when ``init`` names none.

    ``from_workdir``: that run's best checkpoint (else its latest; ``init.checkpoint`` = 'latest'
    forces the latest). ``from_checkpoint``: an Orbax checkpoint directory holding the state
    (a jaxdl step directory or its ``state`` item) or a plain params tree. Returned absolute:
    Orbax reads no tree metadata from a relative path.
    """
    workdir, checkpoint = init_config.get("from_workdir"), init_config.get("from_checkpoint")
    workdir = os.path.abspath(workdir) if workdir else workdir
    checkpoint = os.path.abspath(checkpoint) if checkpoint else checkpoint
    if workdir and checkpoint:
        raise ConfigError("set init.from_workdir or init.from_checkpoint, not both")
    if checkpoint:
        if not os.path.isdir(checkpoint):
            raise ConfigError(f"init.from_checkpoint: no checkpoint directory at {checkpoint}")
        state_dir = os.path.join(checkpoint, "state")
        return state_dir if os.path.isdir(state_dir) else checkpoint
    if not workdir:
        return None
    which = init_config.get("checkpoint") or "best"
    if which not in ("best", "latest"):
        raise ConfigError(f"init.checkpoint must be 'best' or 'latest', got {which!r}")
    candidates = ["best", "checkpoints"] if which == "best" else ["checkpoints"]
    for sub in candidates:
        directory = os.path.join(workdir, sub)
        steps = (
            [int(d) for d in os.listdir(directory) if d.isdigit()]
            if os.path.isdir(directory)
            else []
        )
        if steps:
            return os.path.join(directory, str(max(steps)), "state")
    raise ConfigError(f"init.from_workdir: no checkpoint in {workdir}")


def _describe(signature: Mapping[str, Any]) -> str:
    return (
        f"{signature['kind']} (vocab {signature['vocab_size']}, "
        f"fingerprint {str(signature['fingerprint'])[:12]})"
    )


def check_tokenizer(init_config: Mapping[str, Any], tokenizer: Any, taken: Sequence[str]) -> None:
    """Refuses token-indexed weights from a run with another tokenizer.

    When ``taken`` includes a ``TOKEN_INDEXED`` leaf (``params/token_embed/embedding``, an
    untied ``lm_head``, ``mlm_bias``) and ``init.from_workdir`` holds a ``tokenizer.json`` whose
    signature (kind, vocabulary size, fingerprint) differs from ``tokenizer``'s (the run's data
    tokenizer), each id would select another token's row: a ``ConfigError`` names both tokenizers
    and the source workdir. A mismatch is allowed when no such leaf is taken (the user put them
    in ``init.reinit`` or takes only other subtrees, e.g. ``params/encoder/*``): the encoder then
    learns new embeddings. When only one side has a tokenizer (an older source without
    ``tokenizer.json``, or data that records none) nothing can be compared: one warning. An
    unreadable or altered source ``tokenizer.json`` is ``load_tokenizer``'s ``DataError``.
    ``from_checkpoint`` sources carry no tokenizer and are not checked.
    """
    workdir = init_config.get("from_workdir")
    token_leaves = [path for path in taken if _matches(path, TOKEN_INDEXED)]
    if not hasattr(tokenizer, "to_json"):  # like the trainer, which saves only such tokenizers
        tokenizer = None
    if not workdir or not token_leaves:
        return
    path = os.path.join(workdir, TOKENIZER_FILENAME)
    source = load_tokenizer(path) if os.path.isfile(path) else None
    if source is None and tokenizer is None:
        return
    if source is None or tokenizer is None:
        logging.getLogger("jaxdl").warning(
            "init.from_workdir: %s; token ids are assumed to mean the same tokens in both runs",
            f"{workdir} has no {TOKENIZER_FILENAME}"
            if source is None
            else f"this run's data records no tokenizer to compare with {path}",
        )
        return
    ours, theirs = tokenizer_signature(tokenizer), tokenizer_signature(source)
    if ours != theirs:
        raise ConfigError(
            f"init.from_workdir: {workdir} was trained with tokenizer {_describe(theirs)} but this "
            f"run's data uses {_describe(ours)}: taking {token_leaves[0]} would give token ids "
            f"another vocabulary's embeddings (train with the source's {TOKENIZER_FILENAME}, or "
            f"add {', '.join(TOKEN_INDEXED)} to init.reinit to learn new ones)"
        )


def warm_start(
    state: Any,
    init_config: Mapping[str, Any],
    *,
    take: Sequence[str] | None = None,
    data_info: Mapping[str, Any] | None = None,
) -> tuple[Any, list[str]]:
    """Replaces the leaves of ``state`` chosen by ``init.take`` minus ``init.reinit`` with the
    source checkpoint's; returns the new state and the paths taken.

    Each taken leaf is read straight into the destination's sharding (Orbax partial restore), so
    no host holds the whole source. A chosen leaf missing from the source, or of another shape,
    is a ``ConfigError`` naming it; add it to ``init.reinit`` to keep it fresh. With
    ``data_info`` (the run's data ``info``), ``check_tokenizer`` compares its ``tokenizer`` with
    the source workdir's first, before any weight is read.
    """
    source = resolve_source(init_config)
    if source is None:
        return state, []
    take = tuple(take or init_config.get("take") or DEFAULT_TAKE)
    reinit = tuple(init_config.get("reinit") or ())
    checkpointer = ocp.PyTreeCheckpointer()
    try:
        metadata = read_tree_metadata(source)
    except (FileNotFoundError, ValueError, OSError) as error:
        raise ConfigError(f"init: cannot read checkpoint {source}: {error}") from None
    available = flatten_paths(metadata)
    destination = {
        name: getattr(state, name) for name in TRANSFERABLE if getattr(state, name, None)
    }
    chosen = {
        path: leaf
        for path, leaf in flatten_paths(destination).items()
        if _matches(path, take) and not _matches(path, reinit)
    }
    if not chosen:
        raise ConfigError(f"init.take {list(take)} (minus init.reinit) selects no parameter")
    if data_info is not None:
        check_tokenizer(init_config, data_info.get("tokenizer"), list(chosen))
    for path, leaf in chosen.items():
        if path not in available:
            raise ConfigError(
                f"init: {path} is not in {source} (add it to init.reinit to keep it fresh)"
            )
        if tuple(available[path].shape) != tuple(leaf.shape):
            raise ConfigError(
                f"init: {path} has shape {tuple(available[path].shape)} in the source but "
                f"{tuple(leaf.shape)} here (add it to init.reinit to keep it fresh)"
            )
    target = _nest(
        {
            path: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
            for path, leaf in chosen.items()
        }
    )
    restored = checkpointer.restore(
        source,
        args=ocp.args.PyTreeRestore(
            item=target,
            restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True,
        ),
    )
    values = flatten_paths(restored)
    updated = {}
    for name, subtree in destination.items():
        updated[name] = jax.tree_util.tree_map_with_path(
            lambda p, leaf, name=name: values.get(f"{name}/{key_path_str(p)}", leaf), subtree
        )
    return state.replace(**updated), sorted(chosen)


def _nest(flat: Mapping[str, Any]) -> dict:
    """``{'a/b': x}`` → ``{'a': {'b': x}}``."""
    nested: dict = {}
    for path, value in flat.items():
        node = nested
        *parents, last = path.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return nested
