"""Second-stage scores for SamKV's complementary selection: what the other contexts need.

A two-hop question names A; one document links A to a bridge entity B; another holds B's
answer. The question alone never points at the second document, so after a first selection
by the question, these scores look for what the kept tokens lead to:

- `reprobe`: the question is prefilled over the first stage's compact cache (its deeper layers
  have then read the bridge entity), and its queries score every stored token;
- `entity`: the pre-RoPE keys of names (capitalised words) in the first stage's best blocks are
  matched against the keys of the other contexts' tokens; stored keys carry no position, so the
  same name written in two documents has near-identical keys in the early layers. A name found
  in no other context leads nowhere, and one found in many is no bridge.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from samkv.assembly import Plan, align_layer, assemble
from samkv.cache import KVCache, KVMeter
from samkv.document import DocumentSource
from samkv.forward import Recording, forward_tokens
from samkv.layers import ModelOps
from samkv.layout import Layout
from samkv.methods.base import nothing

# Byte-level BPE and SentencePiece mark a token that starts a word with these.
WORD_MARKERS = "Ġ▁ "
SENTENCE_ENDS = ".!?:\n\u010a"  # \u010a is byte-level BPE's newline


@torch.inference_mode()
def reprobe_scores(
    ops: ModelOps,
    prefix: KVCache,
    source: DocumentSource,
    layout: Layout,
    context_ids: torch.Tensor,
    kept: torch.Tensor,
    question_ids: torch.Tensor,
    layers: range,
    meter: KVMeter,
) -> torch.Tensor:
    """[N]: attention of the question, prefilled over [P ; kept tokens' stored KV], on each stored token.

    The attention is taken over every context token (stored keys aligned to their positions),
    normalised over the context, and averaged over heads, question tokens and `layers`.
    """
    P, N = layout.prefix_len, layout.context_len
    shape = ops.shape
    q_len = int(question_ids.numel())
    compact = KVCache(shape.num_layers, shape.num_kv_heads, shape.head_dim, P + int(kept.numel()) + q_len,
                      ops.dtype, ops.device, meter)
    # Stored KV, not recomputed: the sentence naming the bridge lies inside the document that the
    # question already points at, so its stored KV has read it; recomputing would add only the
    # cross-document attention, at the cost of a second assembly.
    assemble(ops, prefix, source, layout, context_ids, Plan(keep=kept, recompute=nothing()), compact, meter)
    record = Recording()
    positions = layout.question_start + torch.arange(q_len)
    forward_tokens(ops, compact, question_ids, positions, record=record)
    scores = torch.zeros(N, device=ops.device)
    visible = torch.ones(q_len, N, dtype=torch.bool, device=ops.device)
    for layer in layers:
        keys, values = align_layer(ops, prefix, source.read_layer(layer), layout, layer)
        meter.hold(keys, values)
        queries = ops.rope(record.queries[layer], positions)
        probs = ops.attention_probs(queries, keys[:, P : P + N], visible)  # [H, T, N]
        scores += probs.mean((0, 1))
        meter.release(keys, values)
    meter.release(compact.keys, compact.values)
    return (scores / max(1, len(layers))).cpu()


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
