"""The training loop: epochs of jitted sharded steps, evaluation, early stopping, checkpoints, logs.

Side effects (I/O, logging, checkpoints) live here; the steps themselves are pure functions.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxdl.checkpoint import Checkpointer, abstract_like
from jaxdl.config import save_config
from jaxdl.data import ArrayDataset, iterate_eval_batches, make_train_loader
from jaxdl.loggers import MultiWriter, make_writers
from jaxdl.metrics import classification_report, plot_confusion_matrix, plot_learning_curves
from jaxdl.parallel import batch_sharding, is_main_process, shard_batch
from jaxdl.train.callbacks import EarlyStopping
from jaxdl.train.experiment import Experiment
from jaxdl.train.state import TrainState, count_params, create_sharded_train_state
from jaxdl.train.steps import ShardedStep, make_eval_step, make_train_step


class Trainer:
    """Runs one experiment in ``workdir``; resumes automatically from its latest checkpoint."""

    def __init__(self, experiment: Experiment, workdir: str, *, quiet: bool = False):
        self.exp = experiment
        self.config = experiment.config
        self.workdir = os.path.abspath(workdir)
        self.quiet = quiet or not is_main_process()
        os.makedirs(self.workdir, exist_ok=True)
        cfg = self.config
        sample = experiment.splits.train.inputs[:1]
        self.state, self.state_shardings = create_sharded_train_state(
            experiment.model,
            experiment.optimizer,
            jax.random.PRNGKey(int(cfg.get("seed", 0))),
            jax.ShapeDtypeStruct((experiment.global_batch_size, *sample.shape[1:]), np.float32),
            experiment.mesh,
            experiment.rules,
        )
        self.batch_sharding = batch_sharding(experiment.mesh, experiment.rules)
        self.train_step = ShardedStep(
            make_train_step(
                augment=experiment.augment,
                label_smoothing=float(cfg.train.get("label_smoothing", 0.0)),
                microbatches=int(cfg.train.get("microbatches", 1)),
            ),
            experiment.mesh,
            self.state_shardings,
            self.batch_sharding,
            returns_state=True,
            rules=experiment.rules,
        )
        self.eval_step = ShardedStep(
            make_eval_step(experiment.num_classes),
            experiment.mesh,
            self.state_shardings,
            self.batch_sharding,
            returns_state=False,
            rules=experiment.rules,
        )
        ckpt = cfg.get("checkpoint", {})
        self.checkpointer = Checkpointer(
            os.path.join(self.workdir),
            max_to_keep=int(ckpt.get("max_to_keep", 3)),
            async_save=bool(ckpt.get("async_save", True)),
        )
        es = cfg.get("early_stopping", {})
        self.early_stopping = EarlyStopping(
            monitor=es.get("monitor", "val_accuracy"),
            mode=es.get("mode", "max"),
            patience=es.get("patience", None),
            min_delta=float(es.get("min_delta", 0.0)),
        )
        self.restore_best = bool(es.get("restore_best", True))

    # ----------------------------------------------------------------------------------------
    def evaluate(self, dataset: ArrayDataset, state: TrainState | None = None) -> dict:
        """Loss, accuracy and classification report of ``state`` (default: current) on a split."""
        state = self.state if state is None else state
        batch_size = int(self.config.train.get("eval_batch_size", self.exp.global_batch_size))
        sums: dict[str, Any] = {}
        for local in iterate_eval_batches(
            dataset,
            batch_size=batch_size // jax.process_count(),
            shard_index=jax.process_index(),
            shard_count=jax.process_count(),
        ):
            out = self.eval_step(state, shard_batch(local, self.batch_sharding))
            sums = out if not sums else jax.tree.map(lambda a, b: a + b, sums, out)
        sums = jax.device_get(sums)
        count = max(float(sums["count"]), 1.0)
        report = classification_report(np.asarray(sums["confusion"]), dataset.class_names)
        return {"loss": float(sums["loss_sum"]) / count, "accuracy": report["accuracy"]} | {
            "report": report
        }

    def _train_epoch(self, epoch: int, iterator: Iterator, writer: MultiWriter) -> dict[str, float]:
        exp, cfg = self.exp, self.config
        log_every = int(cfg.get("logging", {}).get("every_steps", 10))
        bar = tqdm(
            total=exp.steps_per_epoch,
            desc=f"epoch {epoch}/{cfg.train.num_epochs}",
            disable=self.quiet,
            leave=False,
            dynamic_ncols=True,
        )
        loss_sum = acc_sum = 0.0
        pending: list[dict] = []
        window_start, window_examples = time.perf_counter(), 0
        for _ in range(exp.steps_per_epoch):
            batch = shard_batch(next(iterator), self.batch_sharding)
            self.state, metrics = self.train_step(self.state, batch)
            pending.append(metrics)
            window_examples += exp.global_batch_size
            step = int(self.state.step) if len(pending) >= log_every else None
            if step is None:
                continue
            # Fetching metrics synchronises with the device, so do it once per logging window.
            values = jax.device_get(pending)
            elapsed = time.perf_counter() - window_start
            loss = float(np.mean([v["loss"] for v in values]))
            acc = float(np.mean([v["accuracy"] for v in values]))
            loss_sum += loss * len(values)
            acc_sum += acc * len(values)
            throughput = window_examples / max(elapsed, 1e-9)
            record = {
                "step": step,
                "epoch": epoch,
                "split": "train",
                "loss": loss,
                "accuracy": acc,
                "grad_norm": float(np.mean([v["grad_norm"] for v in values])),
                "learning_rate": float(exp.schedule(step - 1)),
                "examples_per_sec": throughput,
            }
            writer.write(record)
            bar.update(len(values))
            bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.3f}", ex_s=f"{throughput:,.0f}")
            pending, window_start, window_examples = [], time.perf_counter(), 0
        if pending:
            values = jax.device_get(pending)
            loss_sum += float(np.sum([v["loss"] for v in values]))
            acc_sum += float(np.sum([v["accuracy"] for v in values]))
            bar.update(len(values))
        bar.close()
        return {
            "train_loss": loss_sum / exp.steps_per_epoch,
            "train_accuracy": acc_sum / exp.steps_per_epoch,
        }

    def fit(self) -> dict:
        """Trains to ``num_epochs`` (or early stop), then evaluates the best state on the test set.

        Writes config.json, metrics.jsonl, TensorBoard events, checkpoints, results.json and plots.
        """
        exp, cfg = self.exp, self.config
        if is_main_process():
            save_config(cfg, os.path.join(self.workdir, "config.json"))
        loader = make_train_loader(
            exp.splits.train,
            batch_size=exp.per_process_batch_size,
            seed=int(cfg.get("seed", 0)),
            shard_index=jax.process_index(),
            shard_count=jax.process_count(),
            worker_count=int(cfg.data.get("worker_count", 0)),
        )
        iterator = iter(loader)
        history: list[dict] = []
        start_epoch = 1
        if self.checkpointer.latest_step() is not None:
            self.state, loop = self.checkpointer.restore_latest(abstract_like(self.state), iterator)
            history = loop.get("history", [])
            start_epoch = int(loop.get("epoch", 0)) + 1
            self.early_stopping.load_state_dict(loop.get("early_stopping", {}))
            self._print(f"resumed from step {int(self.state.step)} (epoch {start_epoch - 1})")
        writer = make_writers(cfg.get("logging", {}), self.workdir, cfg.to_dict())
        self._print(
            f"{cfg.model.name}: {count_params(self.state.params):,} params | mesh "
            f"{dict(exp.mesh.shape)} | global batch {exp.global_batch_size} | "
            f"{exp.steps_per_epoch} steps/epoch"
        )
        stopped_early = False
        train_start = time.perf_counter()
        for epoch in range(start_epoch, int(cfg.train.num_epochs) + 1):
            epoch_start = time.perf_counter()
            train_metrics = self._train_epoch(epoch, iterator, writer)
            val = self.evaluate(exp.splits.val)
            epoch_seconds = time.perf_counter() - epoch_start
            record = {
                "epoch": epoch,
                **train_metrics,
                "val_loss": val["loss"],
                "val_accuracy": val["accuracy"],
                "val_f1_macro": val["report"]["f1_macro"],
                "learning_rate": float(exp.schedule(int(self.state.step) - 1)),
                "epoch_seconds": epoch_seconds,
            }
            history.append(record)
            writer.write(
                {
                    "step": int(self.state.step),
                    "epoch": epoch,
                    "split": "val",
                    "loss": val["loss"],
                    "accuracy": val["accuracy"],
                    "f1_macro": val["report"]["f1_macro"],
                    "train_loss": train_metrics["train_loss"],
                    "train_accuracy": train_metrics["train_accuracy"],
                    "learning_rate": record["learning_rate"],
                    "epoch_seconds": epoch_seconds,
                    "examples_per_sec": exp.steps_per_epoch * exp.global_batch_size / epoch_seconds,
                }
            )
            improved, stop = self.early_stopping.update(epoch, record)
            self._print(
                f"epoch {epoch:3d} | train loss {record['train_loss']:.4f} acc "
                f"{record['train_accuracy']:.4f} | val loss {val['loss']:.4f} acc "
                f"{val['accuracy']:.4f} | lr {record['learning_rate']:.2e} | "
                f"{epoch_seconds:.1f}s{' *' if improved else ''}"
            )
            loop_state = {
                "epoch": epoch,
                "history": history,
                "early_stopping": self.early_stopping.state_dict(),
            }
            self.checkpointer.save(
                int(self.state.step),
                self.state,
                data_iterator=iterator,
                loop_state=loop_state,
                is_best=improved,
            )
            if stop:
                stopped_early = True
                self._print(
                    f"early stopping: no {self.early_stopping.monitor} improvement for "
                    f"{self.early_stopping.epochs_without_improvement} epochs"
                )
                break
        train_seconds = time.perf_counter() - train_start
        self.checkpointer.wait()
        final_state = self.state
        if self.restore_best and self.checkpointer.best_step() is not None:
            final_state, _ = self.checkpointer.restore_best(abstract_like(self.state))
        test = self.evaluate(exp.splits.test, final_state)
        results = {
            "split": "test",
            "step": int(final_state.step),
            "best_epoch": self.early_stopping.best_epoch,
            f"best_{self.early_stopping.monitor}": self.early_stopping.best,
            "stopped_early": stopped_early,
            "train_seconds": train_seconds,
            "loss": test["loss"],
            **test["report"],
        }
        if is_main_process():
            self._write_outputs(results, history, "test")
            self._print_summary(results)
        writer.close()
        self.checkpointer.close()
        return results

    def evaluate_checkpoint(self, split: str = "test") -> dict:
        """Restores the best (else latest) checkpoint; evaluates ``split``; rewrites results."""
        self.checkpointer.wait()
        if self.checkpointer.best_step() is not None:
            state, _ = self.checkpointer.restore_best(abstract_like(self.state))
        else:
            state, _ = self.checkpointer.restore_latest(abstract_like(self.state))
        metrics = self.evaluate(self.exp.splits.get(split), state)
        results = {"split": split, "step": int(state.step), "loss": metrics["loss"]}
        results |= metrics["report"]
        if is_main_process():
            history = _epoch_history(os.path.join(self.workdir, "metrics.jsonl"))
            self._write_outputs(results, history, split)
            self._print_summary(results)
        self.checkpointer.close()
        return results

    # ----------------------------------------------------------------------------------------
    def _write_outputs(self, results: dict, history: list[dict], split: str) -> None:
        suffix = "" if split == "test" else f"_{split}"
        with open(os.path.join(self.workdir, f"results{suffix}.json"), "w") as handle:
            json.dump(results, handle, indent=2)
        plots = os.path.join(self.workdir, "plots")
        if history:
            plot_learning_curves(history, os.path.join(plots, "learning_curves.png"))
        plot_confusion_matrix(
            np.asarray(results["confusion_matrix"]),
            self.exp.splits.test.class_names,
            os.path.join(plots, f"confusion_matrix{suffix}.png"),
        )

    def _print(self, line: str) -> None:
        if not self.quiet:
            tqdm.write(line)

    def _print_summary(self, results: dict) -> None:
        rows = [
            ("split", results["split"]),
            ("step", results["step"]),
            ("loss", f"{results['loss']:.4f}"),
            ("accuracy", f"{results['accuracy']:.4f}"),
            ("precision (macro)", f"{results['precision_macro']:.4f}"),
            ("recall (macro)", f"{results['recall_macro']:.4f}"),
            ("f1 (macro)", f"{results['f1_macro']:.4f}"),
        ]
        if "train_seconds" in results:
            rows.append(("train time", f"{results['train_seconds']:.1f} s"))
            rows.append(("best epoch", results["best_epoch"]))
        width = max(len(name) for name, _ in rows)
        lines = ["-" * (width + 16)] + [f"{n:<{width}} | {v}" for n, v in rows]
        lines += ["-" * (width + 16), f"outputs in {self.workdir}"]
        self._print("\n".join(lines))


def _epoch_history(metrics_path: str) -> list[dict]:
    """Per-epoch learning-curve records rebuilt from ``metrics.jsonl`` (val records)."""
    if not os.path.isfile(metrics_path):
        return []
    by_epoch: dict[int, dict] = {}  # a resumed run may repeat an epoch: keep the last record
    with open(metrics_path) as handle:
        for line in handle:
            record = json.loads(line)
            if record.get("split") == "val":
                by_epoch[record["epoch"]] = {
                    "epoch": record["epoch"],
                    "train_loss": record.get("train_loss", math.nan),
                    "train_accuracy": record.get("train_accuracy", math.nan),
                    "val_loss": record["loss"],
                    "val_accuracy": record["accuracy"],
                }
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]
