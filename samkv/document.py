"""What is stored per document chunk, and the layer-by-layer interface the engine reads it through."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class DocumentKV:
    """A chunk's KV cache, computed once after the shared prompt prefix P.

    Keys and summary queries are stored *before* the rotary embedding, so the engine can place
    the chunk at any position of a later prompt.
    """

    token_ids: torch.Tensor  # [L] int64
    keys: torch.Tensor  # [n_layers, n_kv_heads, L, head_dim], before RoPE
    values: torch.Tensor  # [n_layers, n_kv_heads, L, head_dim]
    summary_queries: torch.Tensor  # [n_layers, n_heads, w, head_dim], before RoPE
    fingerprint: str  # model weights + tokenizer + prompt template
    prefix_len: int  # |P| the chunk was encoded after

    def __post_init__(self) -> None:
        n_layers, _, length, _ = self.keys.shape
        if self.values.shape != self.keys.shape:
            raise ValueError(f"values {tuple(self.values.shape)} != keys {tuple(self.keys.shape)}")
        if self.token_ids.shape != (length,):
            raise ValueError(f"token_ids {tuple(self.token_ids.shape)} != ({length},)")
        if self.summary_queries.shape[0] != n_layers:
            raise ValueError("summary_queries must have one entry per layer")

    @property
    def length(self) -> int:
        return int(self.token_ids.shape[0])

    @property
    def num_layers(self) -> int:
        return int(self.keys.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.keys.dtype

    @property
    def meta(self) -> DocumentMeta:
        return DocumentMeta(self.token_ids, self.fingerprint, self.prefix_len)

    def layer(self, layer: int) -> LayerKV:
        return LayerKV(self.keys[layer], self.values[layer], self.summary_queries[layer])

    @property
    def nbytes(self) -> int:
        return sum(
            t.numel() * t.element_size()
            for t in (self.token_ids, self.keys, self.values, self.summary_queries)
        )


@dataclass(frozen=True)
class DocumentMeta:
    """What the engine needs of a document before it reads any layer."""

    token_ids: torch.Tensor  # [L] int64
    fingerprint: str
    prefix_len: int

    @property
    def length(self) -> int:
        return int(self.token_ids.shape[0])


@dataclass(frozen=True)
class LayerKV:
    """One layer of one document's stored cache."""

    keys: torch.Tensor  # [n_kv_heads, L, head_dim], before RoPE
    values: torch.Tensor  # [n_kv_heads, L, head_dim]
    summary_queries: torch.Tensor  # [n_heads, w, head_dim], before RoPE


@runtime_checkable
class DocumentSource(Protocol):
    """The retrieved documents of one request, in prompt order, readable one layer at a time.

    The engine never asks for more than one layer at once, so a source backed by a store can
    stream layers instead of materialising every document's whole cache.
    """

    @property
    def documents(self) -> Sequence[DocumentMeta]: ...

    def read_layer(self, layer: int, documents: Sequence[int] | None = None) -> list[LayerKV]:
        """Layer `layer` of the documents at `documents` (indices in prompt order, ascending;
        None: every document), in that order. A source backed by a store reads no other."""
        ...


class InMemorySource:
    """A `DocumentSource` over `DocumentKV` objects already in memory."""

    def __init__(self, documents: Sequence[DocumentKV]) -> None:
        self._documents = list(documents)

    @property
    def documents(self) -> list[DocumentMeta]:
        return [doc.meta for doc in self._documents]

    def read_layer(self, layer: int, documents: Sequence[int] | None = None) -> list[LayerKV]:
        return [doc.layer(layer) for doc in select(self._documents, documents)]


def select(items: Sequence[T], indices: Sequence[int] | None) -> list[T]:
    """`items` at `indices` in that order; all of them for None."""
    return list(items) if indices is None else [items[i] for i in indices]
