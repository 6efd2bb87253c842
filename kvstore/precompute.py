"""Ingestion-time encoding: a worker thread that fills the store from a bounded job queue."""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from kvstore.errors import QueueFull
from kvstore.keys import StoreKey
from kvstore.store import TieredStore
from samkv.document import DocumentKV

logger = logging.getLogger(__name__)

BatchEncoder = Callable[[list[str]], list[DocumentKV]]
JobStatus = Literal["queued", "running", "done", "failed"]


@dataclass(frozen=True)
class JobProgress:
    """A snapshot of one job: `done + failed` of `total` chunks are finished."""

    job_id: str
    status: JobStatus
    total: int
    done: int
    failed: int
    errors: tuple[str, ...]

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed")


class _JobState:
    """The mutable progress of one job: written by the worker, read through its `PrecomputeJob`."""

    def __init__(self, job_id: str, total: int) -> None:
        self.job_id = job_id
        self.total = total
        self._status: JobStatus = "queued"
        self._done = 0
        self._failed = 0
        self._errors: list[str] = []
        self._lock = threading.Lock()
        self.finished = threading.Event()

    def snapshot(self) -> JobProgress:
        with self._lock:
            return JobProgress(
                self.job_id, self._status, self.total, self._done, self._failed, tuple(self._errors)
            )

    def start(self) -> None:
        with self._lock:
            self._status = "running"

    def record(self, count: int, error: str | None = None) -> None:
        """`count` chunks finished: done, or failed with `error`."""
        with self._lock:
            if error is None:
                self._done += count
            else:
                self._failed += count
                self._errors.append(error)

    def finish(self) -> None:
        with self._lock:
            self._status = "failed" if self._failed else "done"
        self.finished.set()


class PrecomputeJob:
    """The handle of one submitted batch of chunks; poll `progress()` or block in `wait()`.

    A chunk counts as done only once its cache is in the durable tier. The job ends `failed`
    when any chunk failed (see `errors`), `done` otherwise.
    """

    def __init__(self, state: _JobState, texts: Sequence[str], keys: list[StoreKey]) -> None:
        self.id = state.job_id
        self.texts = list(texts)
        self.keys = keys
        self._state = state

    @property
    def total(self) -> int:
        return len(self.texts)

    def progress(self) -> JobProgress:
        """A snapshot of the job's progress."""
        return self._state.snapshot()

    def wait(self, timeout: float | None = None) -> JobProgress:
        """Block until the job finished or `timeout` passed; the progress either way."""
        self._state.finished.wait(timeout)
        return self.progress()


_STOP = object()


class Precomputer:
    """One worker thread encoding submitted chunks in batches and writing them through the store.

    `encode_batch` encodes several chunks in one call (one padded forward pass, say); without it,
    or for a batch it raised on, chunks are encoded one by one with the store's encoder, so one
    bad chunk fails alone. Chunks already durable are not encoded again, nor those a faster
    tier (another replica's Redis copy) holds: they are copied to the durable tier. `on_progress`, if
    given, is called from the worker thread after every batch and when a job ends.
    """

    def __init__(
        self,
        store: TieredStore,
        *,
        encode_batch: BatchEncoder | None = None,
        batch_size: int = 8,
        max_queued_jobs: int = 64,
        on_progress: Callable[[JobProgress], None] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.store = store
        self.batch_size = batch_size
        self._encode_batch = encode_batch
        self._on_progress = on_progress
        self._queue: queue.Queue = queue.Queue(maxsize=max_queued_jobs)
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="kvstore-precompute", daemon=True)
        self._thread.start()

    def submit(
        self, texts: Sequence[str], *, job_id: str | None = None, timeout: float | None = 0.0
    ) -> PrecomputeJob:
        """Queue chunk texts for encoding; `QueueFull` if no room within `timeout` seconds (None: wait)."""
        if self._closed:
            raise RuntimeError("the precomputer is closed")
        state = _JobState(job_id or uuid.uuid4().hex, len(texts))
        job = PrecomputeJob(state, texts, [self.store.key(t) for t in texts])
        try:
            self._queue.put((job, state), block=timeout != 0.0, timeout=timeout or None)
        except queue.Full:
            raise QueueFull(
                f"{self._queue.maxsize} precompute jobs already queued; retry when some have finished"
            ) from None
        return job

    def close(self, wait: bool = True) -> None:
        """Stop taking jobs; with `wait`, finish the queued ones first."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        if wait:
            self._thread.join()

    def _work(self) -> None:
        while (queued := self._queue.get()) is not _STOP:
            job, state = queued
            try:
                self._run(job, state)
            except Exception as exc:  # the worker must outlive any one job
                logger.exception("precompute job %s crashed", job.id)
                progress = state.snapshot()
                state.record(
                    progress.total - progress.done - progress.failed, f"job crashed: {exc}"
                )
            finally:
                state.finish()
                self._report(job)

    def _run(self, job: PrecomputeJob, state: _JobState) -> None:
        state.start()
        # Identical chunks share a key: encode each once, count it as often as it was submitted.
        counts: dict[StoreKey, int] = {}
        texts: dict[StoreKey, str] = {}
        for key, text in zip(job.keys, job.texts):
            counts[key] = counts.get(key, 0) + 1
            texts[key] = text
        todo = []
        for key, count in counts.items():
            # Another replica may have stored it in the shared tier: a copy costs a read, not a prefill.
            if self.store.has_durable_copy(key) or self.store.copy_to_durable(key):
                state.record(count)
            else:
                todo.append(key)
        self._report(job)
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start : start + self.batch_size]
            docs = self._encode(job, [texts[k] for k in batch])
            for key, doc in zip(batch, docs):
                try:
                    self.store.put(
                        key, doc if doc is not None else self.store.encode_text(texts[key])
                    )
                except Exception as exc:  # noqa: BLE001 - any failure is this chunk's, reported in the job
                    logger.warning("precompute of chunk %s failed: %s", key.content_hash[:12], exc)
                    state.record(counts[key], f"chunk {key.content_hash[:12]}: {exc}")
                else:
                    state.record(counts[key])
            self._report(job)

    def _encode(self, job: PrecomputeJob, texts: list[str]) -> list[DocumentKV | None]:
        """Batch-encode `texts`; None entries are left to be encoded one by one."""
        if self._encode_batch is None:
            return [None] * len(texts)
        start = time.perf_counter()
        try:
            docs = self._encode_batch(texts)
            if len(docs) != len(texts):
                raise ValueError(f"encode_batch returned {len(docs)} caches for {len(texts)} texts")
        except Exception as exc:  # noqa: BLE001 - the one-by-one fallback isolates the culprit
            logger.warning("batch encode failed in job %s, encoding one by one: %s", job.id, exc)
            return [None] * len(texts)
        self.store.metrics.encoded(
            len(docs), sum(d.length for d in docs), time.perf_counter() - start
        )
        return list(docs)

    def _report(self, job: PrecomputeJob) -> None:
        if self._on_progress is None:
            return
        try:
            self._on_progress(job.progress())
        except Exception:
            logger.exception("precompute progress callback failed")
