"""Assembly of the decoding cache from stored document KV: align, recompute some tokens, keep some.

One loop over layers serves every method: at each layer the stored KV of every document is read
(one layer at a time), rotated to its positions in the prompt, the tokens the plan recomputes get
fresh KV from their hidden states, and the tokens the plan keeps are copied into the cache. The
question, when given, runs in the same loop over the layer's cache as soon as it is written: one
pass through the weights for the recomputed tokens and the question together, not two.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from samkv.cache import KVCache, KVMeter
from samkv.document import DocumentSource, LayerKV
from samkv.forward import causal_mask
from samkv.layers import ModelOps
from samkv.layout import Layout

# (fresh keys, fresh values, stored keys, stored values), each [KVH, R, d] -> rows of R to go on with
NarrowFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Narrowing:
    """After computing `layer` for the recomputed tokens, `choose` keeps only some of them."""

    layer: int
    choose: NarrowFn


@dataclass(frozen=True)
class Plan:
    """What a method asks of the assembly: which context tokens to recompute and which to keep."""

    keep: torch.Tensor  # [K] sorted context indices kept in the decoding cache
    recompute: torch.Tensor  # [R] sorted context indices recomputed from the first layer
    narrowings: tuple[Narrowing, ...] = ()  # at most one per layer
    reads_stored: bool = True  # False only when every token is recomputed (a full prefill)
    # [layers, KVH, B] sorted context indices that each layer's KV head keeps, when heads keep
    # different tokens (stored KV only); `keep` is then every token some head keeps.
    head_keep: torch.Tensor | None = None
    # Recomputed KV written as fuse · fresh + (1 − fuse) · stored; 1 keeps the fresh KV alone.
    fuse: float = 1.0
    # Recomputed tokens also attend to the stored KV of earlier documents' tokens that no cache
    # keeps (CacheBlend's view); False: only to the kept ones, as the question will.
    sees_dropped: bool = False

    @property
    def cached_tokens(self) -> int:
        """Context entries per layer and KV head in the decoding cache."""
        return int(self.keep.numel() if self.head_keep is None else self.head_keep.shape[-1])


@dataclass(frozen=True)
class Tail:
    """Tokens that follow the context in the prompt (the question), assembled with it: they attend
    over [P ; kept context] and themselves, causally, and their KV goes into the cache after it."""

    token_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]


@dataclass(frozen=True)
class Assembled:
    """What `assemble` did besides filling the cache."""

    recomputed: torch.Tensor  # [R] sorted context indices recomputed through the last layer
    logits: torch.Tensor | None  # [1, vocab] float32 of the tail's last token; None without a tail


class DocumentAttention:
    """Attention of recomputed context tokens, one document at a time.

    A token of document i sees, causally, the prefix, the `shared` context tokens (bool [N]) of
    earlier documents and every token of its own document; so in SamKV the tokens dropped from
    other documents stay invisible. Only those keys are attended per document, instead of
    masking the whole layer, so the cost stays proportional to what each token may see: a
    document's own keys end at its last row, since causal attention reads nothing after it. The
    prefix and the shared tokens are gathered once per layer, in prompt order: what document i
    sees of them is then a leading slice of that gather, joined to its own tokens.
    """

    def __init__(self, layout: Layout, rows: torch.Tensor, shared: torch.Tensor, device: torch.device) -> None:
        P = layout.prefix_len
        self.every_shared = bool(shared.all())
        shared_slots = torch.cat([torch.arange(P), P + shared.nonzero().squeeze(1)])
        self.shared_slots = shared_slots.to(device)
        # (rows of the document, shared slots it sees, its own slots, mask over both)
        self.parts: list[tuple[torch.Tensor, int, slice, torch.Tensor]] = []
        row_doc = layout.doc_of[rows]
        for doc in torch.unique(row_doc).tolist():
            offset = int(layout.offsets[doc])
            mine = (row_doc == doc).nonzero().squeeze(1)
            own = slice(P + offset, P + int(rows[mine].max()) + 1)
            seen_shared = P + offset if self.every_shared else P + int(shared[:offset].sum())
            column_pos = torch.cat([shared_slots[:seen_shared], torch.arange(own.start, own.stop)])
            mask = column_pos[None, :] <= layout.positions[rows[mine]][:, None]
            self.parts.append((mine.to(device), seen_shared, own, mask.to(device)))

    def __call__(
        self, ops: ModelOps, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, meter: KVMeter
    ) -> torch.Tensor:
        """q [H, R, d] over the layer's keys and values [KVH, |P| + N, d] -> [R, H * d]."""
        out = torch.empty(q.shape[1], q.shape[0] * q.shape[2], dtype=q.dtype, device=q.device)
        if self.every_shared:  # every earlier token is seen: each document's columns are a slice
            for mine, _, own, mask in self.parts:
                out[mine] = ops.attend(q[:, mine], keys[:, : own.stop], values[:, : own.stop], mask)
            return out
        shared_keys, shared_values = keys[:, self.shared_slots], values[:, self.shared_slots]
        meter.hold(shared_keys, shared_values)
        for mine, seen_shared, own, mask in self.parts:
            seen_keys = torch.cat([shared_keys[:, :seen_shared], keys[:, own]], dim=1)
            seen_values = torch.cat([shared_values[:, :seen_shared], values[:, own]], dim=1)
            meter.hold(seen_keys, seen_values)
            out[mine] = ops.attend(q[:, mine], seen_keys, seen_values, mask)
            meter.release(seen_keys, seen_values)
        meter.release(shared_keys, shared_values)
        return out


def encoded_as_seen(layout: Layout) -> torch.Tensor:
    """Bool [N]: the context tokens that see here what they saw when their document was encoded.

    The first document follows P at the positions it was encoded at, and sees nothing but P and
    itself: recomputing its tokens gives back their stored KV, to float error, and changes
    nothing any token sees. A later document is at least as far from P as the documents before
    it are long, which its stored KV never saw, even when those documents keep nothing.
    """
    return layout.doc_of == 0


def align_layer(
    ops: ModelOps,
    prefix: KVCache,
    parts: list[LayerKV],
    layout: Layout,
    layer: int,
    extra: int = 0,
    documents: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys (rotated to their prompt positions) and values [KVH, |P| + N + extra, d] of one layer.

    `parts` are the documents at `documents` (None: every document); the slots of the others
    are zero. The last `extra` slots are left for the caller's own tokens.
    """
    shape = ops.shape
    P = layout.prefix_len
    size = P + layout.context_len + extra
    whole = documents is None
    new = torch.empty if whole else torch.zeros
    keys = new(shape.num_kv_heads, size, shape.head_dim, dtype=ops.dtype, device=ops.device)
    values = new(shape.num_kv_heads, size, shape.head_dim, dtype=ops.dtype, device=ops.device)
    prefix_keys, prefix_values = prefix.layer(layer)
    keys[:, :P] = prefix_keys
    values[:, :P] = prefix_values
    for doc, part in zip(range(len(parts)) if whole else documents, parts, strict=True):
        start = P + int(layout.offsets[doc])
        end = start + part.keys.shape[1]
        # copy_ casts while it copies: no intermediate tensor in the compute dtype.
        keys[:, start:end].copy_(part.keys)
        values[:, start:end].copy_(part.values)
    context = slice(P, P + layout.context_len)
    ops.rope_(keys[:, context], layout.positions)
    return keys, values


def read_documents(layout: Layout, plan: Plan) -> list[int] | None:
    """The documents the assembly of `plan` reads: those with a token it keeps or recomputes
    (None when that is every one). A document with neither is seen by no kept token and
    copied into no cache."""
    if plan.sees_dropped and plan.recompute.numel():
        return None
    touched = torch.unique(layout.doc_of[torch.cat([plan.keep, plan.recompute])]).tolist()
    return None if len(touched) == len(layout.lengths) else touched


@torch.inference_mode()
def assemble(
    ops: ModelOps,
    prefix: KVCache,
    source: DocumentSource,
    layout: Layout,
    token_ids: torch.Tensor,
    plan: Plan,
    cache: KVCache,
    meter: KVMeter,
    tail: Tail | None = None,
) -> Assembled:
    """Fills `cache` with [P ; kept context tokens] for every layer, then `tail`'s tokens.

    token_ids [N] are the context's ids (needed for the recomputed tokens' embeddings). Tokens
    the plan recomputes that see what they saw at encoding (`encoded_as_seen`) keep their stored
    KV instead. The recomputed tokens and the tail share each layer's projections and MLP (one
    matrix product for both); the tail reads the layer's cache once the kept tokens are in it,
    which is what a separate prefill of the tail over the finished cache computes. The last
    layer computes the KV of every token and the output of the tail's last token only.
    """
    shape = ops.shape
    P, N = layout.prefix_len, layout.context_len
    rows = plan.recompute
    if not plan.reads_stored and rows.numel() != N:
        raise ValueError("a plan that reads no stored KV must recompute every context token")
    if plan.head_keep is not None and rows.numel():
        raise ValueError("a plan whose heads keep different tokens cannot recompute any")
    if not 0.0 <= plan.fuse <= 1.0 or (plan.fuse < 1.0 and not plan.reads_stored):
        raise ValueError("fuse must be in [0, 1], and below 1 only for a plan that reads stored KV")
    keep_slots = torch.cat([torch.arange(P), P + plan.keep]).to(ops.device)
    narrowing_at = {narrowing.layer: narrowing for narrowing in plan.narrowings}
    shared = torch.ones(N, dtype=torch.bool) if plan.sees_dropped else torch.zeros(N, dtype=torch.bool)
    shared[plan.keep] = True
    if plan.reads_stored:
        rows = rows[~encoded_as_seen(layout)[rows]]
    attention = DocumentAttention(layout, rows, shared, ops.device)
    tail_len = 0 if tail is None else int(tail.token_ids.numel())
    # Rows of `hidden`: the recomputed tokens, then the tail's.
    hidden = ops.embed(token_ids[rows] if tail is None else torch.cat([token_ids[rows], tail.token_ids]))
    tail_start = P + plan.cached_tokens
    tail_mask = causal_mask(tail_start, tail_len, ops.device) if tail_len > 1 else None
    documents = read_documents(layout, plan) if plan.reads_stored else None
    for layer in range(shape.num_layers):
        # The last layer's output of a token feeds only the logits: the context tokens need just
        # their KV there, and the tail its last token's output.
        last = layer == shape.num_layers - 1
        if plan.reads_stored:
            parts = source.read_layer(layer, documents)
            keys, values = align_layer(ops, prefix, parts, layout, layer, documents=documents)
        else:
            keys = torch.empty(shape.num_kv_heads, P + N, shape.head_dim, dtype=ops.dtype, device=ops.device)
            values = torch.empty_like(keys)
            keys[:, :P], values[:, :P] = prefix.layer(layer)
        meter.hold(keys, values)
        recomputing = int(rows.numel())
        outputs = []
        chosen = None
        if hidden.shape[0]:
            q_all, k_all, v_all = ops.qkv(layer, hidden)
        if recomputing:
            slots = (P + rows).to(ops.device)
            q, k, v = q_all[:, :recomputing], k_all[:, :recomputing], v_all[:, :recomputing]
            positions = layout.positions[rows].to(ops.device)
            q, k = ops.rope(q, positions), ops.rope(k, positions)
            if layer in narrowing_at:
                chosen = narrowing_at[layer].choose(k, v, keys[:, slots], values[:, slots])
            if plan.fuse < 1.0:
                k = plan.fuse * k + (1.0 - plan.fuse) * keys[:, slots]
                v = plan.fuse * v + (1.0 - plan.fuse) * values[:, slots]
            keys[:, slots], values[:, slots] = k, v
            if not last:
                outputs.append(attention(ops, q, keys, values, meter))
        if plan.head_keep is None:
            cache.write_layer(layer, 0, keys[:, keep_slots], values[:, keep_slots])
        else:
            cache.write_layer(layer, 0, *_per_head(keys, values, plan.head_keep[layer], P))
        meter.release(keys, values)
        if tail is not None:
            positions = tail.positions.to(ops.device)
            q, k = ops.rope(q_all[:, recomputing:], positions), ops.rope(k_all[:, recomputing:], positions)
            cache.write_layer(layer, tail_start, k, v_all[:, recomputing:])
            asking = slice(-1, None) if last else slice(None)
            mask = None if tail_mask is None else tail_mask[asking]
            outputs.append(ops.attend(q[:, asking], *cache.layer(layer, tail_start + tail_len), mask))
        if outputs:
            hidden = ops.finish(layer, hidden[-1:] if last else hidden, torch.cat(outputs) if len(outputs) > 1 else outputs[0])
        if chosen is not None:
            chosen = chosen.sort().values
            rows = rows[chosen.cpu()]
            if not last:
                keeps = chosen if tail is None else torch.cat([chosen, recomputing + torch.arange(tail_len, device=chosen.device)])
                hidden = hidden[keeps.to(ops.device)]
                attention = DocumentAttention(layout, rows, shared, ops.device)
    cache.length = tail_start + tail_len
    logits = None if tail is None else ops.logits(hidden[-1:])
    return Assembled(rows, logits)


def _per_head(
    keys: torch.Tensor, values: torch.Tensor, head_keep: torch.Tensor, prefix_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values [KVH, P + B, d] of the prefix and, per KV head, its own B kept tokens.

    keys, values [KVH, P + N, d] are aligned; head_keep [KVH, B] are context indices. Each head
    keeps as many tokens as the others, so the cache stays one tensor; a token's position
    travels in its rotated key, so heads need not agree on which token sits in which slot.
    """
    num_heads = keys.shape[0]
    prefix = torch.arange(prefix_len).expand(num_heads, -1)
    slots = torch.cat([prefix, prefix_len + head_keep], dim=1).to(keys.device)  # [KVH, P + B]
    index = slots[:, :, None].expand(-1, -1, keys.shape[2])
    return keys.gather(1, index), values.gather(1, index)
