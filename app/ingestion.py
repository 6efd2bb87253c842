"""Background ingestion: index documents for retrieval, then store their chunks' KV caches."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.jobs import Job, JobStore
from kvstore import Precomputer, QueueFull
from retrieval import RetrievalService

logger = logging.getLogger(__name__)

# How often a running job's chunk progress is written to the job table.
_POLL_S = 0.25
_MAX_ERRORS_SHOWN = 3


@dataclass(frozen=True)
class NewDocument:
    """A document to ingest, its id already chosen so the caller can be told it at once."""

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


def new_document_id() -> str:
    """A fresh document id."""
    return uuid.uuid4().hex


class Ingestor:
    """Runs ingestion jobs one at a time on a worker thread; jobs are recorded in a `JobStore`.

    Documents are searchable as soon as they are indexed; a job is `done` once every chunk's
    KV cache is in the durable tier. A job whose documents or chunks partly failed ends
    `failed` with the reasons, the rest of its work kept.
    """

    def __init__(
        self,
        retrieval: RetrievalService,
        precomputer: Precomputer,
        jobs: JobStore,
        max_queued_jobs: int = 64,
        on_finished: Callable[[Job], None] | None = None,
    ) -> None:
        self.retrieval = retrieval
        self.precomputer = precomputer
        self.jobs = jobs
        self._on_finished = on_finished
        self._queue: queue.Queue = queue.Queue(maxsize=max_queued_jobs)
        self._events: dict[str, threading.Event] = {}
        self._waiters: dict[str, list[Callable[[], None]]] = {}
        self._events_lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="ingestion", daemon=True)
        self._thread.start()

    def submit(self, documents: Sequence[NewDocument]) -> Job:
        """Queue `documents` as one job; `kvstore.QueueFull` when too many jobs are waiting."""
        job = Job(
            id=uuid.uuid4().hex,
            status="queued",
            document_ids=[d.id for d in documents],
            documents_total=len(documents),
        )
        event = threading.Event()
        with self._events_lock:
            self._events[job.id] = event
        self.jobs.create(job)
        try:
            self._queue.put_nowait((job, list(documents)))
        except queue.Full:
            job.status, job.error = "failed", "not started: the ingestion queue was full"
            self._finish(job)
            raise QueueFull(
                f"{self._queue.maxsize} ingestion jobs are already waiting; retry later"
            ) from None
        return job

    def get(self, job_id: str) -> Job | None:
        """The job's current state, or None for an unknown id."""
        return self.jobs.get(job_id)

    def wait(self, job_id: str, timeout: float | None = None) -> Job | None:
        """Block until the job has finished (or `timeout` passed); its state then."""
        with self._events_lock:
            event = self._events.get(job_id)
        if event is not None:
            event.wait(timeout)
        return self.jobs.get(job_id)

    async def wait_async(self, job_id: str) -> Job | None:
        """`wait` without holding a thread: the worker wakes the event loop when the job ends."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def wake() -> None:
            loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

        with self._events_lock:
            pending = job_id in self._events
            if pending:
                self._waiters.setdefault(job_id, []).append(wake)
        if pending:
            await done
        return self.jobs.get(job_id)

    def close(self) -> None:
        """Finish the queued jobs, then stop the worker."""
        self._queue.put(None)
        self._thread.join()

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            job, documents = item
            try:
                self._run(job, documents)
            except Exception as exc:  # the worker must outlive any one job
                logger.exception("ingestion job %s crashed", job.id)
                job.status, job.error = "failed", f"job crashed: {exc}"
            self._finish(job)

    def _run(self, job: Job, documents: list[NewDocument]) -> None:
        job.status = "running"
        self.jobs.update(job)
        errors: list[str] = []
        texts: list[str] = []
        for document in documents:
            try:
                record = self.retrieval.add_document(document.text, document.id, document.metadata)
            except Exception as exc:  # noqa: BLE001 - one bad document fails alone, reported in the job
                logger.warning("document %s not indexed: %s", document.id, exc)
                errors.append(f"document {document.id}: {exc}")
            else:
                texts.extend(chunk.text for chunk in record.chunks or ())
            job.documents_indexed += 1
            job.chunks_total = len(texts)
            self.jobs.update(job)
        if texts:
            precompute = self.precomputer.submit(texts, job_id=job.id, timeout=None)
            while True:
                progress = precompute.wait(_POLL_S)
                job.chunks_stored = progress.done + progress.failed
                self.jobs.update(job)
                if progress.finished:
                    break
            errors.extend(progress.errors)
        if errors:
            shown = "; ".join(errors[:_MAX_ERRORS_SHOWN])
            more = f" (and {len(errors) - _MAX_ERRORS_SHOWN} more)" if len(errors) > _MAX_ERRORS_SHOWN else ""
            job.status, job.error = "failed", shown + more
        else:
            job.status = "done"

    def _finish(self, job: Job) -> None:
        self.jobs.update(job)
        logger.info("ingestion job %s %s", job.id, job.status)
        if self._on_finished is not None:
            self._on_finished(job)
        with self._events_lock:
            event = self._events.pop(job.id, None)
            waiters = self._waiters.pop(job.id, [])
        if event is not None:
            event.set()
        for wake in waiters:
            wake()
