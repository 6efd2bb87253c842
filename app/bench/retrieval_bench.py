"""Query latency and ingestion throughput of the index kinds, next to NumPy brute force.

Run with ``python -m app.bench.retrieval_bench``. Embedding 100k chunks with MiniLM on a small CPU
takes too long, so embedding throughput is measured on a sample of real chunks, and the
collections are made of those real embeddings repeated with small random perturbations
(re-normalised). The output says so.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable, Sequence

import numpy as np

from retrieval.embedding import Embedder
from retrieval.vector_index import VectorIndex

_WORDS = [
    "the",
    "committee",
    "reviewed",
    "annual",
    "budget",
    "river",
    "station",
    "harbour",
    "engineer",
    "archive",
    "records",
    "contract",
    "signed",
    "during",
    "winter",
    "summer",
    "report",
    "shows",
    "growth",
    "decline",
    "museum",
    "library",
    "research",
    "team",
    "measured",
    "temperature",
    "pressure",
    "samples",
    "collected",
    "north",
    "south",
    "valley",
    "company",
    "opened",
    "office",
    "hired",
    "staff",
    "policy",
    "changed",
    "after",
    "meeting",
    "agreed",
    "plan",
    "schedule",
]


def synthetic_chunks(count: int, words_per_chunk: int = 180, seed: int = 0) -> list[str]:
    """Chunk-sized English-like texts (~180 words, near the 256-token chunk default)."""
    rng = random.Random(seed)
    chunks = []
    for i in range(count):
        words = [rng.choice(_WORDS) for _ in range(words_per_chunk)]
        for at in range(0, words_per_chunk, 12):
            words[at] = words[at].capitalize()
        chunks.append(f"Record {i}. " + " ".join(words) + ".")
    return chunks


# Distance of a query from the collection vector it was made from (unit vectors; real
# MiniLM embeddings of unrelated chunks are about 1.1 to 1.4 apart).
_NOISE_NORM = 0.25


def _latencies_ms(search: Callable[[np.ndarray], object], queries: np.ndarray) -> np.ndarray:
    times = []
    for query in queries:
        start = time.perf_counter()
        search(query[None, :])
        times.append((time.perf_counter() - start) * 1000)
    return np.array(times)


def _collection(base: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` unit vectors spread over the span of the real embeddings in `base`: random
    mixtures of two of them, perturbed, so copies of one sample do not form tight clusters."""
    first, second = rng.integers(0, len(base), (2, size))
    weight = rng.uniform(0, 1, (size, 1))
    return _perturbed(weight * base[first] + (1 - weight) * base[second], rng)


def _perturbed(vectors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors at a distance of about `_NOISE_NORM` from `vectors`."""
    noise = rng.normal(0, _NOISE_NORM / np.sqrt(vectors.shape[1]), vectors.shape)
    moved = (vectors + noise).astype(np.float32)
    return moved / np.linalg.norm(moved, axis=1, keepdims=True)


def run_benchmark(
    sizes: Sequence[int] = (10_000, 100_000),
    queries: int = 200,
    embed_sample: int = 2_000,
    top_k: int = 8,
    embedder: Embedder | None = None,
    seed: int = 0,
) -> dict:
    """Measure embedding throughput on `embed_sample` chunks, then for each size the build
    throughput, single-query latency (p50, p99) and recall@top_k of flat and HNSW indexes
    against exact NumPy search over the same vectors."""
    embedder = embedder or Embedder()
    texts = synthetic_chunks(embed_sample, seed=seed)
    embedder.embed(texts[:8])  # first call pays for lazy initialisation
    start = time.perf_counter()
    base = embedder.embed(texts)
    embed_per_s = len(texts) / (time.perf_counter() - start)
    query_texts = [f"What did the report of record {i} say about the harbour?" for i in range(50)]
    query_embed_ms = _latencies_ms(lambda _: embedder.embed([query_texts[0]]), np.zeros((50, 1)))

    rng = np.random.default_rng(seed)
    rows = []
    for size in sizes:
        vectors = _collection(base, size, rng)
        ids = np.arange(1, size + 1, dtype=np.int64)
        picks = rng.integers(0, size, queries)
        query_vectors = _perturbed(vectors[picks], rng)

        def numpy_search(
            q: np.ndarray, vectors: np.ndarray = vectors, ids: np.ndarray = ids
        ) -> np.ndarray:
            scores = vectors @ q[0]
            best = np.argpartition(-scores, top_k)[:top_k]
            return ids[best[np.argsort(-scores[best])]]

        exact = [set(numpy_search(q[None, :]).tolist()) for q in query_vectors]
        latencies = _latencies_ms(numpy_search, query_vectors)
        rows.append(_row(size, "numpy brute force", None, latencies, 1.0))
        for kind in ("flat", "hnsw"):
            index = VectorIndex(vectors.shape[1], kind)
            start = time.perf_counter()
            index.add(ids, vectors)
            add_per_s = size / (time.perf_counter() - start)
            latencies = _latencies_ms(lambda q, index=index: index.search(q, top_k), query_vectors)
            found = [set(index.search(q[None, :], top_k)[1][0].tolist()) for q in query_vectors]
            recall = float(np.mean([len(f & e) / top_k for f, e in zip(found, exact)]))
            rows.append(_row(size, f"faiss {kind}", add_per_s, latencies, recall))
    return {
        "embedding": {
            "model": str(embedder.model_path),
            "device": embedder.device,
            "sample_chunks": len(texts),
            "chunks_per_s": embed_per_s,
            "query_embed_p50_ms": float(np.percentile(query_embed_ms, 50)),
        },
        "top_k": top_k,
        "queries": queries,
        "rows": rows,
        "note": (
            f"embedding measured on {len(texts)} real chunks; collections are random mixtures "
            "of two of those embeddings plus Gaussian noise, re-normalised; queries are "
            f"collection vectors moved by noise of norm {_NOISE_NORM}; recall is against "
            "exact NumPy search"
        ),
    }


def _row(
    size: int, method: str, add_per_s: float | None, latencies: np.ndarray, recall: float
) -> dict:
    return {
        "chunks": size,
        "method": method,
        "index_add_per_s": add_per_s,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "recall": recall,
    }


def format_table(result: dict) -> str:
    """The benchmark result as a plain-text table."""
    embedding = result["embedding"]
    embed_per_s = embedding["chunks_per_s"]
    lines = [
        (
            f"embedding: {embed_per_s:.1f} chunks/s on {embedding['device']} "
            f"({embedding['sample_chunks']} chunks of ~180 words); "
            f"query embedding p50 {embedding['query_embed_p50_ms']:.1f} ms"
        ),
        f"note: {result['note']}",
        "",
        (
            f"{'chunks':>8}  {'method':<18} {'index add/s':>12} {'ingest/s':>9} "
            f"{'p50 ms':>8} {'p99 ms':>8} {'recall@' + str(result['top_k']):>9}"
        ),
    ]
    for row in result["rows"]:
        add = row["index_add_per_s"]
        # Ingestion = embed then add, one after the other, per chunk.
        ingest = 1 / (1 / embed_per_s + 1 / add) if add else None
        lines.append(
            f"{row['chunks']:>8}  {row['method']:<18} "
            f"{f'{add:,.0f}' if add else '-':>12} {f'{ingest:.1f}' if ingest else '-':>9} "
            f"{row['p50_ms']:>8.3f} {row['p99_ms']:>8.3f} {row['recall']:>9.3f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--embed-sample", type=int, default=2_000)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    result = run_benchmark(
        args.sizes, args.queries, args.embed_sample, args.top_k, Embedder(device=args.device)
    )
    print(format_table(result))


if __name__ == "__main__":
    main()
