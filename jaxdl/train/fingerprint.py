"""The training fingerprint: the resolved config fields that shape a run's trajectory.

Two runs with equal fingerprints train alike; a resume under a different one is refused unless the
user allows it (see ``Trainer.check_resume``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import ml_collections

# Config sections that shape the trained model (and so its checkpoints); the rest (logging,
# evaluation cadence, checkpoint retention, mesh layout, early stopping) can change on resume.
FINGERPRINT_SECTIONS = ("seed", "data", "task", "augment", "model", "optimizer", "schedule", "init")
# Fields of these sections that do not change what is computed.
FINGERPRINT_IGNORED = {"data": ("worker_count",)}


def training_fingerprint(
    config: ml_collections.ConfigDict, global_batch_size: int, total_steps: int
) -> dict[str, Any]:
    """A JSON-able dict of what shapes training; two runs with equal fingerprints train alike."""
    resolved = json.loads(config.to_json_best_effort())
    fields: dict[str, Any] = {}
    for section in FINGERPRINT_SECTIONS:
        value = resolved.get(section)
        if isinstance(value, dict):
            value = {
                k: v for k, v in value.items() if k not in FINGERPRINT_IGNORED.get(section, ())
            }
        if value is not None:
            fields[section] = value
    train = resolved.get("train", {})
    fields["train"] = {
        "global_batch_size": global_batch_size,
        "total_steps": total_steps,
        "microbatches": train.get("microbatches", 1),
    }
    return fields


def fingerprint_digest(fingerprint: dict[str, Any]) -> str:
    """A short stable hash of a fingerprint, for logs and checkpoint metadata."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
