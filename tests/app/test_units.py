"""Parts of the service: admission, compose file, the sample collection, a setting's way to the
engine (the job queue's own tests are in tests/reliability/test_job_queue.py)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from app.errors import Unavailable
from app.generation import GenerationPool
from app.metrics import AppMetrics

ROOT = Path(__file__).resolve().parents[2]


class _BlockingStream:
    """Stands in for the engine's stream: yields once released."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release
        self.stats = {"method": "full"}
        self.kept_per_document: list[list[int]] = []
        self.recomputed_per_document: list[list[int]] = []

    def __iter__(self):
        self.release.wait(30)
        yield "done"


def test_full_queue_is_refused_with_retry_after():
    async def scenario() -> None:
        pool = GenerationPool(1, 1, retry_after_s=7, metrics=AppMetrics(CollectorRegistry()))
        release = threading.Event()
        first = await pool.start(lambda: _BlockingStream(release))
        # The second waits in the queue behind the first (its start cannot complete yet).
        second = asyncio.ensure_future(pool.start(lambda: _BlockingStream(release)))
        await asyncio.sleep(0.05)
        with pytest.raises(Unavailable) as refused:
            await pool.start(lambda: _BlockingStream(release))
        assert refused.value.status == 503
        assert refused.value.headers["Retry-After"] == "7"
        release.set()
        assert [piece async for piece in first] == ["done"]
        assert [piece async for piece in await second] == ["done"]
        assert pool.admitted == 0
        pool.close()

    asyncio.run(scenario())


def test_compose_file_names_redis_and_the_api():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "api"} <= set(services)
    api = services["api"]
    assert "REDIS_URL" in str(api["environment"])
    assert "healthcheck" in api and "healthcheck" in services["redis"]
    # Replicas share PostgreSQL and Redis, never a data volume.
    assert "volumes" not in api
    assert (ROOT / "Dockerfile").is_file()


def test_sample_collection_is_ingested_once(tmp_path, embedded_engine):
    from app.services import SAMPLE_COLLECTION, Services
    from app.settings import Settings

    services = Services.load(Settings(data_dir=tmp_path), AppMetrics(CollectorRegistry()), embedded_engine)
    try:
        job = services.ingestor.wait(services.ingest_sample_collection(), timeout=600)
        assert job.status == "done", job.error
        assert len(services.retrieval.list_documents()) == len(list(SAMPLE_COLLECTION.iterdir())) >= 6
        assert services.ingest_sample_collection() is None
    finally:
        services.close()


def test_the_probe_weights_setting_reaches_the_engine(tmp_path, monkeypatch):
    from pydantic import ValidationError

    from app.services import Services
    from app.settings import Settings

    monkeypatch.setenv("SAMKV_PROBE_WEIGHTS", "int4")
    with pytest.raises(ValidationError, match="probe_weights"):
        Settings(data_dir=tmp_path)
    monkeypatch.setenv("SAMKV_PROBE_WEIGHTS", "int8")
    settings = Settings(data_dir=tmp_path, model="smollm2-135m-instruct", engine_self_check=False)
    assert settings.probe_weights == "int8"
    services = Services.load(settings, AppMetrics(CollectorRegistry()))
    try:
        engine = services.engine
        assert engine.probe_ops is not engine.ops
        assert engine.probe_ops.layers is not engine.ops.layers
    finally:
        services.close()
