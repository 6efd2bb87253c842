"""SamKV's "packet" reading of the complementary term, and the per-document budget split it brings.

Each document has a document query: the mean of its stored summary queries (the pre-RoPE
queries of its last `window` tokens) at a few late, "stable" layers. The question is prefilled
over a sparse cache of P and every document's first `sink` and last `local` tokens; the mean of
its pre-RoPE queries at the same layers is the question query. Document i's complementary query
is the question query plus the mean, over the other documents j, of document query_j weighted
by |cos(document query_j, question query)|. A token of document i scores its pre-RoPE key's dot
product with that query, summed over the stable layers and the heads.

The budget split (`anchor_shares`, `split_budget`) serves every mode under `adaptive_share`:
a document's middle tokens (neither sink nor local) are mean-pooled into blocks; its share
p_i = (max − anchor) / (max − min) over its block scores, the anchor being the mean score of
its sink and local tokens (0 when the anchor lies outside [min, max]). Dot products are linear,
so a block's mean score is its mean key's score: the rule reads per-token scores of any mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from samkv.layout import Layout
from samkv.methods.base import PlanContext
from samkv.methods.observe import observe
from samkv.selection import select_blocks


def reserved_tokens(layout: Layout, sink: int, local: int) -> torch.Tensor:
    """Bool [N]: each document's first `sink` and last `local` tokens."""
    within = torch.arange(layout.context_len) - layout.offsets[layout.doc_of]
    length = torch.tensor(layout.lengths, dtype=torch.long)[layout.doc_of]
    return (within < sink) | (within >= length - local)


def fit_reserve(lengths: list[int], sink: int, local: int, budget: int) -> tuple[int, int]:
    """(sink', local') ≤ (sink, local): both cut to the same cap t, the largest t whose reserved
    tokens fit in `budget` (the larger count is cut first; unchanged when they already fit)."""
    for cap in range(max(sink, local), -1, -1):
        s, l = min(sink, cap), min(local, cap)
        if sum(min(length, s + l) for length in lengths) <= budget:
            return s, l
    return 0, 0


def complementary_queries(question: torch.Tensor, documents: torch.Tensor) -> torch.Tensor:
    """[n, H, d]: question [H, d] + mean over j ≠ i of documents[j] · |cos(documents[j], question)|.

    documents [n, H, d]; the cosine is taken per head. With a single document there is no other
    to add, and its complementary query is the question query.
    """
    n = documents.shape[0]
    if n < 2:
        return question.expand(n, -1, -1).clone()
    weight = F.cosine_similarity(documents, question[None], dim=-1).abs()  # [n, H]
    weighted = documents * weight[..., None]  # [n, H, d]
    others = (weighted.sum(0, keepdim=True) - weighted) / (n - 1)
    return question[None] + others


def grouped_by_kv_head(queries: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """[..., H, d] -> [..., KVH, d]: the sum of the query heads that read each KV head.

    Query head h reads KV head h // (H / KVH), as the attention repeats each KV head in place.
    """
    *lead, heads, dim = queries.shape
    return queries.reshape(*lead, num_kv_heads, heads // num_kv_heads, dim).sum(-2)


@torch.inference_mode()
def packet_scores(context: PlanContext, sink: int, local: int, layers: range, window: int) -> torch.Tensor:
    """[N]: each context token's pre-RoPE key · its document's complementary query, summed over
    `layers` and heads (float32).

    Pre-RoPE on both sides: the queries are means over tokens at different positions (a
    document's last tokens at ingestion, the question's), which rotation would partly cancel,
    and a rotated dot product would add a distance term that favours the documents nearest the
    question; without rotation the score is the content match alone.
    """
    ops, layout = context.ops, context.layout
    P, N = layout.prefix_len, layout.context_len
    question_ids = context.question_ids
    T = int(question_ids.shape[0])
    positions = layout.question_start + torch.arange(T)
    sparse = reserved_tokens(layout, sink, local)
    mask = torch.cat([
        torch.ones(T, P, dtype=torch.bool), sparse.expand(T, N), torch.ones(T, T, dtype=torch.bool).tril(),
    ], dim=1)  # [T, P + N + T]
    doc_of = layout.doc_of.to(ops.device)
    scores = torch.zeros(N, device=ops.device)
    for seen in observe(context, question_ids, positions, mask, layers.stop - 1):
        if seen.layer not in layers:
            continue
        question = seen.queries.float().mean(1)  # [H, d]
        documents = torch.stack(
            [part.summary_queries[:, -window:].to(ops.device).float().mean(1) for part in seen.parts]
        )  # [n, H, d]
        complementary = grouped_by_kv_head(complementary_queries(question, documents), ops.shape.num_kv_heads)
        keys = torch.cat([part.keys.to(ops.device).float() for part in seen.parts], dim=1)  # [KVH, N, d]
        scores += torch.einsum("knd,nkd->n", keys, complementary[doc_of])
    return scores.cpu()


def anchor_share(scores: torch.Tensor, reserved: torch.Tensor, block_size: int) -> float:
    """One document's share p in [0, 1] from its token scores [L] and its reserved tokens (bool [L]).

    The middle tokens are cut into blocks of `block_size` in order, each scored by its mean;
    the anchor is the mean score of the reserved tokens. p = (max − anchor) / (max − min) when
    min ≤ anchor ≤ max and max > min, else 0 (also without middle or reserved tokens).
    """
    middle = scores[~reserved]
    if not middle.numel() or not bool(reserved.any()):
        return 0.0
    blocks = torch.stack([part.mean() for part in middle.split(block_size)])
    anchor = float(scores[reserved].mean())
    low, high = float(blocks.min()), float(blocks.max())
    if high <= low or not low <= anchor <= high:
        return 0.0
    return (high - anchor) / (high - low)


def anchor_shares(scores: torch.Tensor, layout: Layout, reserved: torch.Tensor, block_size: int) -> torch.Tensor:
    """[n]: `anchor_share` of every document."""
    return torch.tensor([
        anchor_share(scores[offset : offset + length], reserved[offset : offset + length], block_size)
        for offset, length in zip(layout.offsets.tolist(), layout.lengths)
    ])


def split_budget(budget: int, weights: torch.Tensor, capacity: torch.Tensor) -> torch.Tensor:
    """[n] token counts summing to min(budget, Σ capacity), each at most its capacity.

    Proportional to `weights` (largest remainders round), a capped document's excess going to
    the others; what the weights cannot place (every weighted document full, or no weight at
    all) is split the same way in proportion to the room left, so the whole budget is spent.
    """
    capacity = capacity.long()
    given = torch.zeros_like(capacity)
    left = min(budget, int(capacity.sum()))
    for weight in (weights.double(), None):
        while left > 0:
            room = capacity - given
            share = room.double() if weight is None else weight * (room > 0)
            if float(share.sum()) <= 0:
                break
            exact = left * share / share.sum()
            step = torch.minimum(exact.floor().long(), room)
            if not int(step.sum()):
                # Fewer tokens left than documents owed a fraction of one: the largest fractions win.
                order = torch.argsort(exact, descending=True, stable=True)[:left]
                step = torch.zeros_like(given).index_fill_(0, order[exact[order] > 0], 1)
            given += step
            left -= int(step.sum())
    return given


def select_per_document(
    scores: torch.Tensor, layout: Layout, budgets: torch.Tensor, block_size: int, min_blocks_per_context: int
) -> torch.Tensor:
    """Sorted context indices: each document's best blocks (by their max score) up to its budget."""
    kept = []
    for offset, length, budget in zip(layout.offsets.tolist(), layout.lengths, budgets.tolist()):
        alone = Layout.of(0, [length])
        # ratio · length rounds back to `budget` in select_blocks (B = ceil(ρL − 1e-9)).
        chosen = select_blocks(scores[offset : offset + length], alone, budget / length, block_size,
                               min_blocks_per_context, True)
        kept.append(offset + chosen)
    return torch.cat(kept) if kept else torch.empty(0, dtype=torch.long)


def packet_keep(
    scores: torch.Tensor, layout: Layout, budget: int, sink: int, local: int, block_size: int, adaptive: bool
) -> torch.Tensor:
    """Sorted context indices of "packet" mode: every sink and local token, then middle blocks
    (mean score) until `budget`, split across documents by `anchor_shares` (`adaptive`) or
    taken best-first over all documents.

    When the sink and local tokens alone exceed the budget they are cut (`fit_reserve`), the
    cut ones joining the middle tokens; the anchor still reads the full ones, as the question's
    sparse prefill did.
    """
    N = layout.context_len
    if N == 0:
        return torch.empty(0, dtype=torch.long)
    anchors = reserved_tokens(layout, sink, local)
    kept_sink, kept_local = fit_reserve(list(layout.lengths), sink, local, budget)
    reserve = reserved_tokens(layout, kept_sink, kept_local)
    middle = (~reserve).nonzero().squeeze(1)  # [M] in document order
    left = budget - int(reserve.sum())
    if not middle.numel() or left <= 0:
        return reserve.nonzero().squeeze(1)
    lengths = torch.bincount(layout.doc_of[middle], minlength=layout.num_docs)
    middle_layout = Layout.of(0, [length for length in lengths.tolist() if length])
    pooled = torch.cat([
        torch.cat([part.mean().expand(part.numel()) for part in segment.split(block_size)])
        for segment in scores[middle].split([length for length in lengths.tolist() if length])
    ])  # [M] each middle token holds its block's mean score
    if adaptive:
        shares = anchor_shares(scores, layout, anchors, block_size)
        budgets = split_budget(left, shares * lengths, lengths)[lengths > 0]
        chosen = select_per_document(pooled, middle_layout, budgets, block_size, 0)
    else:
        chosen = select_blocks(pooled, middle_layout, left / middle.numel(), block_size, 0, True)
    keep = reserve.clone()
    keep[middle[chosen]] = True
    return keep.nonzero().squeeze(1)

