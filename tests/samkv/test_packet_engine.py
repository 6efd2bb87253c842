"""SamKV's "packet" mode through the engine: the question reads only the sparse cache, and a
whole answer on the embedded model."""

from __future__ import annotations

import dataclasses
import math

import torch

from samkv.cache import KVMeter
from samkv.methods.base import PlanContext
from samkv.methods.samkv.packet import packet_scores, reserved_tokens
from samkv.stages import StageClock
from tests.conftest import DOCUMENTS

QUESTION = "What is the vault code at the Oriel bank?"


def _scores(engine, docs, sink=2, local=3):
    request = engine.request(QUESTION, docs, "samkv")
    context = PlanContext(
        engine.ops, engine.prefix, request.source, request.layout, request.context_ids, request.question_ids,
        engine.prompt, request.answer_prefix, KVMeter(), StageClock(), engine.probe_ops,
    )
    return request.layout, packet_scores(context, sink, local, range(1, 3), 8)


def _with_values_changed(doc, index):
    values = doc.values.clone()
    values[:, :, index] += 3.0
    return dataclasses.replace(doc, values=values)


def test_the_question_query_reads_only_the_sink_and_local_tokens(tiny_engine):
    """A token's values reach the scores only through the question's attention: changing a
    middle token's values changes nothing, changing a local token's values changes every score."""
    engine = tiny_engine("llama")
    docs = engine.encode_documents(DOCUMENTS)
    layout, scores = _scores(engine, docs)
    assert scores.shape == (layout.context_len,) and scores.dtype == torch.float32
    assert bool(torch.isfinite(scores).all())
    middle = int((~reserved_tokens(layout, 2, 3)).nonzero()[0, 0])
    doc, within = int(layout.doc_of[middle]), middle - int(layout.offsets[layout.doc_of[middle]])
    changed = [*docs[:doc], _with_values_changed(docs[doc], within), *docs[doc + 1 :]]
    assert torch.equal(_scores(engine, changed)[1], scores)
    local = [*docs[:doc], _with_values_changed(docs[doc], docs[doc].length - 1), *docs[doc + 1 :]]
    assert not torch.allclose(_scores(engine, local)[1], scores)


def test_packet_mode_answers_on_the_embedded_model_within_the_budget(embedded_engine):
    docs = embedded_engine.encode_documents(DOCUMENTS)
    request = embedded_engine.request(QUESTION, docs, "samkv", {"complement_mode": "packet", "block_size": 4,
                                                                 "keep_ratio": 0.6})
    layout = request.layout
    built = embedded_engine.prepare(request, extra=0)
    assert built.keep.numel() == math.ceil(0.6 * layout.context_len)
    # The assembly may leave the first document's stored KV as it is (it sees there what it saw
    # at encoding); every other kept token is recomputed.
    assert set(built.recomputed.tolist()) <= set(built.keep.tolist())
    assert set(built.keep[layout.doc_of[built.keep] > 0].tolist()) <= set(built.recomputed.tolist())
    assert bool(torch.isin(reserved_tokens(layout, 4, 8).nonzero().squeeze(1), built.keep).all())
    result = embedded_engine.generate(QUESTION, docs, "samkv", complement_mode="packet", block_size=4,
                                      keep_ratio=0.6, max_new_tokens=8, answer_prefix="The answer is:")
    assert result.text.strip()
    assert result.stats["kept_tokens"] == built.keep.numel()
    assert result.stats["recomputed_tokens"] == built.recomputed.numel()


def test_packet_mode_at_full_budget_without_fuse_equals_full(tiny_engine):
    """ρ = 1 keeps and recomputes every token; only fuse < 1 (its default 0.9) keeps it from full."""
    engine = tiny_engine("llama")
    docs = engine.encode_documents(DOCUMENTS)
    full = engine.question_logits(QUESTION, docs, method="full")

    def diff(**params):
        logits = engine.question_logits(QUESTION, docs, "samkv", complement_mode="packet", keep_ratio=1.0, **params)
        return float((full - logits).abs().max() / full.abs().max())

    assert diff(fuse=1.0) < 1e-5
    assert diff() > 1e-3
