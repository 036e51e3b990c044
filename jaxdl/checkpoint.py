"""Orbax checkpointing: async, multi-host, keep-N latest plus the best by a metric, resumable.

Two ``CheckpointManager``s share a workdir: ``checkpoints/`` keeps the N latest (for resuming) and
``best/`` keeps the single best by the monitored metric (for evaluation and early stopping's
"restore best"). Keeping them apart means the latest checkpoint is never deleted for being worse.
Each checkpoint holds the train state, the grain iterator's position (one file per process, via
grain's Orbax handler) and a small JSON of loop state (epoch, early-stopping counters). The best
copy is resumable too: when every latest checkpoint is damaged (a corrupted disk while only one was
kept), the run resumes from the best one and replays from there instead of stopping.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging as absl_logging

from jaxdl.errors import NoGoodCheckpointError
from jaxdl.integrity import damaged_leaves, key_path_str, tree_checksums


def _warn(message: str) -> None:
    if jax.process_index() == 0:
        sys.stderr.write(f"jaxdl: warning: {message}\n")


def _manager(directory: str, max_to_keep: int, async_save: bool) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=True,
        enable_async_checkpointing=async_save,
        # Saves a kill interrupted leave *.orbax-checkpoint-tmp directories: removed at start.
        cleanup_tmp_directories=True,
        # Both managers may save the same step at once; distinct multi-host barrier names
        # ("checkpoints_..." vs "best_...") keep their barriers from colliding.
        multiprocessing_options=ocp.options.MultiprocessingOptions(
            barrier_sync_key_prefix=os.path.basename(directory)
        ),
    )
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


class Checkpointer:
    """Saves and restores train state, data-iterator position and loop state under ``workdir``."""

    def __init__(self, workdir: str, *, max_to_keep: int = 3, async_save: bool = True):
        self.latest = _manager(os.path.join(workdir, "checkpoints"), max_to_keep, async_save)
        self.best = _manager(os.path.join(workdir, "best"), 1, async_save)

    def save(
        self,
        step: int,
        state: Any,
        *,
        data_iterator: Any | None = None,
        loop_state: dict | None = None,
        is_best: bool = False,
    ) -> None:
        """Starts an (async) save of the latest checkpoint and, if ``is_best``, of the best one.

        The loop state gains ``checksums`` of every array (computed on device), checked again
        when the checkpoint is restored.
        """
        loop_state = {**(loop_state or {}), "checksums": tree_checksums(state)}
        items = _save_items(state, loop_state, data_iterator)
        self.latest.save(step, args=items, force=True)
        if is_best:
            if step in self.best.all_steps():  # left by a run killed before latest/step committed
                self.best.wait_until_finished()
                self.best.delete(step)
            self.best.save(step, args=items, force=True)

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def reconcile_best(
        self,
        resumed_step: int,
        best_step: int | None,
        state: Any,
        loop: dict,
        data_iterator: Any | None = None,
    ):
        """Makes ``best/`` agree with the resumed loop state after a kill between the two saves.

        Best checkpoints newer than ``resumed_step`` belong to a future the resumed run replays:
        they are dropped. If the loop's best is the resumed step itself but ``best/`` lacks it
        (killed before the best copy committed), it is saved from the restored state and
        ``data_iterator`` (rewound to that step), so it stays resumable.
        """
        for step in self.best.all_steps():
            if step > resumed_step:
                self.best.delete(step)
        if best_step == resumed_step and resumed_step not in self.best.all_steps():
            items = _save_items(state, {**loop, "checksums": tree_checksums(state)}, data_iterator)
            self.best.save(resumed_step, args=items, force=True)
            self.best.wait_until_finished()

    def resume_candidates(self) -> list[tuple[str, int]]:
        """``(kind, step)`` a resume may start from, in the order ``restore_latest`` tries them:
        the latest checkpoints newest first, then the best one if it holds the data position."""
        candidates = [("latest", s) for s in sorted(self.latest.all_steps(), reverse=True)]
        best = self._resumable_best_step()
        return candidates + ([("best", best)] if best is not None else [])

    def _resumable_best_step(self) -> int | None:
        """The best step if it can be resumed from (saved with the data iterator's position;
        best copies written before jaxdl saved it there cannot)."""
        step = self.best.latest_step()
        if step is None or not os.path.isdir(os.path.join(self.best.directory, str(step), "data")):
            return None
        return step

    def _manager_of(self, kind: str) -> ocp.CheckpointManager:
        return {"latest": self.latest, "best": self.best}[kind]

    def read_loop_state(self, step: int, kind: str = "latest") -> dict:
        """The loop-state JSON of checkpoint ``step`` (``kind``: 'latest' or 'best'), without
        touching the arrays."""
        restored = self._manager_of(kind).restore(
            step, args=ocp.args.Composite(loop=ocp.args.JsonRestore())
        )
        return dict(restored["loop"] or {})

    def state_shapes(
        self, step: int, kind: str = "latest"
    ) -> dict[str, tuple[tuple[int, ...], str]]:
        """``{'params/a/kernel': (shape, dtype)}`` of checkpoint ``step``'s train state (``kind``:
        'latest' or 'best'), read from metadata (to check a restore target before restoring)."""
        state_dir = os.path.join(self._manager_of(kind).directory, str(step), "state")
        tree = read_tree_metadata(state_dir)
        flat = jax.tree_util.tree_flatten_with_path(tree)[0]
        return {key_path_str(p): (tuple(m.shape), str(m.dtype)) for p, m in flat}

    def best_step(self) -> int | None:
        return self.best.latest_step()

    def restore_latest(
        self, abstract_state: Any, data_iterator: Any | None = None
    ) -> tuple[Any, dict]:
        """Restores the newest intact checkpoint onto ``abstract_state``'s shardings (any mesh)
        and, if given, rewinds ``data_iterator`` in place. Returns ``(state, loop_state)``.

        A checkpoint that cannot be read or fails its checksums is named in a warning, moved
        aside (``damaged-<step>``) and the previous one is tried; when none is intact, the best
        checkpoint (if it holds the data position); ``NoGoodCheckpointError`` when nothing is.
        """
        try:
            return self._restore_newest_intact(self.latest, abstract_state, data_iterator)
        except (NoGoodCheckpointError, FileNotFoundError):
            # FileNotFoundError: a run killed after setting the last damaged one aside.
            step = self._resumable_best_step() if data_iterator is not None else None
            if step is None:
                raise
            _warn(f"no intact latest checkpoint; resuming from the best one (step {step})")
        try:
            return self._restore_newest_intact(self.best, abstract_state, data_iterator)
        except NoGoodCheckpointError:
            raise NoGoodCheckpointError(
                f"no intact checkpoint in {self.latest.directory} or {self.best.directory}"
            ) from None

    def restore_best(self, abstract_state: Any) -> tuple[Any, dict]:
        """Restores the best checkpoint (the latest intact one if the best is damaged)."""
        if self.best.latest_step() is None:
            raise FileNotFoundError(f"no best checkpoint in {self.best.directory}")
        try:
            return self._restore_newest_intact(self.best, abstract_state, None)
        except NoGoodCheckpointError:
            _warn("no intact best checkpoint; using the latest intact checkpoint instead")
            return self.restore_latest(abstract_state)

    def _restore_newest_intact(self, manager, abstract_state, data_iterator):
        steps = sorted(manager.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {manager.directory}")
        for step in steps:
            try:
                # A damaged step makes Orbax log its read errors with tracebacks; the warning
                # below names the step and the first line of the error instead.
                with _orbax_quiet(absl_logging.FATAL):
                    return self._restore(manager, step, abstract_state, data_iterator)
            except Exception as error:  # noqa: BLE001 - any read failure means "damaged"
                # Orbax's reader threads of a failed read report into a closed event loop for a
                # moment longer; let them finish before speaking, so our lines stay whole.
                time.sleep(1.0)
                reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
                _warn(f"checkpoint {manager.directory}/{step} is damaged ({reason[:200]})")
                self._set_aside(manager, step)
        raise NoGoodCheckpointError(f"no intact checkpoint in {manager.directory}")

    @staticmethod
    def _set_aside(manager, step: int) -> None:
        """Renames a damaged step to ``damaged-<step>`` so it is neither retried nor in the way
        of a later save of the same step."""
        if jax.process_index() == 0:
            directory = os.fspath(manager.directory)
            os.replace(
                os.path.join(directory, str(step)), os.path.join(directory, f"damaged-{step}")
            )
        manager.reload()

    @staticmethod
    def _restore(manager, step, abstract_state, data_iterator):
        items = {
            "state": ocp.args.StandardRestore(abstract_state),
            "loop": ocp.args.JsonRestore(),
        }
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = manager.restore(step, args=ocp.args.Composite(**items))
        loop = dict(restored["loop"] or {})
        damaged = damaged_leaves(restored["state"], loop.pop("checksums", {}))
        if damaged:
            raise ValueError(f"checksum mismatch in {', '.join(damaged[:3])}")
        return restored["state"], loop

    def wait(self) -> None:
        """Blocks until pending async saves are durable (call before exiting or evaluating)."""
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self.latest.close()
        self.best.close()


def _save_items(state: Any, loop_state: dict, data_iterator: Any | None) -> ocp.args.Composite:
    """What every checkpoint (latest or best) holds: state, loop JSON and the data position."""
    items = {"state": ocp.args.StandardSave(state), "loop": ocp.args.JsonSave(loop_state)}
    if data_iterator is not None:
        items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    return ocp.args.Composite(**items)


@contextlib.contextmanager
def _orbax_quiet(level: int = absl_logging.ERROR):
    """Silences Orbax's absl log lines below ``level`` (jaxdl reports the outcome itself)."""
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(level)
    try:
        yield
    finally:
        absl_logging.set_verbosity(verbosity)


def read_tree_metadata(directory: str) -> Any:
    """The tree of array metadata (shape, dtype) of an Orbax PyTree item, read without arrays.

    Orbax logs a warning when the item sits inside a step directory (its step-level metadata
    file is one level up); that is expected here, so the warning is silenced.
    """
    with _orbax_quiet():
        return ocp.PyTreeCheckpointer().metadata(directory).item_metadata.tree


def tree_shapes(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{'params/a/kernel': (shape, dtype)}`` of a state or abstract state (same keys as
    ``Checkpointer.state_shapes``)."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {key_path_str(p): (tuple(x.shape), str(x.dtype)) for p, x in flat}


def abstract_like(state: Any) -> Any:
    """ShapeDtypeStructs (with the live arrays' shardings) to restore a checkpoint into."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )
