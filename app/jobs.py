"""Ingestion jobs persisted in SQLite under the data dir, so their state outlives the process."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

JOBS_FILE = "jobs.sqlite3"
INTERRUPTED = (
    "interrupted: the server stopped before this job finished; submit the documents again"
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    error TEXT,
    document_ids TEXT NOT NULL,
    documents_total INTEGER NOT NULL,
    documents_indexed INTEGER NOT NULL DEFAULT 0,
    chunks_total INTEGER NOT NULL DEFAULT 0,
    chunks_stored INTEGER NOT NULL DEFAULT 0,
    owner TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
)
"""


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

    @property
    def progress(self) -> float:
        """Share of the work done, 0 to 1: indexing weighs a fifth, storing KV caches the rest."""
        if self.status == "done":
            return 1.0
        indexed = self.documents_indexed / self.documents_total if self.documents_total else 1.0
        stored = self.chunks_stored / self.chunks_total if self.chunks_total else 0.0
        return round(0.2 * indexed + 0.8 * stored, 4)

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed")


class JobStore:
    """Thread-safe SQLite table of jobs.

    Jobs are owned by the host that created them; on open, this host's jobs left queued or
    running by a previous process are marked failed (their documents were in that process's
    memory), while other replicas' jobs on a shared volume are left alone.
    """

    def __init__(self, data_dir: Path) -> None:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        self._owner = socket.gethostname()
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            Path(data_dir) / JOBS_FILE, check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        self.interrupted = self._db.execute(
            "UPDATE jobs SET status='failed', error=?, updated_at=? "
            "WHERE status IN ('queued', 'running') AND owner=?",
            (INTERRUPTED, time.time(), self._owner),
        ).rowcount

    def create(self, job: Job) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, status, error, document_ids, documents_total, owner, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (job.id, job.status, job.error, json.dumps(job.document_ids),
                 job.documents_total, self._owner, job.created_at, job.updated_at),
            )

    def update(self, job: Job) -> None:
        job.updated_at = time.time()
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET status=?, error=?, documents_indexed=?, chunks_total=?, "
                "chunks_stored=?, updated_at=? WHERE id=?",
                (job.status, job.error, job.documents_indexed, job.chunks_total,
                 job.chunks_stored, job.updated_at, job.id),
            )

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, status, document_ids, documents_total, documents_indexed, "
                "chunks_total, chunks_stored, error, created_at, updated_at FROM jobs WHERE id=?",
                (job_id,),
            ).fetchone()
        if row is None:
            return None
        return Job(row[0], row[1], json.loads(row[2]), *row[3:])

    def close(self) -> None:
        with self._lock:
            self._db.close()
