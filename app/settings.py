"""The one settings class of the service: every knob, overridable by `SAMKV_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Service settings. Environment variables use the `SAMKV_` prefix (`REDIS_URL` is also read)."""

    model_config = SettingsConfigDict(env_prefix="SAMKV_", extra="ignore")

    # Storage locations
    data_dir: Path = Field(Path("./data"), description="Index, document store and disk KV tier.")
    cache_dir: Path = Field(
        Path("~/.cache/samkv-rag"), description="Converted models, shared by every data dir."
    )

    # Models and runtime
    model: str = Field(
        "qwen2.5-coder-0.5b-instruct",
        description="An embedded model (qwen2.5-coder-0.5b-instruct, smollm2-135m-instruct) or a "
        "local checkpoint path; empty means the default, qwen2.5-coder-0.5b-instruct.",
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    dtype: str = Field("auto", description="auto, float32, bfloat16 or float16.")
    weights: Literal["float", "int8"] = Field(
        "float",
        description="float: the weights in `dtype`; int8: int8 weight-only linear layers, for faster "
        "decoding on the CPU. Stored caches belong to one setting (it is part of the fingerprint).",
    )
    probe_weights: Literal["model", "int8"] = Field(
        "model",
        description="What SamKV's probe (and snapkv's observation) runs on: the model's own "
        "layers, or int8 copies of them beside the model (a quarter of the bytes per pass, "
        "faster on the CPU); encoding, recompute and decoding keep `weights` either way.",
    )
    probe_hold_bytes: int = Field(
        0,
        ge=0,
        description="Stored KV bytes a request keeps from SamKV's probe so its assembly need not "
        "read those layers again (the peak KV then includes them); 0 keeps nothing, and every "
        "probed layer is read twice (from the page cache or the memory tier, the second time).",
    )
    embedding_model: str = Field(
        "", description="Empty for the embedded all-MiniLM-L6-v2, else a local model path."
    )
    engine_self_check: bool = Field(
        True,
        description="Check at load that KV reuse is exact on this model (seconds on a CPU); "
        "turn off only where restarts must be fast and the model is known to pass.",
    )

    # Generation defaults (per request overridable)
    method: str = Field("samkv", description="Default reuse method of a query.")
    keep_ratio: float = Field(0.15, gt=0.0, le=1.0)
    top_k: int = Field(8, ge=1, le=64)
    max_new_tokens: int = Field(64, ge=1, le=2048)
    chunk_tokens: int = Field(256, ge=16, le=4096, description="Chunk size in model tokens.")
    chunk_overlap: int = Field(0, ge=0, le=1024)

    # KV store
    redis_url: str = Field(
        "", validation_alias=AliasChoices("SAMKV_REDIS_URL", "REDIS_URL", "redis_url")
    )
    redis_ttl_s: int = Field(7 * 24 * 3600, ge=1)
    memory_tier_bytes: int = Field(512 * 1024**2, ge=0)
    kv_storage_dtype: str = Field("float16", description="float16, bfloat16 or int8.")

    # Service
    api_keys: str = Field("", description="Comma-separated API keys; empty disables auth.")
    public_reads: bool = Field(
        False,
        description="With API keys set, let reads (listing, jobs, questions, metrics) through "
        "without a key; writes (ingest, delete) always need one.",
    )
    max_concurrent_generations: int = Field(2, ge=1, le=64)
    max_queued_generations: int = Field(32, ge=0, le=10_000)
    max_question_chars: int = Field(4000, ge=1)
    max_new_tokens_limit: int = Field(
        2048, ge=1, le=2048, description="The most tokens one request may ask to generate."
    )
    max_top_k: int = Field(64, ge=1, le=64, description="The most chunks one request may retrieve.")
    max_request_bytes: int = Field(20 * 1024**2, ge=1024)
    max_documents_per_request: int = Field(256, ge=1)
    max_queued_ingest_jobs: int = Field(64, ge=1, le=10_000)
    ingest_batch_size: int = Field(8, ge=1, le=256, description="Chunks encoded per forward pass.")
    retry_after_s: int = Field(5, ge=1, description="Retry-After sent with 503 when overloaded.")
    redis_prefix: str = Field("samkv:kv:", description="Key prefix of the Redis KV tier.")
    host: str = Field("127.0.0.1", description="Address `samkv-rag serve` listens on.")
    port: int = Field(8000, ge=0, le=65535)
    sample_collection: bool = Field(
        False, description="Ingest the bundled sample collection on start when no document is stored."
    )

    # Shared state and replicas
    database_url: str = Field(
        "",
        description="postgresql://user@host/db for documents, chunks and jobs shared by replicas; "
        "empty for SQLite under the data dir (one process).",
    )
    worker: bool = Field(
        True, description="`serve` also runs an ingestion worker; false for an API-only replica."
    )
    job_lease_s: float = Field(
        30.0, gt=0, le=3600, description="A job whose worker stops renewing it is reclaimed after this."
    )
    job_heartbeat_s: float = Field(5.0, gt=0, le=600, description="How often a worker renews its lease.")
    job_max_attempts: int = Field(3, ge=1, le=100, description="Claims before a job is failed.")
    job_poll_s: float = Field(0.5, gt=0, le=60, description="How often an idle worker looks for jobs.")
    index_poll_s: float = Field(
        0.25, gt=0, le=60, description="How often the index applies other replicas' changes."
    )
    change_log_keep: int = Field(
        100_000, ge=1,
        description="Versions of the shared change log kept; a replica further behind rebuilds its index.",
    )

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> Settings:
        if self.job_heartbeat_s >= self.job_lease_s:
            raise ValueError(
                f"job_heartbeat_s ({self.job_heartbeat_s}) must be shorter than job_lease_s "
                f"({self.job_lease_s})"
            )
        return self

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        # Imported here: the engine's registry loads torch, which a settings read should not.
        from samkv.methods import METHODS

        if value not in METHODS:
            raise ValueError(f"unknown method {value!r}; expected one of {', '.join(METHODS)}")
        return value

    @model_validator(mode="after")
    def _defaults_within_limits(self) -> Settings:
        for default, limit in (("max_new_tokens", "max_new_tokens_limit"), ("top_k", "max_top_k")):
            if getattr(self, default) > getattr(self, limit):
                raise ValueError(
                    f"{default} ({getattr(self, default)}) exceeds {limit} ({getattr(self, limit)})"
                )
        return self

    @property
    def api_key_list(self) -> list[str]:
        return [key.strip() for key in self.api_keys.split(",") if key.strip()]

    @property
    def resolved_cache_dir(self) -> Path:
        return self.cache_dir.expanduser()
