"""Request and response models of the HTTP API (docs/ARCHITECTURE.md, "Public HTTP surface")."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from samkv.methods import METHODS

# The engine's registry names the methods; a new one appears in the schema without an edit here.
Method = Literal[tuple(METHODS)]  # type: ignore[valid-type]
Scalar = str | int | float | bool | None


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str


class ErrorResponse(BaseModel):
    """Every error, in OpenAI's shape."""

    error: ErrorDetail


# --- documents and jobs -----------------------------------------------------------------------


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, min_length=1, max_length=200, pattern=r"^[\w.:-]+$")
    text: str = Field(..., min_length=1)
    metadata: dict[str, Any] | None = None

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("text must not be blank")
        return value


class DocumentsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    documents: list[DocumentIn] = Field(..., min_length=1)


JobStatus = Literal["queued", "running", "done", "failed"]


class JobOut(BaseModel):
    """An ingestion job: `progress` goes from 0 to 1 (indexing, then storing KV caches)."""

    job_id: str
    status: JobStatus
    progress: float
    error: str | None = None
    document_ids: list[str]
    documents_total: int
    documents_indexed: int
    chunks_total: int
    chunks_stored: int
    created_at: datetime
    updated_at: datetime


class IngestAccepted(BaseModel):
    """The answer to an ingest: the job to poll and the ids the documents got; with
    `?wait=true`, also the job's final state."""

    job_id: str
    document_ids: list[str]
    status: JobStatus | None = None
    progress: float | None = None
    error: str | None = None


class ChunkOut(BaseModel):
    id: int
    position: int
    text: str
    token_count: int


class DocumentOut(BaseModel):
    id: str
    metadata: dict[str, Any]
    state: str
    created_at: datetime
    updated_at: datetime
    chunk_count: int
    text: str | None = None
    chunks: list[ChunkOut] | None = None


class DocumentList(BaseModel):
    documents: list[DocumentOut]
    total: int


class Deleted(BaseModel):
    id: str
    deleted: bool = True


# --- query ----------------------------------------------------------------------------------


class GenerationOptions(BaseModel):
    """Retrieval and generation knobs shared by /v1/query and chat completions' extra fields."""

    top_k: int | None = Field(None, ge=1, le=64)
    method: Method | None = None
    keep_ratio: float | None = Field(None, gt=0.0, le=1.0)
    filters: dict[str, Scalar] | None = None
    include_selection: bool = Field(
        False,
        description="Also return, per source, which of its tokens the method kept in the "
        "decoding cache and which it recomputed, as character spans of the source's `text` "
        "(`selection` in the answer; when streaming, in the `done` event of /v1/query or on "
        "the last chunk of chat completions).",
    )


class QueryIn(GenerationOptions):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(..., min_length=1)
    max_new_tokens: int | None = Field(None, ge=1, le=2048)
    stream: bool = False


class Source(BaseModel):
    document_id: str
    chunk_id: int
    score: float
    text: str


class CharSpan(BaseModel):
    """A run of adjacent tokens, as character offsets into a source's `text`."""

    start: int = Field(..., ge=0, description="Offset of the run's first character.")
    end: int = Field(..., ge=0, description="Offset one past the run's last character.")


class SourceSelection(BaseModel):
    """What the method did with one source's tokens, in the order of `sources`."""

    document_id: str
    chunk_id: int
    tokens: int = Field(..., description="The source's tokens in the context.")
    kept_tokens: int = Field(..., description="Tokens whose KV entries the answer was decoded with.")
    recomputed_tokens: int = Field(
        ..., description="Tokens whose KV entries were recomputed over the assembled context "
        "rather than reused as stored."
    )
    kept_share: float = Field(..., ge=0.0, le=1.0, description="`kept_tokens / tokens`.")
    kept: list[CharSpan] = Field(..., description="Kept tokens, adjacent ones merged into runs.")
    recomputed: list[CharSpan] = Field(
        ..., description="Recomputed tokens, adjacent ones merged into runs."
    )


class QueryOut(BaseModel):
    answer: str
    sources: list[Source]
    stats: dict[str, Any]
    selection: list[SourceSelection] | None = Field(
        None, description="With `include_selection`: one entry per source, in the same order."
    )


# --- chat completions (OpenAI-compatible) ---------------------------------------------------


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        """The message's text (text parts joined; other parts ignored)."""
        if isinstance(self.content, list):
            return "".join(part.text or "" for part in self.content if part.type == "text")
        return self.content or ""


class ChatCompletionIn(GenerationOptions):
    # OpenAI clients send fields we do not use (user, logprobs, ...): accept and ignore them.
    model_config = ConfigDict(extra="allow")

    model: str = "samkv-rag"
    messages: list[ChatMessage] = Field(..., min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1, le=2048)
    max_completion_tokens: int | None = Field(None, ge=1, le=2048)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None
    n: int = Field(1, ge=1, le=1)
