"""INT8 post-training quantisation of an ONNX export with onnxruntime's quantisation tools.

- ``dynamic``: int8 weights, activations quantised on the fly per batch (no calibration data);
  the usual choice for Transformers, whose activations vary widely between inputs.
- ``static``: int8 weights and activations in QDQ format, activation ranges calibrated on
  training examples (MinMax); the usual choice for CNNs.

The quantised model is a new export directory, its metadata naming the mode, the calibration
examples and how often its top-1 prediction agrees with the float32 model on them.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from jaxdl.errors import UserError
from jaxdl.export.artifact import (
    METADATA_FILENAME,
    load_exported,
    read_metadata,
    staged_directory,
)

MODES = ("dynamic", "static")


class _Batches:
    """onnxruntime's ``CalibrationDataReader`` protocol over a list of input batches."""

    def __init__(self, batches: list[Mapping[str, np.ndarray]]):
        self._batches: Iterator[Mapping[str, np.ndarray]] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {k: np.asarray(v) for k, v in batch.items()}


def quantize_export(
    export_dir: str,
    out_dir: str,
    mode: str,
    calibration: list[Mapping[str, np.ndarray]],
) -> dict[str, Any]:
    """Writes an int8 copy of the ONNX export ``export_dir`` to the new ``out_dir``;
    ``calibration`` (input batches, e.g. from the training split) calibrates static ranges and
    measures top-1 agreement with float32. Returns the new metadata."""
    if mode not in MODES:
        raise UserError(f"unknown quantisation mode {mode!r}; choose one of {list(MODES)}")
    meta = read_metadata(export_dir)
    if meta["format"] != "onnx":
        raise UserError(f"{export_dir} is a {meta['format']} export; quantisation needs onnx")
    if meta.get("quantization"):
        raise UserError(f"{export_dir} is already quantised ({meta['quantization']['mode']})")
    if not calibration:
        raise UserError("quantisation needs at least one calibration batch")
    with staged_directory(out_dir, "quantised export directory") as staging:
        return _write_quantized(export_dir, staging, meta, mode, calibration)


def _write_quantized(
    export_dir: str,
    out_dir: str,
    meta: dict[str, Any],
    mode: str,
    calibration: list[Mapping[str, np.ndarray]],
) -> dict[str, Any]:
    """``quantize_export``'s body, writing into the (staging) directory ``out_dir``."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source = os.path.join(export_dir, meta["graph"])
    target = os.path.join(out_dir, meta["graph"])
    prepared = os.path.join(out_dir, "preprocessed.onnx")
    # Graph folding and ONNX shape inference, as ORT advises; its symbolic shape inference
    # fails on the concatenations of portable max-pool padding, and is not needed.
    quant_pre_process(source, prepared, skip_symbolic_shape=True)
    if mode == "dynamic":
        # 7-bit weights (ORT's advice for CPUs without VNNI): AVX2-only x86 multiplies u8 x s8
        # pairs with int16 saturation, which full-range weights overflow -- on such a machine a
        # small Transformer's int8 logits were off by 0.31 of a 2.75 range, now within 0.1 of
        # it (tests/test_quantize.py). The export may run on either kind of CPU.
        quantize_dynamic(prepared, target, weight_type=QuantType.QInt8, reduce_range=True)
    else:
        quantize_static(
            prepared,
            target,
            _Batches(calibration),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
    os.remove(prepared)
    for name in os.listdir(export_dir):  # tokenizer and anything else beside the graph
        if name not in (meta["graph"], METADATA_FILENAME):
            shutil.copy2(os.path.join(export_dir, name), os.path.join(out_dir, name))
    quantized = {
        **meta,
        "quantization": {
            "mode": mode,
            "reduce_range": mode == "dynamic",
            "calibration_examples": int(sum(len(next(iter(b.values()))) for b in calibration)),
            "source": os.path.abspath(export_dir),
        },
    }
    with open(os.path.join(out_dir, METADATA_FILENAME), "w") as handle:
        json.dump(quantized, handle, indent=2)
    quantized["quantization"]["top1_agreement"] = top1_agreement(
        load_exported(export_dir), load_exported(out_dir), calibration
    )
    with open(os.path.join(out_dir, METADATA_FILENAME), "w") as handle:
        json.dump(quantized, handle, indent=2)
    return quantized


def _first_output(outputs: Mapping[str, np.ndarray]) -> np.ndarray:
    return outputs["logits"] if "logits" in outputs else next(iter(outputs.values()))


def top1_agreement(reference, candidate, batches: list[Mapping[str, np.ndarray]]) -> float:
    """Fraction of examples whose argmax output is the same under both runners."""
    same = total = 0
    for batch in batches:
        want = _first_output(reference(batch)).argmax(-1)
        got = _first_output(candidate(batch)).argmax(-1)
        same += int(np.sum(want == got))
        total += want.size
    return same / max(total, 1)


def graph_size_bytes(export_dir: str) -> int:
    """Bytes of the export's graph file (plus external-data files beside it)."""
    meta = read_metadata(export_dir)
    graph = os.path.join(export_dir, meta["graph"])
    extra = graph + ".data"
    return os.path.getsize(graph) + (os.path.getsize(extra) if os.path.exists(extra) else 0)


def median_latency_ms(runner, batch: Mapping[str, np.ndarray], repeats: int = 50) -> float:
    """Median wall time of ``runner(batch)`` after one warm-up call, in milliseconds."""
    runner(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runner(batch)
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))
