"""SamKV's "entity" second stage: names in the best kept blocks, matched in the other contexts.

The pre-RoPE keys of names (capitalised words) in the first stage's best blocks are matched
against the keys of the other contexts' tokens; stored keys carry no position, so the same name
written in two documents has near-identical keys in the early layers. A name found in no other
context leads nowhere, and one found in many is no bridge.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from samkv.document import DocumentSource
from samkv.layout import Layout

# Byte-level BPE and SentencePiece mark a token that starts a word with these.
WORD_MARKERS = "Ġ▁ "
SENTENCE_ENDS = ".!?:\n\u010a"  # \u010a is byte-level BPE's newline


def entity_tokens(tokens: list[str]) -> torch.Tensor:
    """Bool [N]: the tokens of capitalised words (names of people, places, organisations).

    A token that does not start with the tokenizer's word marker continues the previous word.
    A capitalised word that opens a sentence ("The", "He") is not taken for a name. Numbers are
    left out: they are the facts a question asks for, not links, and digit tokens recur everywhere.
    """
    marks = []
    inside = False
    sentence_start = True
    for token in tokens:
        text = token.lstrip(WORD_MARKERS)
        if token[:1] in WORD_MARKERS or not marks or not text[:1].isalnum():
            inside = bool(text) and text[0].isupper() and not sentence_start
        marks.append(inside)
        if text:
            sentence_start = text[-1] in SENTENCE_ENDS
    return torch.tensor(marks, dtype=torch.bool)


def sentence_starts(tokens: list[str]) -> torch.Tensor:
    """Bool [N]: the tokens that open a sentence: the first word after a sentence's end (or a
    line break); the first token of `tokens` too when it is a word."""
    marks = []
    after_end = True
    for token in tokens:
        text = token.lstrip(WORD_MARKERS)
        word = text[:1].isalnum() and text[0] not in SENTENCE_ENDS
        marks.append(after_end and word)
        if text:
            after_end = text[-1] in SENTENCE_ENDS or (after_end and not word)
    return torch.tensor(marks, dtype=torch.bool)


def bridge_entities(
    tokenizer: PreTrainedTokenizerBase, context_ids: torch.Tensor, question_ids: torch.Tensor
) -> torch.Tensor:
    """Bool [N]: entity tokens of the context that the question does not itself name.

    A bridge is what the kept text adds to the question; the question's own names are the
    question term's job, and as anchors they match every other person sharing a first or last name.
    """
    named = entity_tokens(tokenizer.convert_ids_to_tokens(context_ids.tolist()))
    return named & ~torch.isin(context_ids, question_ids)


def named_contexts(
    tokenizer: PreTrainedTokenizerBase, context_ids: torch.Tensor, question_ids: torch.Tensor, layout: Layout
) -> torch.Tensor:
    """Bool [n]: the contexts in which every name token of the question occurs (all True when
    the question names nothing).

    A context that holds only some of them (a namesake sharing a first or a last name) or none
    is about someone or something else more likely than one that holds them all.
    """
    names = torch.unique(question_ids[entity_tokens(tokenizer.convert_ids_to_tokens(question_ids.tolist()))])
    if names.numel() == 0 or layout.context_len == 0:
        return torch.ones(layout.num_docs, dtype=torch.bool)
    hits = (context_ids[:, None] == names[None, :]).float()  # [N, names]
    found = torch.zeros(layout.num_docs, names.numel()).index_add_(0, layout.doc_of, hits) > 0
    return found.all(1)


@torch.inference_mode()
def entity_match_scores(
    source: DocumentSource,
    layout: Layout,
    kept: torch.Tensor,
    entities: torch.Tensor,
    layers: range,
    threshold: float,
    max_contexts: int,
) -> torch.Tensor:
    """[N]: for each token, its best key similarity to a bridge: a kept entity token of another
    context that occurs (similarity > `threshold`) in between 1 and `max_contexts` other contexts.

    Cosine similarity of pre-RoPE keys (all KV heads concatenated, centred on the context's mean
    key, which otherwise dominates every key), averaged over `layers`; tokens of the entity's own
    context score 0, and so does every token when no kept entity is a bridge.
    """
    N = layout.context_len
    anchors = kept[entities[kept]]
    if anchors.numel() == 0:
        return torch.zeros(N)
    other = layout.doc_of[:, None] != layout.doc_of[anchors][None, :]  # [N, A]
    similarity = torch.zeros(N, anchors.numel())
    for layer in layers:
        keys = torch.cat([part.keys for part in source.read_layer(layer)], dim=1)  # [KVH, N, d]
        flat = keys.transpose(0, 1).reshape(N, -1).float()
        flat = F.normalize(flat - flat.mean(0), dim=-1)
        similarity += flat @ flat[anchors].T
    similarity = (similarity / max(1, len(layers))).masked_fill(~other, 0.0).clamp_min(0.0)
    per_context = torch.zeros(layout.num_docs, anchors.numel()).scatter_reduce(
        0, layout.doc_of[:, None].expand_as(similarity), similarity, "amax"
    )
    found_in = (per_context > threshold).sum(0)
    bridges = (found_in >= 1) & (found_in <= max_contexts)
    if not bridges.any():
        return torch.zeros(N)
    return similarity[:, bridges].amax(1)
