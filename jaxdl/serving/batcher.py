"""Dynamic micro-batching: concurrent requests merged into one call of a jitted function.

Requests wait in a bounded queue; one worker thread takes the first, then keeps taking more for at
most ``max_wait_ms`` while they fit in ``max_batch`` examples, concatenates them, pads the batch up
to the next bucket size (1, 2, 4, ..., ``max_batch``: each compiled once at start-up, so no request
pays a compile) and splits the outputs back per request. The model runs on that thread, never on
the event loop; callers get a ``concurrent.futures.Future`` (``asyncio.wrap_future`` awaits it).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from jaxdl.export.inference import InferenceFunction

# Called after every model call with (examples, padded bucket size, requests merged, seconds).
BatchObserver = Callable[[int, int, int, float], None]


class Overloaded(Exception):
    """The request queue is full: the server is overloaded (503), not the client's fault."""


def bucket_sizes(max_batch: int) -> tuple[int, ...]:
    """Powers of two below ``max_batch``, then ``max_batch`` itself: the padded batch sizes."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    sizes, size = [], 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return (*sizes, max_batch)


@dataclasses.dataclass
class _Job:
    inputs: tuple[np.ndarray, ...]
    size: int
    future: concurrent.futures.Future


_STOP = object()


class MicroBatcher:
    """Runs ``inference.fn`` on merged, bucket-padded batches in a worker thread.

    ``batching=False`` runs each request alone (still padded to its bucket): the baseline the
    load benchmark compares against. ``max_queue`` bounds the waiting requests (memory).
    """

    def __init__(
        self,
        inference: InferenceFunction,
        *,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 256,
        batching: bool = True,
        observer: BatchObserver | None = None,
    ):
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.input_names = inference.input_names
        self.output_names = inference.output_names
        self.max_batch = int(max_batch)
        self.buckets = bucket_sizes(self.max_batch)
        self.max_wait = max_wait_ms / 1e3
        self.batching = batching
        self._observer = observer
        self._fn = jax.jit(inference.fn)
        self._inference = inference
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.compile_seconds = self._compile_buckets()

    def _compile_buckets(self) -> float:
        """Compiles (and runs once, on zeros) every bucket size; returns the seconds taken."""
        start = time.perf_counter()
        for size in self.buckets:
            zeros = [np.zeros(s.shape, s.dtype) for s in self._inference.abstract_inputs(size)]
            jax.block_until_ready(self._fn(*zeros))
        return time.perf_counter() - start

    def compiled_sizes(self) -> int:
        """How many executables the jitted function holds: ``len(buckets)`` unless a request
        compiled (which the bucket padding is there to prevent)."""
        return self._fn._cache_size()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        """Starts the worker thread (again after ``close``); a no-op while it runs."""
        with self._lock:
            if not self.running:
                self._thread = threading.Thread(
                    target=self._loop, name="jaxdl-serving-batcher", daemon=True
                )
                self._thread.start()

    def close(self, timeout: float | None = 30.0) -> None:
        """Lets the worker finish the requests already queued, then stops it."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None and thread.is_alive():
            self._queue.put(_STOP)
            thread.join(timeout)

    def submit(self, inputs: Sequence[np.ndarray]) -> concurrent.futures.Future:
        """Queues one request's inputs (``input_names`` order, checked, same batch size); the
        future gives ``{output name: array}`` for exactly these examples. ``Overloaded`` when
        the queue is full, ``ValueError`` for a batch outside 1..max_batch."""
        size = int(inputs[0].shape[0])
        if not 1 <= size <= self.max_batch:
            raise ValueError(f"a request holds 1 to {self.max_batch} examples, got {size}")
        job = _Job(tuple(inputs), size, concurrent.futures.Future())
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise Overloaded(f"{self._queue.maxsize} requests already queued") from None
        return job.future

    def _loop(self) -> None:
        carry = None
        while True:
            first = carry if carry is not None else self._queue.get()
            carry = None
            if first is _STOP:
                return
            jobs, total = [first], first.size
            deadline = time.monotonic() + self.max_wait
            while self.batching and total < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    job = (
                        self._queue.get(timeout=remaining)
                        if remaining > 0
                        else (self._queue.get_nowait())
                    )
                except queue.Empty:
                    break
                if job is _STOP or total + job.size > self.max_batch:
                    carry = job  # runs first next time: order is kept
                    break
                jobs.append(job)
                total += job.size
            self._run([job for job in jobs if job.future.set_running_or_notify_cancel()])

    def _run(self, jobs: list[_Job]) -> None:
        """One model call for ``jobs``; every job gets its slice of the outputs (or the error)."""
        if not jobs:
            return
        try:
            start = time.perf_counter()
            total = sum(job.size for job in jobs)
            bucket = next(size for size in self.buckets if size >= total)
            arrays = []
            for index in range(len(self.input_names)):
                parts = [job.inputs[index] for job in jobs]
                if bucket > total:  # repeat the last example: padding rows are valid inputs
                    last = parts[-1][-1:]
                    parts.append(np.repeat(last, bucket - total, axis=0))
                arrays.append(np.concatenate(parts) if len(parts) > 1 else parts[0])
            outputs = [np.asarray(out) for out in self._fn(*arrays)]
            seconds = time.perf_counter() - start
            offset = 0
            for job in jobs:
                job.future.set_result(
                    {
                        name: out[offset : offset + job.size]
                        for name, out in zip(self.output_names, outputs, strict=True)
                    }
                )
                offset += job.size
        except BaseException as error:  # a bug or a device failure: every caller hears of it
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        if self._observer is not None:
            self._observer(total, bucket, len(jobs), seconds)
