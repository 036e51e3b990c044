"""``data.on_error``: what an unreadable record does to a run.

``raise`` (default) stops with one line naming the split, the file or shard and the record.
``skip`` drops the record, appends it to a JSON-lines report (``data_errors.jsonl`` in the
workdir) and counts it; the run stops once more than ``data.max_error_fraction`` of the records a
reading process has tried failed, so a dataset that is mostly broken is not trained on quietly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from jaxdl.data.records import SPLIT_NAMES, DataSplits, Record, RecordError, RecordSource
from jaxdl.data.views import describe_record, source_labels
from jaxdl.errors import ConfigError, DataError

ON_ERROR_MODES = ("raise", "skip")
ERROR_REPORT = "data_errors.jsonl"
# Below this many attempts a failure fraction is noise; the check waits (unless the whole
# source has been tried, which also ends a loader that would otherwise find no record).
_MIN_ATTEMPTS = 100


def check_on_error(on_error: str, max_error_fraction: float) -> None:
    if on_error not in ON_ERROR_MODES:
        raise ConfigError(f"data.on_error must be one of {list(ON_ERROR_MODES)}, got {on_error!r}")
    if not 0.0 <= max_error_fraction < 1.0:
        raise ConfigError(f"data.max_error_fraction must be in [0, 1), got {max_error_fraction!r}")


class GuardedSource:
    """``source`` with ``on_error`` applied: ``RecordError`` becomes a one-line ``DataError``
    (``raise``) or ``None`` plus a report line (``skip``; grain drops ``None`` records)."""

    def __init__(
        self,
        source: RecordSource,
        split: str,
        on_error: str = "raise",
        max_error_fraction: float = 0.01,
        report_path: str | Path | None = None,
    ):
        check_on_error(on_error, max_error_fraction)
        self.source, self.split = source, split
        self.on_error, self.max_error_fraction = on_error, float(max_error_fraction)
        self.report_path = None if report_path is None else str(report_path)
        self.labels = source_labels(source)
        self.attempts = self.failures = 0

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Record | None:
        self.attempts += 1
        try:
            return self.source[index]
        except RecordError as error:
            if self.on_error == "raise":
                raise DataError(
                    f"{self.split} split: {error} (set data.on_error='skip' to skip such records)"
                ) from None
            self.failures += 1
            self._report(index, error)
            self._check_fraction()
            return None

    def _report(self, index: int, error: RecordError) -> None:
        if self.report_path is None:
            return
        line = json.dumps({"split": self.split, "index": int(index), "error": str(error)})
        # One small O_APPEND write per line: lines from grain workers do not interleave.
        fd = os.open(self.report_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    def _check_fraction(self) -> None:
        tried_enough = self.attempts >= min(_MIN_ATTEMPTS, len(self.source))
        if tried_enough and self.failures > self.max_error_fraction * self.attempts:
            raise DataError(
                f"{self.split} split: {self.failures} of {self.attempts} records read were "
                f"unreadable, more than data.max_error_fraction={self.max_error_fraction}"
                + (f"; see {self.report_path}" if self.report_path else "")
            )

    def describe(self, index: int) -> str:
        return describe_record(self.source, index)

    def example_lengths(self):
        """The wrapped source's ``example_lengths()`` (for length bucketing)."""
        lengths = getattr(self.source, "example_lengths", None)
        if lengths is None:
            raise ValueError(
                f"data.length_buckets: the {self.split} split ({type(self.source).__name__}) does "
                "not know its examples' lengths"
            )
        return lengths()

    def __repr__(self) -> str:
        # The policy is not part of the data: a resumed run may switch raise <-> skip.
        return repr(self.source)


def read_error_report(path: str | Path) -> dict[str, int]:
    """Distinct unreadable records per split in a ``data_errors.jsonl`` report."""
    seen: dict[str, set[int]] = {}
    if not os.path.exists(path):
        return {}
    with open(path) as handle:
        for line in handle:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            seen.setdefault(entry["split"], set()).add(int(entry["index"]))
    return {split: len(indices) for split, indices in seen.items()}


def guard_splits(
    data: DataSplits, on_error: str, max_error_fraction: float, report_path: str | Path | None
) -> DataSplits:
    """Every split of ``data`` behind a ``GuardedSource`` with one policy and report file."""
    guarded = {
        name: GuardedSource(data.get(name), name, on_error, max_error_fraction, report_path)
        for name in SPLIT_NAMES
    }
    return DataSplits(**guarded, info=data.info)
