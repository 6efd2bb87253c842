"""The loaded parts of the service (engine, retrieval, KV store, jobs) and what the routes do with them."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.consistency import ConsistencyReport, check_consistency
from app.errors import InvalidInput, Unavailable
from app.generation import GenerationPool, RunningGeneration
from app.ingestion import Ingestor, NewDocument
from app.jobs import Job, JobStore
from app.metrics import AppMetrics
from app.settings import Settings
from kvstore import PrecomputeJob, Precomputer, TieredStore, open_store
from retrieval import DocumentRecord, Embedder, RetrievalService, SearchHit, StoreUnavailable
from samkv import METHODS, Engine, GenerationStream
from samkv.runtime import load_model

logger = logging.getLogger(__name__)

SAMPLE_COLLECTION = Path(__file__).parent / "sample_collection"


@dataclass
class Services:
    """Everything a request needs; built once per app by `load` and closed with it."""

    settings: Settings
    engine: Engine
    retrieval: RetrievalService
    store: TieredStore
    precomputer: Precomputer
    ingestor: Ingestor
    generations: GenerationPool
    metrics: AppMetrics
    consistency: ConsistencyReport | None = field(default=None, init=False)
    repair_job: PrecomputeJob | None = field(default=None, init=False)

    @classmethod
    def load(cls, settings: Settings, metrics: AppMetrics, engine: Engine | None = None) -> Services:
        """Load the models and open the stores under `settings.data_dir` (slow: seconds).

        Pass `engine` to share an already loaded one (tests, several apps in one process).
        """
        data_dir = Path(settings.data_dir)
        device = None if settings.device == "auto" else settings.device
        if engine is None:
            loaded = load_model(
                settings.model or None,
                device=device,
                dtype=None if settings.dtype == "auto" else settings.dtype,
                cache_dir=settings.resolved_cache_dir,
                weights=settings.weights,
            )
            engine = Engine(
                loaded,
                self_check=settings.engine_self_check,
                probe_hold_bytes=settings.probe_hold_bytes,
                probe_weights=settings.probe_weights,
            )
        embedder = Embedder(settings.embedding_model or None, device=device)
        # Opens even when the database is unreachable: readiness then says why, and the
        # service connects as soon as it can.
        retrieval = RetrievalService(
            data_dir,
            engine.count_tokens,
            embedder=embedder,
            chunk_tokens=settings.chunk_tokens,
            chunk_overlap=settings.chunk_overlap,
            database_url=settings.database_url,
            follow_interval_s=settings.index_poll_s,
            change_log_keep=settings.change_log_keep,
        )
        store = open_store(
            data_dir,
            engine.fingerprint,
            engine.encode_document,
            redis_url=settings.redis_url,
            memory_bytes=settings.memory_tier_bytes,
            storage_dtype=settings.kv_storage_dtype,
            redis_ttl_s=settings.redis_ttl_s,
            registry=metrics.registry,
            redis_prefix=settings.redis_prefix,
        )
        precomputer = Precomputer(
            store, encode_batch=engine.encode_documents, batch_size=settings.ingest_batch_size
        )
        ingestor = Ingestor(
            retrieval,
            precomputer,
            JobStore(retrieval.database, max_attempts=settings.job_max_attempts),
            worker=settings.worker,
            max_queued_jobs=settings.max_queued_ingest_jobs,
            lease_s=settings.job_lease_s,
            heartbeat_s=settings.job_heartbeat_s,
            poll_s=settings.job_poll_s,
            on_finished=lambda job: metrics.ingest_jobs.labels(job.status).inc(),
        )
        generations = GenerationPool(
            settings.max_concurrent_generations,
            settings.max_queued_generations,
            settings.retry_after_s,
            metrics,
        )
        return cls(settings, engine, retrieval, store, precomputer, ingestor, generations, metrics)

    def close(self) -> None:
        """Finish queued ingestion, stop the workers and save the index."""
        self.generations.close()
        self.ingestor.close()
        self.precomputer.close()
        self.retrieval.close()

    def check_consistency(self) -> ConsistencyReport:
        """Run the start-up check of the KV caches against the document store (see
        `app.consistency`); its report is kept in `consistency`, the re-encoding in `repair_job`."""
        report, self.repair_job = check_consistency(self.retrieval, self.store, self.precomputer)
        for kind in ("missing_kv", "orphan_kv", "stale_temp_files"):
            self.metrics.startup_repairs.labels(kind).inc(getattr(report, kind))
        self.consistency = report
        return report

    def unavailable_reason(self) -> str | None:
        """Why requests cannot be served now (the database is unreachable), or None."""
        return self.retrieval.unavailable_reason()

    @contextmanager
    def database(self) -> Iterator[None]:
        """Turn an unreachable database into a 503 with Retry-After; nothing is half-written."""
        try:
            yield
        except StoreUnavailable as error:
            raise Unavailable(str(error), self.settings.retry_after_s,
                              code="database_unavailable") from error

    def submit(self, documents: list[NewDocument]) -> Job:
        """Commit the documents as a queued ingestion job (before the client hears 202)."""
        with self.database():
            return self.ingestor.submit(documents)

    def job(self, job_id: str) -> Job | None:
        """An ingestion job's state, or None."""
        with self.database():
            return self.ingestor.get(job_id)

    async def wait_for_job(self, job_id: str) -> Job | None:
        """The job's state once it has finished."""
        with self.database():
            return await self.ingestor.wait_async(job_id)

    def list_documents(self) -> list[DocumentRecord]:
        """Summaries of the stored documents."""
        with self.database():
            return self.retrieval.list_documents()

    def get_document(self, document_id: str) -> DocumentRecord | None:
        """A stored document with its chunks, or None."""
        with self.database():
            return self.retrieval.get_document(document_id)

    def ingest_sample_collection(self) -> str | None:
        """Queue the bundled sample documents when nothing is stored yet; the job id, if queued."""
        if self.retrieval.list_documents():
            return None
        documents = [
            NewDocument(path.stem, path.read_text(encoding="utf-8"), {"filename": path.name})
            for path in sorted(SAMPLE_COLLECTION.iterdir())
            if path.suffix in (".md", ".txt")
        ]
        logger.info("ingesting the sample collection (%d documents)", len(documents))
        return self.ingestor.submit(documents).id

    def delete_document(self, document_id: str) -> bool:
        """Remove the document from the index and its chunks' KV caches from every tier.

        Caches are keyed by content, so a chunk text another document shares loses its cache
        too; the store re-encodes it on the next read.
        """
        with self.database():
            record = self.retrieval.get_document(document_id)
            if record is None or not self.retrieval.delete_document(document_id):
                return False
        for chunk in record.chunks or ():
            self.store.delete(chunk.text)
        return True

    def validate_question(self, question: str) -> None:
        """Refuse an empty or overlong question with `InvalidInput`."""
        if not question.strip():
            raise InvalidInput("the question is empty", code="empty_question")
        if len(question) > self.settings.max_question_chars:
            raise InvalidInput(
                f"the question has {len(question)} characters; at most "
                f"{self.settings.max_question_chars} are accepted",
                code="question_too_long",
            )

    def validate_max_new_tokens(self, max_new_tokens: int | None) -> None:
        """Refuse asking for more tokens than `max_new_tokens_limit` with `InvalidInput`."""
        limit = self.settings.max_new_tokens_limit
        if max_new_tokens is not None and max_new_tokens > limit:
            raise InvalidInput(
                f"max_new_tokens is {max_new_tokens}; this server generates at most {limit}",
                code="max_new_tokens_too_large",
            )

    async def search(
        self, question: str, top_k: int | None, filters: dict[str, Any] | None
    ) -> list[SearchHit]:
        """The chunks retrieved for `question` (embedding runs off the event loop).

        A question the generation pool would refuse now (503) is refused before retrieval.
        """
        self.validate_question(question)
        if top_k is not None and top_k > self.settings.max_top_k:
            raise InvalidInput(
                f"top_k is {top_k}; this server retrieves at most {self.settings.max_top_k} chunks",
                code="top_k_too_large",
            )
        self.generations.check_capacity()
        with self.database():
            return await asyncio.to_thread(
                self.retrieval.search, question, top_k or self.settings.top_k, filters
            )

    def open_stream(
        self,
        question: str,
        hits: list[SearchHit],
        *,
        method: str | None = None,
        keep_ratio: float | None = None,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> GenerationStream:
        """The engine's stream answering `question` over the retrieved chunks' stored caches.

        Blocking (it may read or re-encode caches); iterate it on one thread.
        """
        method = method or self.settings.method
        params: dict[str, Any] = {}
        if _takes_keep_ratio(method):
            params["keep_ratio"] = keep_ratio if keep_ratio is not None else self.settings.keep_ratio
        documents = self.store.source([hit.text for hit in hits]) if hits else ()
        return self.engine.stream(
            question,
            documents,
            method=method,
            max_new_tokens=max_new_tokens or self.settings.max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            **params,
        )

    async def generate(self, question: str, hits: list[SearchHit], **options: Any) -> RunningGeneration:
        """Admit and start `open_stream(question, hits, **options)` on the generation pool."""
        self.validate_max_new_tokens(options.get("max_new_tokens"))
        return await self.generations.start(lambda: self.open_stream(question, hits, **options))


def _takes_keep_ratio(method: str) -> bool:
    cls = METHODS.get(method)
    return cls is not None and any(f.name == "keep_ratio" for f in dataclasses.fields(cls))


class Runtime:
    """What the app has loaded so far: `services` once ready, or the `error` loading failed with."""

    def __init__(self) -> None:
        self.services: Services | None = None
        self.error: str | None = None
