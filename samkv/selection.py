"""Turning per-token scores into a kept token set: standardising, pooling, block top-B with a floor."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from samkv.layout import Layout


def zscore(x: torch.Tensor) -> torch.Tensor:
    """Standardised scores, so that terms of different scales can be added."""
    if x.numel() < 2:
        return torch.zeros_like(x)
    return (x - x.mean()) / x.std().clamp_min(1e-12)


def max_pool_within_documents(scores: torch.Tensor, layout: Layout, width: int) -> torch.Tensor:
    """Max-pools scores [N] over windows of `width` tokens that never cross a document boundary."""
    if width <= 1:
        return scores
    pooled = []
    for offset, length in zip(layout.offsets.tolist(), layout.lengths):
        segment = scores[offset : offset + length][None, None]
        pooled.append(F.max_pool1d(segment, width, stride=1, padding=width // 2)[0, 0, :length])
    return torch.cat(pooled)


def budget_of(ratio: float, tokens: int) -> int:
    """B = ceil(ρ · N)."""
    return min(tokens, math.ceil(ratio * tokens - 1e-9))


def _top_blocks(
    scores: torch.Tensor, block_of: torch.Tensor, budget: int, forced: torch.Tensor
) -> torch.Tensor:
    """Token mask [N]: the `forced` blocks, then the best blocks until `budget` tokens.

    A block's score is the max of its tokens'; the block that would overflow the budget
    contributes its best tokens only, so exactly `budget` tokens are kept unless the forced
    blocks alone exceed it.
    """
    num_blocks = int(block_of.max()) + 1
    block_score = torch.full((num_blocks,), float("-inf")).scatter_reduce(0, block_of, scores, "amax")
    block_size = torch.bincount(block_of, minlength=num_blocks)
    keep_block = torch.zeros(num_blocks, dtype=torch.bool)
    keep_block[forced] = True
    left = budget - int(block_size[keep_block].sum())
    candidates = (~keep_block).nonzero().squeeze(1)
    order = candidates[torch.argsort(block_score[candidates], descending=True, stable=True)]
    whole = int((torch.cumsum(block_size[order], 0) <= max(left, 0)).sum())
    keep_block[order[:whole]] = True
    left -= int(block_size[order[:whole]].sum())
    kept = keep_block[block_of]
    if left > 0 and whole < order.numel():
        in_block = (block_of == order[whole]).nonzero().squeeze(1)
        best = in_block[torch.argsort(scores[in_block], descending=True, stable=True)[:left]]
        kept[best] = True
    return kept


def block_index(layout: Layout, block_size: int, starts: torch.Tensor | None = None) -> torch.Tensor:
    """[N]: the block of each context token, numbered in order; blocks never cross documents.

    Blocks are `block_size` tokens from each document's start or, with `starts` (bool [N], the
    tokens that open a sentence), from each sentence's start: a sentence longer than
    `block_size` is cut into blocks of `block_size` and a shorter last piece.
    """
    within = torch.arange(layout.context_len) - layout.offsets[layout.doc_of]
    if starts is None:
        blocks_per_doc = torch.tensor([math.ceil(length / block_size) for length in layout.lengths])
        first_block = torch.cumsum(blocks_per_doc, 0) - blocks_per_doc
        return first_block[layout.doc_of] + within // block_size
    opens = (starts | (within == 0)).tolist()
    block_of, block, since = [], -1, 0
    for opening in opens:
        if opening or since == block_size:
            block, since = block + 1, 0
        block_of.append(block)
        since += 1
    return torch.tensor(block_of, dtype=torch.long)


def block_max(scores: torch.Tensor, block_of: torch.Tensor) -> torch.Tensor:
    """[N]: each token's block's best score."""
    best = torch.full((int(block_of.max()) + 1,), float("-inf")).scatter_reduce(0, block_of, scores, "amax")
    return best[block_of]


def select_blocks(
    scores: torch.Tensor,
    layout: Layout,
    ratio: float,
    block_size: int,
    min_blocks_per_context: int,
    global_budget: bool,
    starts: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sorted context indices kept: whole blocks (`block_index`) chosen by their max score.

    With `global_budget` the top blocks are chosen over all contexts jointly until
    B = ceil(ρ N) tokens; otherwise each context keeps ceil(ρ L_i) of its own tokens. Each
    context keeps at least its `min_blocks_per_context` best blocks either way.
    """
    N = layout.context_len
    if N == 0:
        return torch.empty(0, dtype=torch.long)
    block_of = block_index(layout, block_size, starts)
    lengths = torch.tensor(layout.lengths)
    first_block = block_of[layout.offsets.clamp_max(N - 1)]
    last_block = block_of[(layout.offsets + lengths - 1).clamp_min(0)]
    blocks_per_doc = torch.where(lengths > 0, last_block - first_block + 1, 0)
    block_score = torch.full((int(blocks_per_doc.sum()),), float("-inf"))
    block_score = block_score.scatter_reduce(0, block_of, scores, "amax")
    forced = [
        first + torch.argsort(block_score[first : first + count], descending=True, stable=True)[
            :min_blocks_per_context
        ]
        for first, count in zip(first_block.tolist(), blocks_per_doc.tolist())
    ]
    if global_budget:
        kept = _top_blocks(scores, block_of, budget_of(ratio, N), torch.cat(forced))
        return kept.nonzero().squeeze(1)
    kept_parts = []
    for i, (offset, length) in enumerate(zip(layout.offsets.tolist(), layout.lengths)):
        local_blocks = block_of[offset : offset + length] - first_block[i]
        kept = _top_blocks(
            scores[offset : offset + length], local_blocks, budget_of(ratio, length),
            forced[i] - first_block[i],
        )
        kept_parts.append(offset + kept.nonzero().squeeze(1))
    return torch.cat(kept_parts)
