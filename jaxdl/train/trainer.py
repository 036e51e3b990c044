"""The trainer: resume safety, the step loop with its callbacks, and the final evaluation.

Side effects (I/O, logging, checkpoints) live here and in the callbacks; the steps are pure.
"""

from __future__ import annotations

import datetime
import filecmp
import json
import math
import os
import uuid
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from jaxdl.checkpoint import Checkpointer, abstract_like, tree_shapes
from jaxdl.config import MISSING, config_diff, save_config
from jaxdl.data.pipeline import iterate_eval_batches, make_train_loader
from jaxdl.data.record_errors import ERROR_REPORT, guard_splits, read_error_report
from jaxdl.data.records import RecordSource
from jaxdl.data.text_cleaning import save_report
from jaxdl.data.tokenizer_store import save_tokenizer
from jaxdl.errors import (
    DivergedError,
    InterruptedRun,
    JaxdlExit,
    NoGoodCheckpointError,
    UserError,
)
from jaxdl.loggers import make_writers
from jaxdl.metrics import plot_learning_curves
from jaxdl.parallel import is_main_process, shard_batch
from jaxdl.train.callbacks import (
    Checkpointing,
    DivergenceGuard,
    EarlyStopper,
    EarlyStopping,
    Evaluator,
    InterruptCallback,
    Profiler,
    TrainLogger,
    scalar_metrics,
)
from jaxdl.train.fingerprint import fingerprint_digest
from jaxdl.train.interrupts import InterruptHandler
from jaxdl.train.loop import NonfinitePolicy, TrainLoop
from jaxdl.train.state import TrainState, count_params
from jaxdl.train.steps import eval_forward
from jaxdl.train.warm_start import warm_start
from jaxdl.train.workdir_lock import WorkdirLock

if TYPE_CHECKING:
    from jaxdl.experiment import Experiment

# results.json keys only a training run writes (with best_* and val*), kept by re-evaluation.
TRAINING_FACTS = ("stopped_early", "train_seconds", "rollbacks", "lr_scale", "skipped_records")


class ConfigChangedError(UserError):
    """A workdir's checkpoints were trained with a config that shapes training differently."""


def _describe(changes: dict[str, tuple], limit: int = 4) -> str:
    parts = [f"{path}: {old!r} -> {new!r}" for path, (old, new) in list(changes.items())[:limit]]
    more = len(changes) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


class Trainer:
    """Runs one experiment in ``workdir``; resumes automatically from its latest checkpoint.

    A resume whose training-shaping config (``Experiment.fingerprint``) differs from the
    checkpoint's stops with ``ConfigChangedError`` before anything is written, unless
    ``allow_config_change``; then the state's structure must still match, and the change is
    appended to ``config_changes.jsonl``. Making a trainer takes the workdir's lock
    (``WorkdirLockedError`` if another live run holds it).
    """

    def __init__(
        self,
        experiment: Experiment,
        workdir: str,
        *,
        quiet: bool = False,
        allow_config_change: bool = False,
    ):
        self.exp = experiment
        self.config = experiment.config
        self.task = experiment.task
        self.workdir = os.path.abspath(workdir)
        self.quiet = quiet or not is_main_process()
        self.allow_config_change = allow_config_change
        self.nonfinite = NonfinitePolicy.from_config(self.config.train)
        os.makedirs(self.workdir, exist_ok=True)
        # Taken before the checkpoint managers exist: opening them cleans up interrupted saves,
        # which must never touch the in-flight saves of another live run.
        self._lock = WorkdirLock(self.workdir) if is_main_process() else None
        if self._lock is not None:
            self._lock.acquire()
        ckpt = self.config.get("checkpoint", {})
        self.checkpointer = Checkpointer(
            self.workdir,
            max_to_keep=int(ckpt.get("max_to_keep", 3)),
            async_save=bool(ckpt.get("async_save", True)),
        )
        monitor, mode = self.task.default_monitor
        es = self.config.get("early_stopping", {})
        self.early_stopping = EarlyStopping.from_config(
            es, monitor=monitor, mode=mode, steps_per_epoch=experiment.steps_per_epoch
        )
        self.restore_best = bool(es.get("restore_best", True))
        self._data_iterator = None
        data_config = self.config.data
        self.error_report = os.path.join(self.workdir, ERROR_REPORT)
        self.splits = guard_splits(
            experiment.data,
            on_error=data_config.get("on_error", "raise"),
            max_error_fraction=float(data_config.get("max_error_fraction", 0.01)),
            report_path=self.error_report,
        )
        self.state: TrainState = experiment.initialize(jax.random.PRNGKey(experiment.seed))
        self.train_step = experiment.train_step
        self.eval_step = experiment.eval_step

    # ----------------------------------------------------------------------------------------
    def evaluate(self, source: RecordSource, state: TrainState | None = None) -> dict[str, Any]:
        """The task's metrics of ``state`` (default: current) on a split, summed over all
        batches and hosts."""
        state = self.state if state is None else state
        outputs = []
        for local in iterate_eval_batches(
            source,
            batch_size=self.exp.eval_batch_size // jax.process_count(),
            spec=self.task.batch_spec(),
            shard_index=jax.process_index(),
            shard_count=jax.process_count(),
        ):
            outputs.append(self.eval_step(state, shard_batch(local, self.exp.batch_sharding)))
        # Summed on the host in float64: float32 sums stop counting exactly past 2**24 tokens.
        host = jax.device_get(outputs)
        sums = jax.tree.map(lambda *xs: np.sum(np.asarray(xs, np.float64), axis=0), *host)
        return self.task.summarize(sums)

    def _newest_readable_checkpoint(self) -> tuple[str, int | None, dict | None]:
        """The newest resume candidate (kind, step) whose loop state and metadata read back, and
        its saved fingerprint; damaged ones are left for ``restore_latest`` to name and set
        aside."""
        candidates = self.checkpointer.resume_candidates()
        for kind, step in candidates:
            try:
                loop = self.checkpointer.read_loop_state(step, kind)
                self.checkpointer.state_shapes(step, kind)
            except Exception:  # noqa: BLE001 - unreadable: damaged, judged at restore
                continue
            return kind, step, loop.get("fingerprint")
        if candidates:
            raise NoGoodCheckpointError(f"no readable checkpoint in {self.workdir}/checkpoints")
        return "latest", None, None

    def check_resume(self) -> int | None:
        """The step to resume from (None: fresh run), after the fingerprint and structure checks.

        Raises ``ConfigChangedError`` on a changed fingerprint without ``allow_config_change``,
        and ``UserError`` when the state's structure changed (a resume is then impossible).
        """
        kind, step, saved = self._newest_readable_checkpoint()
        if step is None:
            return None
        changes = config_diff(saved, self.exp.fingerprint()) if saved is not None else {}
        if changes and not self.allow_config_change:
            raise ConfigChangedError(
                f"{self.workdir} was trained with a different config ({_describe(changes)}); "
                "use a new --workdir, or pass --allow-config-change to resume anyway"
            )
        saved_shapes = self.checkpointer.state_shapes(step, kind)
        wanted = tree_shapes(self.exp.abstract_state)
        mismatched = {
            path: (saved_shapes.get(path), shape)
            for path, shape in wanted.items()
            if saved_shapes.get(path) != shape
        }
        mismatched |= {
            path: (shape, None) for path, shape in saved_shapes.items() if path not in wanted
        }
        if mismatched:
            raise UserError(
                f"cannot resume {self.workdir}: the train state's structure changed "
                f"({_describe(mismatched)}); use a new --workdir"
            )
        if changes and is_main_process():
            record = {
                "step": step,
                "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "changes": {path: [_jsonable(o), _jsonable(n)] for path, (o, n) in changes.items()},
            }
            with open(os.path.join(self.workdir, "config_changes.jsonl"), "a") as handle:
                handle.write(json.dumps(record) + "\n")
        return step

    def _run_info(self) -> dict[str, Any]:
        """``run.json``: the W&B run id (kept so a resumed run continues the same W&B run)."""
        path = os.path.join(self.workdir, "run.json")
        if os.path.isfile(path):
            with open(path) as handle:
                return json.load(handle)
        wandb_config = self.config.get("logging", {}).get("wandb", {}) or {}
        run_id = wandb_config.get("run_id")
        if not run_id and wandb_config.get("mode", "disabled") != "disabled":
            run_id = uuid.uuid4().hex[:8]  # W&B's id format: 8 lowercase alphanumerics
        return {"wandb_run_id": run_id}

    def _writers(self):
        info = self._run_info()
        logging_config = ml_collections.ConfigDict(self.config.get("logging", {}).to_dict())
        if "wandb" in logging_config and info.get("wandb_run_id"):
            with logging_config.unlocked():
                logging_config.wandb.run_id = info["wandb_run_id"]
        if is_main_process():
            with open(os.path.join(self.workdir, "run.json"), "w") as handle:
                json.dump(info, handle)
        return make_writers(logging_config, self.workdir, self.config.to_dict())

    def _callbacks(self, writer, interrupts: InterruptHandler) -> list:
        exp, cfg = self.exp, self.config
        train_cfg, log_cfg = cfg.train, cfg.get("logging", {})
        eval_every = int(train_cfg.get("eval_every_steps") or exp.steps_per_epoch)
        stopper = EarlyStopper(self.early_stopping, self._print)
        checkpoint_every = cfg.get("checkpoint", {}).get("every_steps")
        log_every = int(log_cfg.get("every_steps", 10))
        guard = DivergenceGuard(
            check_every=(log_every, eval_every, checkpoint_every),
            limit=self.nonfinite.consecutive_limit,
            print_line=self._print,
        )
        callbacks = [
            TrainLogger(
                writer,
                every_steps=log_every,
                schedule=exp.schedule,
                units_per_step=self.task.throughput(exp.global_batch_size),
                unit=self.task.throughput_unit,
                period_steps=eval_every,
                quiet=self.quiet,
            ),
            guard,
            InterruptCallback(interrupts),
            Evaluator(
                lambda state: self.evaluate(self.splits.val, state),
                writer,
                every_steps=eval_every,
                schedule=exp.schedule,
                print_line=self._print,
            ),
            stopper,
            Checkpointing(
                self.checkpointer,
                every_steps=checkpoint_every,
                stopper=stopper,
                guard=guard,
                save_initial=self.nonfinite.mode == "rollback",
            ),
        ]
        profile = log_cfg.get("profile_steps")
        if profile:
            start, stop = (int(s) for s in profile)
            callbacks.append(Profiler(os.path.join(self.workdir, "profile"), start, stop))
        return callbacks

    def fit(self) -> dict:
        """Trains to ``train.num_steps``/``num_epochs`` (or an early stop), then evaluates the
        best state on the test split.

        Writes config.json, metrics.jsonl, TensorBoard events, checkpoints, results.json, plots.
        The workdir's lock, taken when the trainer was made, is released at the end.
        SIGTERM/SIGINT save at the next step boundary and raise ``InterruptedRun``; a non-finite
        loss stops before anything non-finite is saved and raises ``DivergedError``.
        """
        with InterruptHandler() as interrupts:
            try:
                return self._fit(interrupts)
            except NoGoodCheckpointError:
                raise  # failed reads may still be in flight: closing Orbax now only adds noise
            except JaxdlExit:
                self.checkpointer.close()  # lets Orbax's background writers finish
                raise
            finally:
                if self._data_iterator is not None:
                    self._data_iterator.close()  # stops grain's worker processes cleanly
                self.release()

    def release(self) -> None:
        """Gives the workdir's lock back (done by ``fit`` and ``evaluate_checkpoint``)."""
        if self._lock is not None:
            self._lock.release()

    def _fit(self, interrupts: InterruptHandler) -> dict:
        exp, cfg = self.exp, self.config
        resume_step = self.check_resume()
        fingerprint = exp.fingerprint()
        if is_main_process():
            _save_config_keeping_history(cfg, self.workdir, resume_step)
            _save_data_artifacts(exp.data.info, self.workdir)
            with open(os.path.join(self.workdir, "fingerprint.json"), "w") as handle:
                json.dump(
                    {"digest": fingerprint_digest(fingerprint), "fields": fingerprint},
                    handle,
                    indent=2,
                )
        loader = make_train_loader(
            self.splits.train,
            batch_size=exp.per_process_batch_size,
            seed=exp.seed,
            spec=self.task.batch_spec(),
            shard_index=jax.process_index(),
            shard_count=jax.process_count(),
            worker_count=int(cfg.data.get("worker_count", 0)),
            length_buckets=int(cfg.data.get("length_buckets", 0)),
        )
        iterator = self._data_iterator = iter(loader)
        loop_state: dict = {}
        if resume_step is not None:
            self.state, loop_state = self.checkpointer.restore_latest(
                abstract_like(self.state), iterator
            )
            best_step = loop_state.get("callbacks", {}).get("EarlyStopper", {}).get("best_step")
            self.checkpointer.reconcile_best(
                int(self.state.step), best_step, self.state, loop_state, iterator
            )
            self._print(f"resumed from step {int(self.state.step)}")
        else:
            # data_info: token embeddings from a run with another tokenizer are refused.
            self.state, taken = warm_start(
                self.state, cfg.get("init", {}) or {}, data_info=exp.data.info
            )
            if taken:
                self._print(f"initialised {len(taken)} arrays from {_init_source(cfg)}")
        if is_main_process():
            resumed_at = int(self.state.step) if resume_step is not None else 0
            _truncate_log(os.path.join(self.workdir, "metrics.jsonl"), resumed_at)
        writer = self._writers()
        callbacks = self._callbacks(writer, interrupts)
        loop = TrainLoop(
            state=self.state,
            train_step=self.train_step,
            iterator=iterator,
            batch_sharding=exp.batch_sharding,
            total_steps=exp.total_steps,
            steps_per_epoch=exp.steps_per_epoch,
            callbacks=callbacks,
            extra_state={"fingerprint": fingerprint},
        )
        loop.load_loop_state(loop_state)
        self._print(
            f"{cfg.model.name} ({self.task.name}): {count_params(self.state.params):,} params | "
            f"mesh {dict(exp.mesh.shape)} | global batch {exp.global_batch_size} | "
            f"{exp.steps_per_epoch} steps/epoch, {exp.total_steps} steps"
        )
        self.state = loop.run()
        while (
            loop.diverged is not None
            and loop.interrupted is None
            and self.nonfinite.mode == "rollback"
            and loop.rollbacks < self.nonfinite.max_rollbacks
        ):
            loop, callbacks, writer = self._roll_back(loop, writer, interrupts)
            self.state = loop.run()
        if loop.diverged is not None or loop.interrupted is not None:
            writer.close()
            self.checkpointer.close()
            latest = self.checkpointer.latest_step()
            if loop.diverged is not None:
                kept = f"step {latest}" if latest is not None else "none"
                gave_up = (
                    f" after {loop.rollbacks} rollback(s) (learning rate x{loop.lr_scale:g})"
                    if self.nonfinite.mode == "rollback"
                    else ""
                )
                raise DivergedError(
                    f"{loop.stop_reason}{gave_up}; the last finite checkpoint ({kept}) is kept in "
                    f"{self.workdir}; lower optimizer.learning_rate or set "
                    "optimizer.clip_global_norm"
                )
            raise InterruptedRun(
                f"{loop.interrupted}: saved step {latest} in {self.workdir}; run the same command "
                "again to resume"
            )
        final_state = self.state
        if self.restore_best and self.checkpointer.best_step() is not None:
            final_state, _ = self.checkpointer.restore_best(abstract_like(self.state))
        evaluator = next(cb for cb in callbacks if isinstance(cb, Evaluator))
        val = self.evaluate(self.splits.val, final_state)
        results = {
            "split": "test",
            "step": int(final_state.step),
            "best_step": self.early_stopping.best_step,
            f"best_{self.early_stopping.monitor}": self.early_stopping.best,
            "stopped_early": loop.stop_reason is not None,
            "train_seconds": loop.elapsed(),
            **self.evaluate(self.splits.test, final_state),
            "val": scalar_metrics(val),
            **{f"val_{k}": v for k, v in scalar_metrics(val).items()},
        }
        results |= self._task_report("test", final_state)
        if loop.rollbacks:
            results |= {"rollbacks": loop.rollbacks, "lr_scale": loop.lr_scale}
        skipped = read_error_report(self.error_report)
        if skipped:
            results["skipped_records"] = skipped
        if is_main_process():
            self._write_outputs(results, evaluator.history, "test")
            self._print_summary(results)
        writer.close()
        self.checkpointer.close()
        return results

    def _roll_back(
        self, loop: TrainLoop, writer: Any, interrupts: InterruptHandler
    ) -> tuple[TrainLoop, list, Any]:
        """After a divergence: the last finite checkpoint restored (data iterator rewound, log
        cut back to its step) with the learning rate times ``train.rollback_lr_factor``; returns
        the loop that continues from it, with fresh callbacks and writer."""
        writer.close()
        state, loop_state = self.checkpointer.restore_latest(
            abstract_like(loop.state), loop.iterator
        )
        step = int(state.step)
        if is_main_process():
            _truncate_log(os.path.join(self.workdir, "metrics.jsonl"), step)
        writer = self._writers()
        callbacks = self._callbacks(writer, interrupts)
        restarted = loop.restarted(state, callbacks, loop_state)
        restarted.lr_scale = loop.lr_scale * self.nonfinite.rollback_lr_factor
        restarted.rollbacks = loop.rollbacks + 1
        self._print(
            f"{loop.stop_reason}: rolled back to step {step} with the learning rate "
            f"x{restarted.lr_scale:g} (rollback {restarted.rollbacks} of "
            f"{self.nonfinite.max_rollbacks})"
        )
        return restarted, callbacks, writer

    def evaluate_checkpoint(self, split: str = "test") -> dict:
        """Restores the best (else latest) checkpoint; evaluates ``split``; rewrites results."""
        try:
            return self._evaluate_checkpoint(split)
        finally:
            self.release()

    def _evaluate_checkpoint(self, split: str) -> dict:
        self.checkpointer.wait()
        if self.checkpointer.best_step() is not None:
            state, _ = self.checkpointer.restore_best(abstract_like(self.state))
        elif self.checkpointer.latest_step() is not None:
            state, _ = self.checkpointer.restore_latest(abstract_like(self.state))
        else:
            raise UserError(f"no checkpoint in {self.workdir}")
        results = {"split": split, "step": int(state.step)}
        results |= self.evaluate(self.splits.get(split), state)
        results |= self._task_report(split, state)
        results = self._training_facts(split) | results
        if is_main_process():
            history = _eval_history(os.path.join(self.workdir, "metrics.jsonl"))
            self._write_outputs(results, history, split)
            self._print_summary(results)
        self.checkpointer.close()
        return results

    def _training_facts(self, split: str) -> dict[str, Any]:
        """What the training run recorded in ``results.json`` that an evaluation cannot
        recompute (train time, best step, validation metrics, rollbacks, skipped records), so
        re-evaluating the test split (e.g. with another decoder) keeps it; {} otherwise."""
        path = os.path.join(self.workdir, "results.json")
        if split != "test" or not os.path.isfile(path):
            return {}
        try:
            with open(path) as handle:
                previous = json.load(handle)
        except (OSError, ValueError):  # unreadable: the new results.json starts afresh
            return {}
        return {
            key: value
            for key, value in previous.items()
            if key in TRAINING_FACTS or key.startswith(("best_", "val"))
        }

    def _task_report(self, split: str, state: TrainState) -> dict[str, Any]:
        """The task's per-example report of ``split`` (e.g. CTC's transcripts) from its
        ``report_outputs``, when it has one; single-process runs only (it reads the whole split
        on one host)."""
        report = getattr(self.task, "report", None)
        if report is None or jax.process_count() > 1:
            return {}
        task, rules = self.task, (("batch", None), *self.exp.rules)
        jitted = jax.jit(lambda state, batch: task.report_outputs(eval_forward(state), batch))

        def outputs(batch: dict[str, np.ndarray]) -> Any:
            with jax.set_mesh(self.exp.mesh), nn.logical_axis_rules(rules):
                return jax.device_get(jitted(state, batch))

        suffix = "" if split == "test" else f"_{split}"
        path = os.path.join(self.workdir, f"transcripts{suffix}.jsonl")
        return report(outputs, self.exp.data.get(split), self.exp.eval_batch_size, path)

    # ----------------------------------------------------------------------------------------
    def _write_outputs(self, results: dict, history: list[dict], split: str) -> None:
        suffix = "" if split == "test" else f"_{split}"
        with open(os.path.join(self.workdir, f"results{suffix}.json"), "w") as handle:
            json.dump(_jsonable(results), handle, indent=2)
        plots = os.path.join(self.workdir, "plots")
        if history:
            plot_learning_curves(history, os.path.join(plots, "learning_curves.png"))
        self.task.write_plots(results, plots, suffix)

    def _print(self, line: str) -> None:
        if not self.quiet:
            tqdm.write(line)

    def _print_summary(self, results: dict) -> None:
        rows = [("split", str(results["split"])), ("step", str(results["step"]))]
        rows += self.task.summary_rows(results)
        if results.get("skipped_records"):
            counts = ", ".join(f"{k} {v}" for k, v in results["skipped_records"].items())
            rows.append(("skipped records", f"{counts} (see {ERROR_REPORT})"))
        if "train_seconds" in results:
            rows.append(("train time", f"{results['train_seconds']:.1f} s"))
            rows.append(("best step", str(results["best_step"])))
        width = max(len(name) for name, _ in rows)
        lines = ["-" * (width + 16)] + [f"{n:<{width}} | {v}" for n, v in rows]
        lines += ["-" * (width + 16), f"outputs in {self.workdir}"]
        self._print("\n".join(lines))


def _init_source(config: ml_collections.ConfigDict) -> str:
    init = config.get("init", {}) or {}
    return str(init.get("from_workdir") or init.get("from_checkpoint"))


def _jsonable(value: Any) -> Any:
    """Plain JSON values: NumPy scalars/arrays converted, non-finite floats as None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if value is MISSING:
        return str(MISSING)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _save_config_keeping_history(
    config: ml_collections.ConfigDict, workdir: str, resumed_step: int | None
) -> None:
    """Writes ``config.json`` atomically. On a resume with another config, the previous one is
    first kept as ``config.<step>.json`` (the step it trained to), so every config a checkpoint
    was trained with stays on disk."""
    path = os.path.join(workdir, "config.json")
    tmp = path + ".tmp"
    save_config(config, tmp)
    previous = os.path.join(workdir, f"config.{resumed_step}.json")
    if (
        resumed_step is not None
        and os.path.isfile(path)
        and not os.path.exists(previous)
        and not filecmp.cmp(path, tmp, shallow=False)
    ):
        os.replace(path, previous)
    os.replace(tmp, path)


def _save_data_artifacts(info: dict[str, Any], workdir: str) -> None:
    """The fitted tokenizer (``tokenizer.json``, reloaded for evaluation, export and serving)
    and the data cleaning report (``cleaning_report.json``), when the loader made them."""
    tokenizer = info.get("tokenizer")
    if tokenizer is not None and hasattr(tokenizer, "to_json"):
        save_tokenizer(tokenizer, workdir)
    if info.get("cleaning_report"):
        save_report(info["cleaning_report"], workdir)


def _truncate_log(metrics_path: str, step: int) -> None:
    """Drops records after ``step`` (those of steps a resumed run replays), so the log holds each
    step once; a fresh run (``step`` 0) starts an empty log."""
    if not os.path.isfile(metrics_path):
        return
    with open(metrics_path) as handle:
        lines = handle.readlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        if int(record.get("step", 0)) <= step:
            kept.append(json.dumps(record) + "\n")
    tmp = metrics_path + ".tmp"
    with open(tmp, "w") as handle:
        handle.writelines(kept)
    os.replace(tmp, metrics_path)


def _eval_history(metrics_path: str) -> list[dict]:
    """Learning-curve records rebuilt from ``metrics.jsonl``'s validation records."""
    if not os.path.isfile(metrics_path):
        return []
    by_step: dict[int, dict] = {}  # a resumed run may repeat a step: keep the last record
    with open(metrics_path) as handle:
        for line in handle:
            record = json.loads(line)
            if record.get("split") == "val":
                by_step[record["step"]] = {
                    "epoch": record.get("epoch", record["step"]),
                    "train_loss": record.get("train_loss", math.nan),
                    "train_accuracy": record.get("train_accuracy", math.nan),
                    "val_loss": record.get("loss", math.nan),
                    "val_accuracy": record.get("accuracy", math.nan),
                }
    return [by_step[step] for step in sorted(by_step)]
