"""SamKV's probe: how much the question (and a neutral question) attend to each stored context token.

The probe tokens are prefilled layer by layer over the aligned, not yet recomputed KV of
[P ; D_1 … D_n]. Both probes run in one pass, side by side at the same positions, each blind
to the other. The same pass can score every context token by the other contexts' summary
queries (the last `summary_window` queries stored with each document).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from samkv.layers import ModelOps
from samkv.layout import Layout
from samkv.methods.base import PlanContext
from samkv.methods.observe import observe

# What the question term is measured against: attention that any question would pay.
NEUTRAL_QUESTION = "What do the documents say?"


@dataclass(frozen=True)
class ProbeScores:
    """Per context token [N], each averaged over the probed layers, heads and probe tokens."""

    question: torch.Tensor  # attention share, one softmax over all contexts together
    neutral: torch.Tensor  # the same for the neutral probe
    complement: torch.Tensor  # attention of the *other* contexts' summary queries


def _summary_attention(
    ops: ModelOps, layout: Layout, keys: torch.Tensor, summaries: list[torch.Tensor]
) -> torch.Tensor:
    """[N]: mean over the other documents of their summary queries' attention on each token.

    keys [KVH, P + N, d] are aligned; summaries[i] [H, w_i, d] are document i's last-token
    queries before RoPE. Each document's queries attend over the tokens of all *other* documents.
    """
    n, N = layout.num_docs, layout.context_len
    if n < 2:
        return torch.zeros(N)
    owner = torch.repeat_interleave(torch.arange(n), torch.tensor([s.shape[1] for s in summaries]))
    ends = layout.offsets + torch.tensor(layout.lengths)
    rows_pos = torch.cat(
        [layout.prefix_len + torch.arange(int(e) - s.shape[1], int(e)) for e, s in zip(ends, summaries)]
    )
    queries = torch.cat([s.to(ops.device, ops.dtype) for s in summaries], dim=1)  # [H, W, d]
    queries = ops.rope(queries, rows_pos)
    context_keys = keys[:, layout.prefix_len : layout.prefix_len + N]
    other = (layout.doc_of[None, :] != owner[:, None]).to(ops.device)  # [W, N]
    probs = ops.attention_probs(queries, context_keys, other).mean(0)  # [W, N]
    per_owner = torch.zeros(n, N, device=probs.device).index_add_(0, owner.to(probs.device), probs)
    per_owner /= torch.bincount(owner, minlength=n).clamp_min(1).to(probs.device)[:, None]
    return (per_owner.sum(0) / (n - 1)).cpu()


@torch.inference_mode()
def run_probe(context: PlanContext, layers: range, with_complement: bool, summary_window: int) -> ProbeScores:
    """Runs both probes over the stored contexts and returns the scores averaged over `layers`."""
    ops, layout = context.ops, context.layout
    question_ids = context.question_ids
    neutral_ids = context.prompt.question(NEUTRAL_QUESTION, context.answer_prefix)
    P, N = layout.prefix_len, layout.context_len
    tq, tn = int(question_ids.shape[0]), int(neutral_ids.shape[0])
    start = layout.question_start
    ids = torch.cat([question_ids, neutral_ids])
    positions = torch.cat([start + torch.arange(tq), start + torch.arange(tn)])
    probe_of = torch.cat([torch.zeros(tq, dtype=torch.long), torch.ones(tn, dtype=torch.long)])
    own = (probe_of[:, None] == probe_of[None, :]) & torch.ones(tq + tn, tq + tn, dtype=torch.bool).tril()
    mask = torch.cat([torch.ones(tq + tn, P + N, dtype=torch.bool), own], dim=1)
    totals = torch.zeros(2, N, device=ops.device)  # question, neutral
    complement = torch.zeros(N)
    for seen in observe(context, ids, positions, mask, max(layers, default=-1)):
        if seen.layer not in layers or not N:
            continue
        heads = seen.probs.shape[0]
        # Each head and probe token's attention renormalised over the context, then averaged over
        # heads and the probe's tokens: one product of the per-probe weights [2, H·T] with the
        # contiguous probabilities [H·T, P + N + T], without an [H, T, N] temporary.
        renormalise = 1.0 / (seen.probs[:, :, P : P + N].sum(-1).clamp_min(1e-30) * heads)  # [H, T]
        weights = torch.zeros(2, heads, tq + tn, device=renormalise.device)
        weights[0, :, :tq] = renormalise[:, :tq] / tq
        weights[1, :, tq:] = renormalise[:, tq:] / tn
        totals += (weights.view(2, -1) @ seen.probs.reshape(heads * (tq + tn), -1))[:, P : P + N]
        if with_complement:
            summaries = [part.summary_queries[:, -summary_window:] for part in seen.parts]
            complement += _summary_attention(ops, layout, seen.keys, summaries)
    count = max(1, len(layers))  # the band is validated against the model's depth
    return ProbeScores(
        question=totals[0].cpu() / count,
        neutral=totals[1].cpu() / count,
        complement=complement / count,
    )
