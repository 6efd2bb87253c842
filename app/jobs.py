"""The durable ingestion queue: jobs and the documents they were acknowledged with, in the
shared database.

A job is committed with its documents' text before the client hears 202. Any process with
the worker role claims the oldest claimable job with `SELECT … FOR UPDATE SKIP LOCKED`
(two workers never take the same row; SQLite, serving one process, ignores the clause) and
holds it under a lease it renews by heartbeat. A job whose worker died is claimable again
once its lease has expired; after `max_attempts` claims it is failed instead, so a job that
kills every worker cannot block the queue.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from kvstore import QueueFull
from retrieval import Database
from retrieval.schema import job_documents, jobs

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
_JOB_COLUMNS = (
    jobs.c.id, jobs.c.status, jobs.c.documents_total, jobs.c.documents_indexed,
    jobs.c.chunks_total, jobs.c.chunks_stored, jobs.c.error, jobs.c.created_at,
    jobs.c.updated_at, jobs.c.attempts,
)


@dataclass(frozen=True)
class NewDocument:
    """A document to ingest, its id already chosen so the caller can be told it at once."""

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Job:
    """One ingestion job: indexing its documents, then storing the KV caches of their chunks."""

    id: str
    status: str
    document_ids: list[str]
    documents_total: int
    documents_indexed: int = 0
    chunks_total: int = 0
    chunks_stored: int = 0
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    attempts: int = 0

    @property
    def progress(self) -> float:
        """Share of the work done, 0 to 1: indexing weighs a fifth, storing KV caches the rest."""
        if self.status == DONE:
            return 1.0
        indexed = self.documents_indexed / self.documents_total if self.documents_total else 1.0
        stored = self.chunks_stored / self.chunks_total if self.chunks_total else 0.0
        return round(0.2 * indexed + 0.8 * stored, 4)

    @property
    def finished(self) -> bool:
        return self.status in (DONE, FAILED)


def worker_id() -> str:
    """A name for this process's worker, unique across hosts and restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class JobStore:
    """The job tables, reached through `database`; thread-safe.

    Every change a worker makes to a job is conditioned on still owning it, so a worker that
    lost its lease (paused past it, then resumed) cannot overwrite the new owner's progress.
    """

    def __init__(self, database: Database, max_attempts: int = 3) -> None:
        self.database = database
        self.max_attempts = max_attempts

    def create(self, documents: Sequence[NewDocument], max_queued: int) -> Job:
        """Commit a queued job with its documents; `QueueFull` when `max_queued` jobs wait."""
        job = Job(uuid.uuid4().hex, QUEUED, [d.id for d in documents], len(documents))
        with self.database.write() as conn:
            waiting = conn.execute(
                sa.select(sa.func.count()).select_from(jobs).where(jobs.c.status == QUEUED)
            ).scalar_one()
            if waiting >= max_queued:
                raise QueueFull(f"{waiting} ingestion jobs are already waiting; retry later")
            conn.execute(sa.insert(jobs).values(
                id=job.id, status=job.status, documents_total=job.documents_total,
                documents_indexed=0, chunks_total=0, chunks_stored=0, attempts=0,
                created_at=job.created_at, updated_at=job.updated_at,
            ))
            conn.execute(sa.insert(job_documents), [
                {"job_id": job.id, "position": i, "document_id": d.id, "text": d.text,
                 "metadata": json.dumps(d.metadata)}
                for i, d in enumerate(documents)
            ])
        return job

    def claim(self, owner: str, lease_s: float) -> tuple[Job, list[NewDocument]] | None:
        """Take the oldest queued job, or one whose lease expired; None when there is none."""
        while True:
            now = time.time()
            with self.database.write() as conn:
                row = conn.execute(
                    sa.select(*_JOB_COLUMNS)
                    .where(sa.or_(
                        jobs.c.status == QUEUED,
                        sa.and_(jobs.c.status == RUNNING, jobs.c.lease_expires_at < now),
                    ))
                    .order_by(jobs.c.created_at)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                ).first()
                if row is None:
                    return None
                job = _job(conn, row)
                if job.attempts >= self.max_attempts:
                    job.status = FAILED
                    job.error = (f"its worker stopped {job.attempts} times while running it; "
                                 "the documents it indexed are kept")
                    _finish(conn, job)
                    continue
                job.status, job.attempts, job.updated_at = RUNNING, job.attempts + 1, now
                conn.execute(sa.update(jobs).where(jobs.c.id == job.id).values(
                    status=RUNNING, owner=owner, lease_expires_at=now + lease_s,
                    attempts=job.attempts, updated_at=now,
                ))
                documents = [
                    NewDocument(r.document_id, r.text, json.loads(r.metadata))
                    for r in conn.execute(
                        sa.select(job_documents).where(job_documents.c.job_id == job.id)
                        .order_by(job_documents.c.position)
                    )
                ]
                return job, documents

    def heartbeat(self, job_id: str, owner: str, lease_s: float) -> bool:
        """Extend the lease; False when `owner` no longer holds the job."""
        with self.database.write() as conn:
            return bool(conn.execute(
                self._owned(job_id, owner).values(lease_expires_at=time.time() + lease_s)
            ).rowcount)

    def update(self, job: Job, owner: str) -> bool:
        """Record the job's progress; False when `owner` no longer holds it."""
        job.updated_at = time.time()
        with self.database.write() as conn:
            return bool(conn.execute(self._owned(job.id, owner).values(
                documents_indexed=job.documents_indexed, chunks_total=job.chunks_total,
                chunks_stored=job.chunks_stored, updated_at=job.updated_at,
            )).rowcount)

    def finish(self, job: Job, owner: str) -> bool:
        """Record the job done or failed and drop its documents' copies; False when `owner`
        no longer holds it."""
        with self.database.write() as conn:
            if not conn.execute(self._owned(job.id, owner).values(owner=owner)).rowcount:
                return False
            _finish(conn, job)
        return True

    def release(self, job_id: str, owner: str) -> None:
        """Put a job this worker is giving up (shutting down) back in the queue."""
        with self.database.write() as conn:
            conn.execute(self._owned(job_id, owner).values(
                status=QUEUED, owner=None, lease_expires_at=None,
                attempts=jobs.c.attempts - 1, updated_at=time.time(),
            ))

    def get(self, job_id: str) -> Job | None:
        """The job's current state, or None for an unknown id."""
        with self.database.read() as conn:
            row = conn.execute(sa.select(*_JOB_COLUMNS).where(jobs.c.id == job_id)).first()
            return None if row is None else _job(conn, row)

    def owner(self, job_id: str) -> str | None:
        """The worker holding the job now, or None."""
        with self.database.read() as conn:
            return conn.execute(sa.select(jobs.c.owner).where(jobs.c.id == job_id)).scalar()

    def running(self) -> list[Job]:
        """Jobs some worker holds now."""
        with self.database.read() as conn:
            rows = conn.execute(sa.select(*_JOB_COLUMNS).where(jobs.c.status == RUNNING)).all()
            return [_job(conn, row) for row in rows]

    @staticmethod
    def _owned(job_id: str, owner: str) -> sa.Update:
        return sa.update(jobs).where(
            jobs.c.id == job_id, jobs.c.owner == owner, jobs.c.status == RUNNING
        )


def _job(conn: sa.Connection, row: sa.Row) -> Job:
    document_ids = conn.execute(
        sa.select(job_documents.c.document_id)
        .where(job_documents.c.job_id == row.id)
        .order_by(job_documents.c.position)
    ).scalars().all()
    return Job(
        id=row.id, status=row.status, document_ids=list(document_ids),
        documents_total=row.documents_total, documents_indexed=row.documents_indexed,
        chunks_total=row.chunks_total, chunks_stored=row.chunks_stored, error=row.error,
        created_at=row.created_at, updated_at=row.updated_at, attempts=row.attempts,
    )


def _finish(conn: sa.Connection, job: Job) -> None:
    job.updated_at = time.time()
    conn.execute(sa.update(jobs).where(jobs.c.id == job.id).values(
        status=job.status, error=job.error, documents_indexed=job.documents_indexed,
        chunks_total=job.chunks_total, chunks_stored=job.chunks_stored, owner=None,
        lease_expires_at=None, updated_at=job.updated_at,
    ))
    # The text is in the document table now; keep only the ids, for the job's status.
    conn.execute(sa.update(job_documents).where(job_documents.c.job_id == job.id).values(text=""))
