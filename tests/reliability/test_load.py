"""Load: 32 concurrent clients mix streamed questions and ingestion against a server subprocess
while its Redis tier is stopped and started again; nothing fails but deliberate 503s (retried
after Retry-After), and every ingested document can be found afterwards."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import pytest
import redis

from tests.reliability.facts import Fact, fact
from tests.reliability.harness import API_KEY, RedisProcess, ServerProcess, metric_value, percentile

pytestmark = pytest.mark.slow

CLIENTS = 32
REQUESTS_PER_CLIENT = 2
# Every fourth request ingests one new document; the rest ask streamed questions.
INGEST_EVERY = 4
SEED_FACTS = [fact(n) for n in range(4)]
# Tries per request, 503s included: bounds the run even if the server never frees a slot.
MAX_ATTEMPTS = 600
VERIFY_CONCURRENCY = 4


@dataclass
class LoadResult:
    latencies_s: dict[str, list[float]] = field(default_factory=lambda: {"query": [], "ingest": []})
    ttft_s: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    rejected_503: int = 0
    completed: int = 0
    ingested: list[Fact] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)


async def _streamed_question(
    http: httpx.AsyncClient, item: Fact, result: LoadResult
) -> httpx.Response:
    """Ask one streamed question; the response (a 200 was checked to be a complete stream)."""
    started = time.perf_counter()
    body = {"question": item.question, "stream": True, "max_new_tokens": 2}
    async with http.stream("POST", "/v1/query", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return response
        events: list[str] = []
        first_token: float | None = None
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                events.append(line[6:].strip())
                if events[-1] == "token" and first_token is None:
                    first_token = time.perf_counter() - started
    if events[:1] != ["sources"] or events[-1:] != ["done"] or "error" in events:
        result.failures.append(f"query {item.id}: events {events}")
    else:
        result.latencies_s["query"].append(time.perf_counter() - started)
        if first_token is not None:
            result.ttft_s.append(first_token)
    return response


async def _ingestion(http: httpx.AsyncClient, item: Fact, result: LoadResult) -> httpx.Response:
    started = time.perf_counter()
    response = await http.post("/v1/documents", params={"wait": "true"},
                               json={"documents": [item.document()]})
    if response.status_code == 200:
        if response.json()["status"] != "done":
            result.failures.append(f"ingest {item.id}: {response.json()}")
        else:
            result.latencies_s["ingest"].append(time.perf_counter() - started)
            result.ingested.append(item)
    return response


async def _client(http: httpx.AsyncClient, number: int, result: LoadResult,
                  progress: asyncio.Condition) -> None:
    for request in range(REQUESTS_PER_CLIENT):
        sequence = number * REQUESTS_PER_CLIENT + request
        if sequence % INGEST_EVERY == 0:
            item, call = fact(len(SEED_FACTS) + sequence), _ingestion
        else:
            item, call = SEED_FACTS[sequence % len(SEED_FACTS)], _streamed_question
        for _ in range(MAX_ATTEMPTS):
            try:
                response = await call(http, item, result)
            except httpx.HTTPError as error:
                result.failures.append(f"{call.__name__} {item.id}: {error!r}")
                break
            result.statuses[response.status_code] += 1
            if response.status_code != 503:
                if response.status_code != 200:
                    result.failures.append(f"{call.__name__} {item.id}: HTTP {response.status_code}")
                break
            # A deliberate refusal of a full queue: come back when the server says.
            result.rejected_503 += 1
            await asyncio.sleep(float(response.headers["retry-after"]))
        else:
            result.failures.append(f"{call.__name__} {item.id}: still refused after {MAX_ATTEMPTS} tries")
        async with progress:
            result.completed += 1
            progress.notify_all()


async def _redis_faults(redis_server: RedisProcess, result: LoadResult,
                        progress: asyncio.Condition, total: int) -> list[dict]:
    """Stop Redis a third of the way through the run and start it again at two thirds."""
    faults = []
    for share, action in ((1 / 3, redis_server.stop), (2 / 3, redis_server.start)):
        async with progress:
            await progress.wait_for(lambda s=share: result.completed >= total * s)
        await asyncio.to_thread(action)
        faults.append({"fault": f"redis {action.__name__}", "after_requests": result.completed})
    return faults


async def _run_load(url: str, redis_server: RedisProcess) -> tuple[LoadResult, list[dict], float]:
    result = LoadResult()
    progress = asyncio.Condition()
    total = CLIENTS * REQUESTS_PER_CLIENT
    limits = httpx.Limits(max_connections=CLIENTS + 4)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"},
                                 timeout=600, limits=limits) as http:
        started = time.perf_counter()
        faults = asyncio.create_task(_redis_faults(redis_server, result, progress, total))
        await asyncio.gather(*(_client(http, n, result, progress) for n in range(CLIENTS)))
        elapsed = time.perf_counter() - started
        return result, await faults, elapsed


async def _lost_documents(url: str, ingested: list[Fact]) -> list[str]:
    """Ingested documents that cannot be read back or are not retrieved for their question."""
    lost: list[str] = []
    gate = asyncio.Semaphore(VERIFY_CONCURRENCY)

    async def check(http: httpx.AsyncClient, item: Fact) -> None:
        async with gate:
            document = await http.get(f"/v1/documents/{item.id}")
            body = {"question": item.question, "top_k": 3, "max_new_tokens": 1, "method": "naive"}
            answer = await http.post("/v1/query", json=body)
        sources = [s["document_id"] for s in answer.json().get("sources", [])]
        if document.status_code != 200 or answer.status_code != 200 or item.id not in sources:
            lost.append(f"{item.id}: document {document.status_code}, query {answer.status_code}, "
                        f"sources {sources}")

    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"},
                                 timeout=600) as http:
        await asyncio.gather(*(check(http, item) for item in ingested))
    return lost


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"count": len(values), "p50_s": round(percentile(values, 0.5), 3),
            "p99_s": round(percentile(values, 0.99), 3), "max_s": round(max(values), 3)}


def test_concurrent_load_with_redis_stopped_and_restarted(
    start_server, private_redis: RedisProcess, figures
):
    server: ServerProcess = start_server(
        redis_url=private_redis.url,
        # No in-process tier: every cache read goes to Redis or, while it is down, to disk.
        memory_tier_bytes=0,
        max_concurrent_generations=2,
        max_queued_generations=8,
        # The cheapest method keeps the run short; every method reads the same stored caches.
        method="naive",
    )
    server.start()
    with server.client() as client:
        seeded = client.post("/v1/documents", params={"wait": "true"},
                             json={"documents": [f.document() for f in SEED_FACTS]})
        assert seeded.status_code == 200 and seeded.json()["status"] == "done", seeded.text

    result, faults, elapsed = asyncio.run(_run_load(server.url, private_redis))
    lost = asyncio.run(_lost_documents(server.url, result.ingested))

    with server.client() as client:
        metrics = client.get("/metrics").text
    redis_unavailable = metric_value(metrics, "kvstore_tier_unavailable_total", tier="redis")
    with redis.Redis.from_url(private_redis.url) as after_restart:
        redis_keys = after_restart.dbsize()

    total = CLIENTS * REQUESTS_PER_CLIENT
    figures["load"] = {
        "clients": CLIENTS,
        "requests": total,
        "requests_served": result.completed - len(result.failures),
        "failed_requests": len(result.failures),
        "deliberate_503_retried": result.rejected_503,
        "http_statuses": {str(k): v for k, v in sorted(result.statuses.items())},
        "faults_injected": faults,
        "redis_unavailable_events": redis_unavailable,
        "redis_keys_after_restart": redis_keys,
        "documents_ingested": len(result.ingested),
        "documents_lost": len(lost),
        "wall_s": round(elapsed, 1),
        "latency_streamed_query": _summary(result.latencies_s["query"]),
        "time_to_first_token": _summary(result.ttft_s),
        "latency_ingest_wait": _summary(result.latencies_s["ingest"]),
    }
    assert result.failures == []
    assert result.completed == total
    assert len(result.ingested) == total // INGEST_EVERY
    assert lost == []
    assert len(faults) == 2
    # The outage was seen by the store (and survived), and Redis took writes again afterwards.
    assert redis_unavailable >= 1
    assert redis_keys > 0
