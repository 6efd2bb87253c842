"""SamKV: budget, floor and prefix; stored KV without recompute; the complementary term; peak KV."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from samkv.assembly import align_layer
from samkv.errors import InvalidRequest
from samkv.layout import Layout
from samkv.methods import make_method
from samkv.methods.samkv.entity import (
    entity_match_scores,
    entity_tokens,
    named_contexts,
    sentence_starts,
)
from samkv.methods.samkv.probe import ProbeScores
from samkv.selection import block_index, select_blocks
from tests.conftest import DOCUMENTS

QUESTION = "What is the vault code at the Oriel bank?"


def _prepare(engine, docs, question=QUESTION, **params):
    request = engine.request(question, docs, "samkv", params)
    return request, engine.prepare(request, extra=0)


class ConstructedEvidence:
    """What the probes would see, given directly: question scores, and fixed second-stage scores."""

    def __init__(self, question: torch.Tensor, match: torch.Tensor) -> None:
        self.question, self.match = question, match

    def probe(self, layers, with_complement, summary_window):
        zeros = torch.zeros_like(self.question)
        return ProbeScores(self.question, zeros, zeros)

    def reprobe(self, kept, layers):
        return torch.zeros_like(self.question)

    def entity_match(self, anchors, layers, threshold, max_contexts):
        return self.match


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 90), min_size=1, max_size=9),
    ratio=st.floats(0.001, 1.0),
    block=st.integers(1, 32),
    global_budget=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_selection_respects_budget_and_floor(lengths, ratio, block, global_budget, seed):
    layout = Layout.of(7, lengths)
    scores = torch.randn(layout.context_len, generator=torch.Generator().manual_seed(seed))
    kept = select_blocks(scores, layout, ratio, block, 1, global_budget)
    assert torch.equal(kept, torch.unique(kept)), "sorted and without repeats"
    per_doc = torch.bincount(layout.doc_of[kept], minlength=len(lengths))
    # The best block of a context may be its shorter last one.
    smallest_block = [n - (math.ceil(n / block) - 1) * block for n in lengths]
    assert all(int(c) >= f for c, f in zip(per_doc, smallest_block)), "at least one block per context"
    floor = [min(block, n) for n in lengths]
    if global_budget:
        budget = math.ceil(ratio * layout.context_len - 1e-9)
        assert kept.numel() <= max(budget, sum(floor) + block)
        assert kept.numel() >= min(budget, layout.context_len)
    else:
        for count, n, f in zip(per_doc.tolist(), lengths, floor):
            assert count <= max(math.ceil(ratio * n - 1e-9), f)
    if ratio == 1.0:
        assert kept.numel() == layout.context_len


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 60), min_size=1, max_size=6),
    block=st.integers(1, 20),
    seed=st.integers(0, 2**16),
)
def test_sentence_blocks_start_at_sentences_and_keep_the_budget(lengths, block, seed):
    layout = Layout.of(7, lengths)
    generator = torch.Generator().manual_seed(seed)
    starts = torch.rand(layout.context_len, generator=generator) < 0.1
    block_of = block_index(layout, block, starts)
    within = torch.arange(layout.context_len) - layout.offsets[layout.doc_of]
    new_block = torch.cat([torch.tensor([True]), block_of[1:] != block_of[:-1]])
    assert torch.equal(block_of, torch.cumsum(new_block.long(), 0) - 1), "numbered in order"
    assert bool(new_block[starts | (within == 0)].all()), "a sentence or document opens a block"
    assert int(torch.bincount(block_of).max()) <= block
    assert bool((layout.doc_of[new_block].bincount(minlength=len(lengths)) > 0).all())
    scores = torch.randn(layout.context_len, generator=generator)
    ratio = float(torch.rand(1, generator=generator))
    kept = select_blocks(scores, layout, ratio, block, 0, True, starts)
    assert kept.numel() == math.ceil(ratio * layout.context_len - 1e-9)
    # Whole blocks, but for the one that overflows the budget.
    partial = [b for b in torch.unique(block_of[kept]).tolist()
               if (block_of[kept] == b).sum() != (block_of == b).sum()]
    assert len(partial) <= 1


def test_sentence_starts_are_words_after_a_sentence_end():
    tokens = ["The", "Ġcat", "Ġsat", ".", "ĠAnna", "ĠBerg", "Ġlives", "Ġin", "ĠRav", "dale", ".", "ĊĊ", "In",
              "Ġ", "2016", ",", "Ġshe", "Ġmoved", "."]
    assert [t for t, s in zip(tokens, sentence_starts(tokens).tolist()) if s] == ["The", "ĠAnna", "In"]


def test_engine_keeps_budget_floor_and_whole_prefix(tiny_engine):
    engine = tiny_engine("llama")
    docs = engine.encode_documents(DOCUMENTS)
    n_tokens = sum(d.length for d in docs)
    for ratio in (0.05, 0.15, 0.4, 1.0):
        for global_budget in (True, False):
            request, built = _prepare(engine, docs, keep_ratio=ratio, global_budget=global_budget, block_size=4,
                                    min_blocks_per_context=1)
            kept = built.keep
            assert set(torch.bincount(request.layout.doc_of[kept], minlength=len(docs)).tolist()) != {0}
            assert all(int(c) > 0 for c in torch.bincount(request.layout.doc_of[kept], minlength=len(docs)))
            if global_budget:
                assert kept.numel() <= max(math.ceil(ratio * n_tokens), 4 * len(docs))
            assert built.cache.length == engine.prefix_len + kept.numel()
            for layer in range(engine.ops.shape.num_layers):
                prefix_keys, prefix_values = engine.prefix.layer(layer)
                keys, values = built.cache.layer(layer)
                assert torch.equal(keys[:, : engine.prefix_len], prefix_keys)
                assert torch.equal(values[:, : engine.prefix_len], prefix_values)


def test_sentence_blocks_keep_whole_sentences_from_their_start(tiny_engine):
    engine = tiny_engine("llama")
    docs = engine.encode_documents(DOCUMENTS)
    request, built = _prepare(engine, docs, keep_ratio=0.3, sentence_blocks=True, block_size=8,
                              complement=False, min_budget_blocks_per_context=0)
    ids = torch.cat([d.token_ids for d in docs])
    starts = sentence_starts(engine.tokenizer.convert_ids_to_tokens(ids.tolist()))
    block_of = block_index(request.layout, 8, starts)
    kept = built.keep
    assert kept.numel() == math.ceil(0.3 * request.layout.context_len - 1e-9)
    # Every kept block but the one that overflows the budget is kept whole, from its start.
    partial = [b for b in torch.unique(block_of[kept]).tolist()
               if (block_of[kept] == b).sum() != (block_of == b).sum()]
    assert len(partial) <= 1
    with pytest.raises(InvalidRequest, match="sentence_blocks"):
        make_method("samkv", sentence_blocks=True, adaptive_share=True)


def test_without_recompute_the_cache_holds_exactly_the_stored_kv(tiny_engine):
    engine = tiny_engine("llama")
    docs = engine.encode_documents(DOCUMENTS)
    request, built = _prepare(engine, docs, keep_ratio=0.3, recompute=False, block_size=4)
    assert built.recomputed.numel() == 0
    P = engine.prefix_len
    for layer in range(engine.ops.shape.num_layers):
        aligned_keys, aligned_values = align_layer(
            engine.ops, engine.prefix, [d.layer(layer) for d in docs], request.layout, layer
        )
        keys, values = built.cache.layer(layer)
        assert torch.equal(keys[:, P:], aligned_keys[:, P + built.keep])
        assert torch.equal(values[:, P:], aligned_values[:, P + built.keep])
    # With recompute the same tokens get fresh KV that sees the other documents.
    _, recomputed = _prepare(engine, docs, keep_ratio=0.3, recompute=True, block_size=4)
    assert torch.equal(recomputed.keep, built.keep)
    assert not torch.equal(recomputed.cache.layer(1)[0][:, P:], built.cache.layer(1)[0][:, P:])


BRIDGE = [
    "The Harlow Suite is a piece for strings. It was written by the composer Edvin Marsk in his youth.",
    "Lake Sorrel freezes in January. Skaters gather on its northern shore every weekend. The ice is thick.",
    "Edvin Marsk was born in the port town of Tolvik. He later moved abroad and taught music for many years.",
    "Copper from the Tarn mines is shipped every spring. The mines employ four hundred people in the valley.",
]


def test_summary_term_adds_the_words_that_link_the_bridge_to_the_answer(embedded_engine):
    """The question alone keeps "port town of Tolvik" in document 2; the other documents' summary
    queries add the block before it, " was born in the", which ties Edvin Marsk to the town."""
    docs = embedded_engine.encode_documents(BRIDGE)
    question = "In which town was the composer of the Harlow Suite born?"
    kept = {}
    for weight in (0.0, 1.0):
        _, built = _prepare(
            embedded_engine, docs, question, keep_ratio=0.3, complement_mode="summary", complement_weight=weight,
            block_size=4,
        )
        kept[weight] = set(built.kept_per_document[2])
    added = sorted(kept[1.0] - kept[0.0])
    assert added == [4, 5, 6, 7], "document 2's second block"
    assert embedded_engine.tokenizer.decode(docs[2].token_ids[added].tolist()) == " was born in the"
    # complement=False switches the term off whatever its weight.
    _, built = _prepare(
        embedded_engine, docs, question, keep_ratio=0.3, complement_mode="summary", complement_weight=1.0,
        complement=False, block_size=4,
    )
    assert set(built.kept_per_document[2]) == kept[0.0]


def test_peak_kv_of_samkv_is_a_fraction_of_full_unless_it_keeps_its_probes_layers(tiny_engine):
    """8 documents of ~300 tokens on a model as deep as the embedded one (30 layers)."""
    engine = tiny_engine("llama", layers=30)
    text = " ".join(DOCUMENTS) * 3
    docs = engine.encode_documents([f"Document {i}. {text}" for i in range(8)])
    assert all(250 <= d.length <= 350 for d in docs)
    full = engine.generate(QUESTION, docs, method="full", max_new_tokens=4).stats
    # By default the probe's layers are read again by the assembly, not kept.
    sparse = engine.generate(QUESTION, docs, method="samkv", keep_ratio=0.15, max_new_tokens=4).stats
    engine.probe_hold_bytes = None
    try:
        held = engine.generate(QUESTION, docs, method="samkv", keep_ratio=0.15, max_new_tokens=4).stats
    finally:
        engine.probe_hold_bytes = 0
    assert sparse["kv_bytes_peak"] < 0.3 * full["kv_bytes_peak"]
    assert sparse["kv_bytes_decode"] < 0.2 * full["kv_bytes_decode"]
    # Kept for the assembly, the probe's layers (the first 80%) count towards the peak.
    assert held["kv_bytes_peak"] > sparse["kv_bytes_peak"] + 0.6 * full["kv_bytes_decode"]
    assert held["kv_bytes_decode"] == sparse["kv_bytes_decode"]


@pytest.mark.parametrize("mode", ["reprobe", "entity"])
def test_two_stage_complement_spends_the_same_budget_around_the_first_stage(tiny_engine, mode):
    engine = tiny_engine("llama")
    docs = engine.encode_documents(DOCUMENTS)
    n_tokens = sum(d.length for d in docs)
    _, alone = _prepare(engine, docs, keep_ratio=0.5 * 0.4, block_size=4)
    request, both = _prepare(engine, docs, keep_ratio=0.4, complement_mode=mode, complement_weight=0.5, block_size=4)
    assert set(alone.keep.tolist()) < set(both.keep.tolist()), "the first stage's tokens stay"
    assert both.keep.numel() == math.ceil(0.4 * n_tokens)
    # Kept tokens are recomputed, but for the first document's: they see what they saw at
    # encoding, and keep their stored KV.
    assert torch.equal(both.recomputed, both.keep[request.layout.doc_of[both.keep] > 0])


def test_two_stage_share_must_leave_the_first_stage_something(tiny_engine):
    engine = tiny_engine("llama")
    docs = engine.encode_documents(DOCUMENTS[:2])
    with pytest.raises(InvalidRequest, match="below 1"):
        engine.generate(QUESTION, docs, "samkv", complement_mode="entity", complement_weight=1.0)
    with pytest.raises(InvalidRequest, match="complement_mode must be one of"):
        engine.generate(QUESTION, docs, "samkv", complement_mode="psychic")


def test_entity_second_stage_picks_the_mention_of_the_bridge_that_the_question_points_at():
    """Three documents of two 4-token blocks. The question points at document 0's first block,
    a little at document 1's first block, less at document 2's second; the bridge entity is
    named in both blocks of document 2. The second stage must take document 2's second block:
    the one naming the bridge that the question also reads, not the first mention, nor the
    question's next favourite that names no bridge."""
    layout = Layout.of(3, [8, 8, 8])
    question = torch.zeros(24)
    question[0:4], question[8:12], question[20:24] = 5.0, 1.5, 1.0
    match = (layout.doc_of == 2).float()
    method = make_method("samkv", keep_ratio=8 / 24, complement_mode="entity", complement_weight=0.5,
                         block_size=4, min_budget_blocks_per_context=0)
    plan = method.plan_over(ConstructedEvidence(question, match), layout, 2)
    assert plan.keep.tolist() == [0, 1, 2, 3, 20, 21, 22, 23]


def test_entity_tokens_are_capitalised_words_not_numbers(embedded_tokenizer):
    text = "the Oriel bank code is 4471 and it opens daily"
    tokens = embedded_tokenizer.convert_ids_to_tokens(embedded_tokenizer(text)["input_ids"])
    marked = "".join(t for t, m in zip(tokens, entity_tokens(tokens).tolist()) if m).replace("Ġ", " ")
    assert marked.strip() == "Oriel", marked


def test_second_stage_reprobe_reaches_the_bridged_document(embedded_engine):
    """The question names the Harlow Suite; only document 0 links it to Edvin Marsk, whose
    birthplace is in document 2. The question over the first stage's cache must add document 2's
    block " was born in the", the words that make the kept town Edvin Marsk's birthplace."""
    docs = embedded_engine.encode_documents(BRIDGE)
    question = "In which town was the composer of the Harlow Suite born?"
    kept = {}
    for weight in (0.0, 0.5):
        _, built = _prepare(embedded_engine, docs, question, keep_ratio=0.3, block_size=4,
                            complement_mode="reprobe", complement_weight=weight)
        kept[weight] = set(built.kept_per_document[2])
    added = sorted(kept[0.5] - kept[0.0])
    assert added == [4, 5, 6, 7], "document 2's second block"
    assert embedded_engine.tokenizer.decode(docs[2].token_ids[added].tolist()) == " was born in the"


def test_entity_matching_finds_the_same_name_in_another_document(embedded_engine):
    texts = ["Our guide today is Edvin Marsk of the museum.", "Apples and pears grow in the orchard.",
             "Tomorrow the talk is given by Edvin Marsk again.", "Later Edvin Marsk closes the museum."]
    docs = embedded_engine.encode_documents(texts)
    request = embedded_engine.request("Who is the guide?", docs)
    tokens = embedded_engine.tokenizer.convert_ids_to_tokens(request.context_ids.tolist())
    entities = entity_tokens(tokens)
    first = request.layout.doc_of == 0
    kept = (first & entities).nonzero().squeeze(1)
    scores = entity_match_scores(request.source, request.layout, kept, entities, range(1), 0.9, 2)
    assert torch.all(scores[first] == 0), "a context is never scored by its own entities"
    best = torch.topk(scores, 2 * kept.numel()).indices
    assert sorted(tokens[i] for i in best.tolist()) == sorted(2 * [tokens[i] for i in kept.tolist()])
    assert set(request.layout.doc_of[best].tolist()) == {2, 3}
    # A name found in more other contexts than a bridge may be is no bridge.
    crowded = entity_match_scores(request.source, request.layout, kept, entities, range(1), 0.9, 1)
    assert torch.all(crowded == 0)


def test_entity_stage_brings_the_sentence_naming_the_bridge_in_the_answers_document(embedded_engine):
    """Document 0 links the Harlow Suite to Edvin Marsk; document 2 says where Edvin Marsk was
    born. The question alone keeps the town; the entity stage also keeps the sentence's subject."""
    docs = embedded_engine.encode_documents(BRIDGE)
    question = "In which town was the composer of the Harlow Suite born?"
    kept_text = {}
    for complement in (True, False):
        request, built = _prepare(embedded_engine, docs, question, keep_ratio=0.4, block_size=8, complement=complement)
        in_answer_doc = built.keep[request.layout.doc_of[built.keep] == 2]
        kept_text[complement] = embedded_engine.tokenizer.decode(request.context_ids[in_answer_doc].tolist())
    assert "Tolvik" in kept_text[False] and "Marsk" not in kept_text[False]
    assert "Edvin Marsk was born in the port town of Tolvik" in kept_text[True]


def test_budget_holds_a_block_per_context_when_the_contexts_are_short():
    """Two contexts of 20 tokens: ρN = 6 tokens cannot hold a sentence; B is raised to two blocks."""
    layout = Layout.of(3, [20, 20])
    evidence = ConstructedEvidence(torch.arange(40, dtype=torch.float32), torch.zeros(40))
    assert make_method("samkv", keep_ratio=0.15).plan_over(evidence, layout, 2).keep.numel() == 32
    floorless = make_method("samkv", keep_ratio=0.15, min_budget_blocks_per_context=0)
    assert floorless.plan_over(evidence, layout, 2).keep.numel() == 6


class NamedEvidence(ConstructedEvidence):
    """Constructed evidence that also says which contexts hold every name of the question."""

    def __init__(self, question: torch.Tensor, match: torch.Tensor, named: torch.Tensor) -> None:
        super().__init__(question, match)
        self.named = named

    def named_contexts(self):
        return self.named


def test_name_prior_moves_the_first_stage_to_the_contexts_that_name_the_subject():
    layout = Layout.of(5, [32, 32, 32, 32])
    # The named context scores a hair below two unnamed ones; a fourth context scores low.
    question = torch.cat([torch.full((32,), 0.999), torch.full((32,), 1.0), torch.full((32,), 1.0), torch.zeros(32)])
    question[:16] += 1e-4  # the named context's first block beats its second
    named = torch.tensor([True, False, False, False])
    params = {"keep_ratio": 16 / 128, "block_size": 16, "complement": False, "debias": "none",
              "min_budget_blocks_per_context": 0}

    def kept(prior, named):
        method = make_method("samkv", name_prior=prior, **params)
        return method.plan_over(NamedEvidence(question, torch.zeros(128), named), layout, 30).keep

    plain = kept(0.0, named)
    assert set(layout.doc_of[plain].tolist()) == {1}
    assert kept(1.0, named).tolist() == list(range(16))
    # Nothing to prefer when every context, or none, holds the names.
    for same in (torch.ones(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool)):
        assert torch.equal(kept(1.0, same), plain)


def test_named_contexts_need_every_name_of_the_question(tiny_engine):
    engine = tiny_engine("llama")
    texts = ["Last spring Nadia Sandoval moved to Dunstad.", "Last spring Nadia Okafor moved to Marwick.",
             "Last spring Emil Sandoval moved to Dundale."]
    docs = engine.encode_documents(texts)
    layout = Layout.of(engine.prefix_len, [d.length for d in docs])
    context_ids = torch.cat([d.token_ids for d in docs])
    question = engine.prompt.question("Where did Nadia Sandoval move to?", "")
    assert named_contexts(engine.tokenizer, context_ids, question, layout).tolist() == [True, False, False]
    nameless = engine.prompt.question("where did everyone move to?", "")
    assert named_contexts(engine.tokenizer, context_ids, nameless, layout).tolist() == [True, True, True]
