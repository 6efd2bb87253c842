"""Load throughput of each tier against the raw speed of its medium.

    python -m app.bench.store_bench --data-dir /tmp/kvbench --redis-url redis://127.0.0.1:6379/0

For every tier alone (memory, Redis, disk) it stores `docs` synthetic caches with the embedded
model's shapes and times full loads (`TieredStore.get`) and layer-wise loads (a `StoreSource`
read layer by layer), next to reading the same bytes raw from the same medium, with nothing
decoded or verified: the ratio is how close the store comes to that physical limit.

Raw reads, each the fastest plain way to get those bytes into fresh process memory:
memory, a copy of each document's blob (the faster of bytearray and numpy); disk, each of the tier's own files read into an
uninitialised buffer, the faster of one `readinto` and 1 MiB pieces (warm page cache); Redis,
the faster of a GET per document of a string holding its blob and an HGET of each field of the
tier's own hashes (redis-py buffers a large reply in several copies, so many small replies can
beat one large one).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import redis
import torch

from kvstore import (
    DiskTier,
    MemoryTier,
    RedisTier,
    StorageFormat,
    StoredDocument,
    StoreKey,
    Tier,
    TieredStore,
)
from kvstore.checksum import CHECKSUM_ALGORITHMS, DEFAULT_CHECKSUM
from kvstore.codec import encode
from kvstore.disk_layout import to_blob
from samkv.document import DocumentKV, DocumentSource

FINGERPRINT = "kvstore-benchmark"
# SmolLM2-135M, the embedded model
DEFAULT_FORMAT = StorageFormat()
EMBEDDED_SHAPES = {"n_layers": 30, "n_kv_heads": 3, "head_dim": 64, "n_heads": 9, "window": 8}
# Reading a page-cached file in pieces of this size beat one whole-file read on the dev box.
_RAW_CHUNK_BYTES = 2**20


def synthetic_document(
    seed: int, length: int, n_layers: int, n_kv_heads: int, head_dim: int, n_heads: int, window: int
) -> DocumentKV:
    """A random cache with the given shapes."""
    g = torch.Generator().manual_seed(seed)
    kv_shape = (n_layers, n_kv_heads, length, head_dim)
    return DocumentKV(
        token_ids=torch.randint(0, 49152, (length,), generator=g),
        keys=torch.randn(kv_shape, generator=g),
        values=torch.randn(kv_shape, generator=g),
        summary_queries=torch.randn((n_layers, n_heads, window, head_dim), generator=g),
        fingerprint=FINGERPRINT,
        prefix_len=32,
    )


def read_all_layers(source: DocumentSource) -> None:
    """Consume a source the way the engine's probe pass does: every layer once, in order."""
    num_layers = getattr(source, "num_layers", None)
    if num_layers is None:
        raise TypeError("read_all_layers needs a source with num_layers")
    for layer in range(num_layers):
        source.read_layer(layer)


def _interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, timed in turn within each round.

    Taking turns exposes every function to the same background load, which on a shared machine
    drifts more between consecutive measurements than the differences being measured.
    """
    for fn in fns.values():
        fn()  # warm-up: connections, page cache, lazy allocations
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def measure_source(
    make_source: Callable[[], DocumentSource],
    consume: Callable[[DocumentSource], object] = read_all_layers,
    repeats: int = 5,
) -> float:
    """Median seconds to open a source and consume it.

    With the engine's prefill-and-first-token as `consume`, this is the time to first token of
    a request whose documents come from the tier behind `make_source`.
    """
    return _interleaved_medians({"source": lambda: consume(make_source())}, repeats)["source"]


def _read_file(path: Path, chunk_bytes: int | None = None) -> np.ndarray:
    """A file's bytes in new memory: one read, or reads of `chunk_bytes` (often faster)."""
    with open(path, "rb", buffering=0) as f:
        out = np.empty(os.fstat(f.fileno()).st_size, np.uint8)
        step = chunk_bytes or out.nbytes
        for start in range(0, out.nbytes, step):
            f.readinto(out[start : start + step])
    return out


@contextlib.contextmanager
def _raw_reads(
    tier: Tier, keys: list[StoreKey], blobs: list[bytes], redis_url: str
) -> Iterator[dict[str, Callable[[], object]]]:
    """Each plain way of reading the tier's bytes raw from its medium, by name."""
    if isinstance(tier, MemoryTier):
        yield {
            "bytearray": lambda: [bytearray(b) for b in blobs],
            "numpy copy": lambda: [np.frombuffer(b, np.uint8).copy() for b in blobs],
        }
        return
    if isinstance(tier, DiskTier):
        paths = [tier.path(key) for key in keys]
        yield {
            "readinto": lambda: [_read_file(p) for p in paths],
            "readinto 1 MiB": lambda: [_read_file(p, _RAW_CHUNK_BYTES) for p in paths],
        }
        return
    if not isinstance(tier, RedisTier):
        raise TypeError(f"no raw read for tier {tier.name!r}")
    client = redis.Redis.from_url(redis_url)
    names = [f"kvstore-benchmark:raw:{uuid.uuid4().hex}:{i}" for i in range(len(blobs))]
    hashes = [tier.redis_key(key) for key in keys]
    try:
        for name, blob in zip(names, blobs):
            client.set(name, blob, ex=600)
        fields = [(h, f) for h in hashes for f in client.hkeys(h)]
        yield {
            "get": lambda: [client.get(n) for n in names],
            "hget": lambda: [client.hget(h, f) for h, f in fields],
        }
    finally:
        client.delete(*names)
        client.close()


def run_benchmark(
    data_dir: Path,
    redis_url: str,
    *,
    docs: int = 8,
    doc_tokens: int = 300,
    repeats: int = 5,
    storage_format: StorageFormat = DEFAULT_FORMAT,
    shapes: dict[str, int] | None = None,
) -> dict:
    """Full and layer-wise load throughput per tier, the raw medium's, and their ratios (MB/s)."""
    shapes = shapes or EMBEDDED_SHAPES
    workdir = Path(data_dir) / f"kvstore-benchmark-{uuid.uuid4().hex[:8]}"
    workdir.mkdir(parents=True)
    documents = [synthetic_document(i, doc_tokens, **shapes) for i in range(docs)]
    stored = [encode(doc, storage_format) for doc in documents]
    nbytes = sum(s.nbytes for s in stored)
    tiers: list[Tier] = [MemoryTier(4 * nbytes + 2**20)]
    if redis_url:
        prefix = f"kvstore-benchmark:{uuid.uuid4().hex}:"
        tiers.append(RedisTier(redis_url, prefix=prefix, ttl_s=600))
    tiers.append(DiskTier(workdir))

    results: dict = {
        "docs": docs,
        "doc_tokens": doc_tokens,
        "shapes": shapes,
        "storage": (
            f"{storage_format.dtype}/{storage_format.quantization}/{storage_format.checksum}"
        ),
        "bytes": nbytes,
        "tiers": {},
    }
    try:
        for tier in tiers:
            results["tiers"][tier.name] = _measure_tier(
                tier, stored, redis_url, repeats, storage_format
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def _measure_tier(
    tier: Tier,
    stored: list[StoredDocument],
    redis_url: str,
    repeats: int,
    storage_format: StorageFormat,
) -> dict:
    store = TieredStore(FINGERPRINT, [tier], storage_format=storage_format)
    keys: list[StoreKey] = [store.key(f"benchmark chunk {i}") for i in range(len(stored))]
    for key, s in zip(keys, stored):
        tier.put(key, s)
    blobs = [to_blob(s) for s in stored]
    try:
        with _raw_reads(tier, keys, blobs, redis_url) as raw_reads:
            seconds = _interleaved_medians(
                {
                    "full": lambda: [store.get(k) for k in keys],
                    "layerwise": lambda: read_all_layers(store.source(keys, backfill=False)),
                    **raw_reads,
                },
                repeats,
            )
    finally:
        for key in keys:
            tier.delete(key)
    full, layered = seconds.pop("full"), seconds.pop("layerwise")
    raw_way, raw = min(seconds.items(), key=lambda item: item[1])
    mb = sum(s.nbytes for s in stored) / 1e6
    return {
        "full_mb_s": mb / full,
        "layerwise_mb_s": mb / layered,
        "raw_mb_s": mb / raw,
        "raw_way": raw_way,
        "raw_ms_by_way": {way: t * 1e3 for way, t in seconds.items()},
        "full_ms": full * 1e3,
        "layerwise_ms": layered * 1e3,
        "raw_ms": raw * 1e3,
        "full_vs_raw": raw / full,
        "layerwise_vs_raw": raw / layered,
    }


def format_table(results: dict) -> str:
    """The results of `run_benchmark` as a plain-text table."""
    title = (
        f"{results['docs']} documents x {results['doc_tokens']} tokens, {results['storage']}, "
        f"{results['bytes'] / 1e6:.1f} MB of tensors"
    )
    columns = (
        f"{'tier':8} {'full MB/s':>10} {'layer MB/s':>11} {'raw MB/s':>10} {'full/raw':>9} "
        f"{'layer/raw':>10}  raw read"
    )
    lines = [title, columns]
    for name, r in results["tiers"].items():
        lines.append(
            f"{name:8} {r['full_mb_s']:10.0f} {r['layerwise_mb_s']:11.0f} {r['raw_mb_s']:10.0f} "
            f"{r['full_vs_raw']:9.2f} {r['layerwise_vs_raw']:10.2f}  {r['raw_way']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=Path("./data"))
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("SAMKV_REDIS_URL") or os.environ.get("REDIS_URL", ""),
        help="empty: skip the Redis tier",
    )
    parser.add_argument("--docs", type=int, default=8)
    parser.add_argument("--doc-tokens", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=["float16", "bfloat16"], default="float16")
    parser.add_argument("--quantization", choices=["none", "int8"], default="none")
    parser.add_argument("--checksum", choices=CHECKSUM_ALGORITHMS, default=DEFAULT_CHECKSUM)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    results = run_benchmark(
        args.data_dir,
        args.redis_url,
        docs=args.docs,
        doc_tokens=args.doc_tokens,
        repeats=args.repeats,
        storage_format=StorageFormat(args.dtype, args.quantization, args.checksum),
    )
    print(format_table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
