#!/usr/bin/env python3
"""Stands in for ``python -m jaxdl train`` in the sweep runner's tests: parses the same argv,
writes the files a finished run leaves (metrics.jsonl, results.json) with a metric computed from
the overrides, and exits like jaxdl (0; 3 when --config.fail=1)."""

import json
import os
import sys

argv = sys.argv[1:]
assert argv[:3] == ["-m", "jaxdl", "train"], argv
workdir = argv[argv.index("--workdir") + 1]
overrides = dict(a[2:].split("=", 1) for a in argv if a.startswith("--config."))
if overrides.get("config.fail") == "1":
    sys.exit(3)
os.makedirs(workdir, exist_ok=True)
lr = float(overrides.get("config.optimizer.learning_rate", 0.1))
width = int(overrides.get("config.model.width", 8))
accuracy = 1.0 - abs(lr - 0.1) - 0.01 * (16 - width) / 8
with open(os.path.join(workdir, "metrics.jsonl"), "a") as handle:
    for step in (10, 20):
        handle.write(json.dumps({"step": step, "split": "val", "accuracy": accuracy}) + "\n")
with open(os.path.join(workdir, "calls.txt"), "a") as handle:
    handle.write(" ".join(argv) + "\n")
results = {"best_val_accuracy": accuracy, "accuracy": accuracy - 0.01}
results["val"] = {"loss": 1 - accuracy}
with open(os.path.join(workdir, "results.json"), "w") as handle:
    json.dump(results, handle)
