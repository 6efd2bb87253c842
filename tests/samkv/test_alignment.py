"""Stored keys placed at any offset are the keys a full prefill computes there."""

from __future__ import annotations

import pytest
import torch

from samkv.assembly import align_layer
from samkv.forward import Recording, forward_tokens
from samkv.layout import Layout
from tests.conftest import DOCUMENTS, prefix_cache


def _full_prefill_keys(engine, docs):
    """Per-layer rotated keys and values of a full prefill of [P ; D_1 … D_n]."""
    ids = torch.cat([d.token_ids for d in docs])
    cache = prefix_cache(engine, int(ids.numel()))
    record = Recording()
    positions = engine.prefix_len + torch.arange(ids.numel())
    forward_tokens(engine.ops, cache, ids, positions, record=record)
    return cache, record


@pytest.mark.parametrize("family", ["llama", "llama-scaled-rope", "qwen2"])
def test_first_document_is_exact_at_every_layer(tiny_engine, family):
    engine = tiny_engine(family)
    docs = engine.encode_documents(DOCUMENTS[:3])
    cache, _ = _full_prefill_keys(engine, docs)
    layout = Layout.of(engine.prefix_len, [d.length for d in docs])
    first = slice(engine.prefix_len, engine.prefix_len + docs[0].length)
    for layer in range(engine.ops.shape.num_layers):
        keys, values = align_layer(engine.ops, engine.prefix, [d.layer(layer) for d in docs], layout, layer)
        full_keys, full_values = cache.layer(layer)
        torch.testing.assert_close(keys[:, first], full_keys[:, first], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(values[:, first], full_values[:, first], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["llama", "llama-scaled-rope", "qwen2"])
def test_later_documents_get_the_rotation_of_their_offset(tiny_engine, family):
    """Before any attention (layer 0), a later document's keys depend only on its tokens and
    positions, so aligned stored keys must equal the full prefill's keys exactly."""
    engine = tiny_engine(family)
    docs = engine.encode_documents(DOCUMENTS)
    cache, _ = _full_prefill_keys(engine, docs)
    layout = Layout.of(engine.prefix_len, [d.length for d in docs])
    keys, values = align_layer(engine.ops, engine.prefix, [d.layer(0) for d in docs], layout, 0)
    full_keys, full_values = cache.layer(0)
    torch.testing.assert_close(keys, full_keys, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(values, full_values, atol=1e-5, rtol=1e-4)
    # ... and a shift of one position would be caught.
    shifted = engine.ops.rope(docs[-1].keys[0], torch.arange(docs[-1].length) + layout.question_start - docs[-1].length + 1)
    last = slice(layout.question_start - docs[-1].length, layout.question_start)
    assert (shifted - full_keys[:, last]).abs().max() > 1e-3


@pytest.mark.parametrize("family", ["llama", "llama-scaled-rope", "qwen2"])
def test_rope_is_the_rotate_half_rotation_and_rope_in_place_touches_only_its_view(tiny_engine, family):
    ops = tiny_engine(family).ops
    heads, d = ops.shape.num_kv_heads, ops.shape.head_dim
    generator = torch.Generator().manual_seed(0)
    buffer = torch.randn(heads, 60, d, generator=generator)
    before = buffer.clone()
    for positions in (torch.randint(0, 3000, (40,), generator=generator), torch.arange(40) + 7):
        cos, sin = ops.decoder.rotary_emb(torch.empty(0), positions[None])
        x = before[:, 10:50]
        expected = x * cos[0] + torch.cat((-x[..., d // 2 :], x[..., : d // 2]), dim=-1) * sin[0]
        rotated = ops.rope(x, positions)
        torch.testing.assert_close(rotated, expected, atol=1e-6, rtol=1e-6)
        buffer.copy_(before)
        assert ops.rope_(buffer[:, 10:50], positions).data_ptr() == buffer[:, 10:50].data_ptr()
        assert torch.equal(buffer[:, 10:50], rotated)
        assert torch.equal(buffer[:, :10], before[:, :10]) and torch.equal(buffer[:, 50:], before[:, 50:])
