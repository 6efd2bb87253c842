"""A validated request, and the decoding cache a method prepared for it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from samkv.cache import KVCache, KVMeter
from samkv.document import DocumentSource
from samkv.layout import Layout
from samkv.methods import Method
from samkv.stages import StageClock


@dataclass(frozen=True)
class Request:
    """A question over documents, checked: every generation entry point starts from one."""

    method: Method
    source: DocumentSource
    layout: Layout
    context_ids: torch.Tensor  # [N] the documents' token ids, in prompt order
    question_ids: torch.Tensor  # [|Q|], the answer prefix included
    answer_prefix: str


@dataclass
class Prepared:
    """The decoding cache [P ; kept context (; question)] that `Engine.prepare` assembled for a request."""

    request: Request
    cache: KVCache
    meter: KVMeter
    clock: StageClock
    keep: torch.Tensor  # [K] sorted context indices kept (by any KV head)
    recomputed: torch.Tensor  # [R] sorted context indices recomputed through the last layer
    cached_tokens: int  # context entries per layer and KV head in the cache
    logits: torch.Tensor | None = None  # [1, vocab] of the question's last token, when it was assembled

    @property
    def kept_per_document(self) -> list[list[int]]:
        return per_document(self.keep, self.request.layout)

    @property
    def recomputed_per_document(self) -> list[list[int]]:
        return per_document(self.recomputed, self.request.layout)


def per_document(indices: torch.Tensor, layout: Layout) -> list[list[int]]:
    """Context indices [K] as token indices within each document's own encoded tokens."""
    indices = indices.cpu()
    docs = layout.doc_of[indices]
    within = indices - layout.offsets[docs] if indices.numel() else indices
    return [within[docs == i].tolist() for i in range(layout.num_docs)]
