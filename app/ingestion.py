"""Ingestion workers: claim jobs from the durable queue, index their documents for retrieval,
then store their chunks' KV caches."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence

from app.jobs import DONE, FAILED, Job, JobStore, NewDocument, worker_id
from kvstore import Precomputer
from retrieval import DocumentRecord, RetrievalService, StoreUnavailable

logger = logging.getLogger(__name__)

# How often a running job's chunk progress is written to the job table.
_PROGRESS_S = 0.25
# How often a waiting caller looks at the job table.
_WAIT_POLL_S = 0.1
_MAX_ERRORS_SHOWN = 3

__all__ = ["Ingestor", "NewDocument", "new_document_id"]


def new_document_id() -> str:
    """A fresh document id."""
    return uuid.uuid4().hex


class _LeaseLost(Exception):
    """Another worker holds the job now (this one was paused past its lease)."""


class _Stopping(Exception):
    """The worker is shutting down; the job goes back to the queue."""


class Ingestor:
    """Submits jobs to the queue and, with `worker`, runs them one at a time on a thread.

    Documents are searchable as soon as they are indexed; a job is `done` once every chunk's
    KV cache is stored. A job whose documents or chunks partly failed ends `failed` with the
    reasons, the rest of its work kept. Without `worker`, jobs wait for another process.
    """

    def __init__(
        self,
        retrieval: RetrievalService,
        precomputer: Precomputer,
        jobs: JobStore,
        *,
        worker: bool = True,
        max_queued_jobs: int = 64,
        lease_s: float = 30.0,
        heartbeat_s: float = 5.0,
        poll_s: float = 0.5,
        on_finished: Callable[[Job], None] | None = None,
    ) -> None:
        self.retrieval = retrieval
        self.precomputer = precomputer
        self.jobs = jobs
        self.worker_id = worker_id()
        self._max_queued = max_queued_jobs
        self._lease_s = lease_s
        self._heartbeat_s = heartbeat_s
        self._poll_s = poll_s
        self._on_finished = on_finished
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._current: Job | None = None
        self._lease_lost = threading.Event()
        self._threads: list[threading.Thread] = []
        if worker:
            self._threads = [
                threading.Thread(target=self._work, name="ingestion", daemon=True),
                threading.Thread(target=self._heartbeat, name="ingestion-lease", daemon=True),
            ]
        for thread in self._threads:
            thread.start()

    def submit(self, documents: Sequence[NewDocument]) -> Job:
        """Commit `documents` as one queued job; `kvstore.QueueFull` when too many jobs wait,
        `StoreUnavailable` when the database cannot be reached."""
        job = self.jobs.create(documents, self._max_queued)
        self._wake.set()
        return job

    def get(self, job_id: str) -> Job | None:
        """The job's current state, or None for an unknown id."""
        return self.jobs.get(job_id)

    def wait(self, job_id: str, timeout: float | None = None) -> Job | None:
        """Block until the job has finished (or `timeout` passed); its state then."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.jobs.get(job_id)
            if job is None or job.finished or (deadline and time.monotonic() > deadline):
                return job
            time.sleep(_WAIT_POLL_S)

    async def wait_async(self, job_id: str) -> Job | None:
        """`wait` without holding a thread while the job runs."""
        while True:
            job = await asyncio.to_thread(self.jobs.get, job_id)
            if job is None or job.finished:
                return job
            await asyncio.sleep(_WAIT_POLL_S)

    def close(self) -> None:
        """Stop the worker; a job it was running goes back to the queue for another worker."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                claimed = self.jobs.claim(self.worker_id, self._lease_s)
            except StoreUnavailable as error:
                logger.warning("ingestion worker: %s", error)
                self._stop.wait(max(self._poll_s, 1.0))
                continue
            if claimed is None:
                self._wake.wait(self._poll_s)
                self._wake.clear()
                continue
            job, documents = claimed
            logger.info("ingestion job %s claimed (attempt %d)", job.id, job.attempts)
            self._lease_lost.clear()
            self._current = job
            try:
                self._run(job, documents)
                finished = self.jobs.finish(job, self.worker_id)
            except _LeaseLost:
                logger.warning("ingestion job %s: lease lost to another worker", job.id)
                continue
            except StoreUnavailable as error:
                logger.warning("ingestion job %s paused: %s", job.id, error)
                self._release(job)
                self._stop.wait(max(self._poll_s, 1.0))
                continue
            except _Stopping:
                self._release(job)
                return
            except Exception as exc:  # the worker must outlive any one job
                logger.exception("ingestion job %s crashed", job.id)
                job.status, job.error = FAILED, f"job crashed: {exc}"
                finished = self._finish_quietly(job)
            finally:
                self._current = None
            if finished:
                logger.info("ingestion job %s %s", job.id, job.status)
                if self._on_finished is not None:
                    self._on_finished(job)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self._heartbeat_s):
            job = self._current
            if job is None:
                continue
            try:
                if not self.jobs.heartbeat(job.id, self.worker_id, self._lease_s):
                    self._lease_lost.set()
            except StoreUnavailable as error:
                logger.warning("ingestion lease of job %s not renewed: %s", job.id, error)

    def _checkpoint(self, job: Job) -> None:
        """Record progress, or stop the job when it is no longer this worker's to run."""
        if self._stop.is_set():
            raise _Stopping
        if self._lease_lost.is_set() or not self.jobs.update(job, self.worker_id):
            raise _LeaseLost

    def _run(self, job: Job, documents: list[NewDocument]) -> None:
        self._checkpoint(job)
        errors: list[str] = []
        texts: list[str] = []
        job.documents_indexed = job.chunks_total = job.chunks_stored = 0
        for document in documents:
            try:
                record = self._index(document)
            except StoreUnavailable:
                raise  # not the document's fault: the job stays claimable and is retried
            except Exception as exc:  # noqa: BLE001 - one bad document fails alone, reported in the job
                logger.warning("document %s not indexed: %s", document.id, exc)
                errors.append(f"document {document.id}: {exc}")
            else:
                texts.extend(chunk.text for chunk in record.chunks or ())
            job.documents_indexed += 1
            job.chunks_total = len(texts)
            self._checkpoint(job)
        if texts:
            precompute = self.precomputer.submit(texts, job_id=job.id, timeout=None)
            while True:
                progress = precompute.wait(_PROGRESS_S)
                job.chunks_stored = progress.done + progress.failed
                if progress.finished:
                    break
                self._checkpoint(job)
            errors.extend(progress.errors)
        if errors:
            shown = "; ".join(errors[:_MAX_ERRORS_SHOWN])
            more = f" (and {len(errors) - _MAX_ERRORS_SHOWN} more)" if len(errors) > _MAX_ERRORS_SHOWN else ""
            job.status, job.error = FAILED, shown + more
        else:
            job.status = DONE

    def _index(self, document: NewDocument) -> DocumentRecord:
        """Index the document, unless an earlier attempt of this job already stored it as is."""
        stored = self.retrieval.get_document(document.id)
        if stored is not None and stored.text == document.text and stored.metadata == document.metadata:
            return stored
        return self.retrieval.add_document(document.text, document.id, document.metadata)

    def _release(self, job: Job) -> None:
        try:
            self.jobs.release(job.id, self.worker_id)
            logger.info("ingestion job %s put back in the queue", job.id)
        except StoreUnavailable as error:  # its lease expires and another worker takes it
            logger.warning("ingestion job %s not released: %s", job.id, error)

    def _finish_quietly(self, job: Job) -> bool:
        try:
            return self.jobs.finish(job, self.worker_id)
        except StoreUnavailable:
            return False
