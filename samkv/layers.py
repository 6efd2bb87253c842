"""The model's layers driven one at a time: projections, rotary embedding, attention, MLP.

The Hugging Face modules are used for their weights (projections, norms, MLP, rotary
embedding); the layer loop and the attention masks belong to the engine, so stored and
recomputed KV can be mixed per token and one layer can be processed at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

# Rows of queries per attention call: bounds the mask and score memory on long contexts.
QUERY_CHUNK = 4096
# Rotary types whose angle for a position depends on the longest position of the call; every
# other type gives a position the same angle in any call, so one table serves all calls.
_CALL_DEPENDENT_ROPE = ("dynamic", "longrope")


@dataclass(frozen=True)
class ModelShape:
    """The sizes the engine needs to lay out tensors."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    max_positions: int


class ModelOps:
    """Per-layer operations over a Llama / Mistral / Qwen2 causal LM."""

    def __init__(self, model: PreTrainedModel, layers: Sequence[nn.Module] | None = None) -> None:
        """`layers` replace the model's decoder blocks (e.g. int8 copies of them, `samkv.quantize.int8_blocks`);
        the embeddings, rotary embedding, final norm and LM head stay the model's."""
        self.model = model
        self.decoder = model.model
        self.layers = model.model.layers if layers is None else layers
        config = model.config
        num_heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
        self.shape = ModelShape(
            num_layers=config.num_hidden_layers,
            num_heads=num_heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or num_heads,
            head_dim=head_dim,
            hidden_size=config.hidden_size,
            vocab_size=config.vocab_size,
            max_positions=config.max_position_embeddings,
        )
        self.scale = head_dim**-0.5
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        rope_type = getattr(self.decoder.rotary_emb, "rope_type", "default")
        self._tabled_rope = not any(kind in rope_type for kind in _CALL_DEPENDENT_ROPE)
        # cos, sin [positions, head_dim / 2] of positions 0 .. len - 1, grown on demand; replaced
        # whole (never written in place), so a request on another thread reads a complete table.
        self._rotary_table: tuple[torch.Tensor, torch.Tensor] | None = None
        # (positions, cos, sin) of the last positions tensor rotated to, replaced whole.
        self._last_rotation: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """[T] ids -> [T, hidden]."""
        return self.decoder.embed_tokens(token_ids.to(self.device))

    def _rotation(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [T, head_dim / 2] of the model's own rotary embedding (scaled variants
        included) at positions [T]: the angles of one half of a vector, which the other half
        shares (rotate-half RoPE, `_rotary_of` checks it).

        Every layer and pass of a request rotates to the same positions, so the angles come from
        a table of the model's rotary embedding computed once, and the rows of the last positions
        tensor asked for are kept for the next call with that same tensor.
        """
        last = self._last_rotation
        if last is not None and last[0] is positions:
            return last[1], last[2]
        if not self._tabled_rope or positions.numel() == 0:
            return self._rotary_of(positions)
        table = self._rotary_table
        needed = int(positions.max()) + 1
        if table is None or table[0].shape[0] < needed:
            size = max(needed, 2 * table[0].shape[0] if table is not None else 1024)
            table = self._rotary_of(torch.arange(size))
            self._rotary_table = table
        index = positions.to(self.device)
        cos, sin = table[0][index], table[1][index]
        self._last_rotation = (positions, cos, sin)
        return cos, sin

    def _rotary_of(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probe = torch.empty(0, dtype=self.dtype, device=self.device)
        cos, sin = self.decoder.rotary_emb(probe, positions.to(self.device)[None])
        cos, sin = cos[0], sin[0]
        half = cos.shape[-1] // 2
        if not (torch.equal(cos[:, :half], cos[:, half:]) and torch.equal(sin[:, :half], sin[:, half:])):
            raise ValueError("the model's rotary embedding does not turn both halves of a vector alike")
        return cos[:, :half], sin[:, :half]

    def rope(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotates x [heads, T, head_dim] to the absolute positions [T]; returns a new tensor."""
        return self._rotate(x, positions, torch.empty_like(x))

    def rope_(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """`rope` in place: x [heads, T, head_dim], which may be a view into a larger buffer,
        is overwritten with its rotation and returned."""
        return self._rotate(x, positions, x)

    def _rotate(self, x: torch.Tensor, positions: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        # x·cos + (−second ; first)·sin computed per half: the same products and sums, rounded
        # the same way, without building the swapped copy of x.
        cos, sin = self._rotation(positions)
        half = x.shape[-1] // 2
        first, second = x[..., :half], x[..., half:]
        first_sin, second_sin = first * sin, second * sin  # taken before `out` may overwrite x
        torch.mul(first, cos, out=out[..., :half]).sub_(second_sin)
        torch.mul(second, cos, out=out[..., half:]).add_(first_sin)
        return out

    def qkv(self, layer: int, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries [H, T, d], keys [KVH, T, d] (both before RoPE) and values [KVH, T, d] of a layer."""
        block = self.layers[layer]
        attn = block.self_attn
        x = block.input_layernorm(hidden)  # [T, hidden]
        tokens = x.shape[0]
        shape = self.shape
        stacked = getattr(attn, "qkv_proj", None)  # int8 weights stack the three (samkv.quantize)
        if stacked is not None:
            q, k, v = stacked.parts(x)
        else:
            q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
        q = q.view(tokens, shape.num_heads, shape.head_dim).transpose(0, 1)
        k = k.view(tokens, shape.num_kv_heads, shape.head_dim).transpose(0, 1)
        v = v.view(tokens, shape.num_kv_heads, shape.head_dim).transpose(0, 1)
        return q, k, v

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Attention of q [H, T, d] over k, v [KVH, S, d] with a boolean mask [T, S] (True = may attend).

        Returns the per-token attention output [T, H * d], before the output projection.
        """
        outputs = []
        for start in range(0, q.shape[1], QUERY_CHUNK):
            rows = slice(start, start + QUERY_CHUNK)
            chunk_mask = None if mask is None else mask[rows]
            out = F.scaled_dot_product_attention(
                q[None, :, rows], k[None], v[None], attn_mask=chunk_mask, enable_gqa=True
            )  # [1, H, t, d]
            outputs.append(out[0].transpose(0, 1).reshape(out.shape[2], -1))
        return torch.cat(outputs, dim=0)

    def attention_probs(self, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Explicit softmax attention weights [H, T, S] of q [H, T, d] over k [KVH, S, d], in float32."""
        kv_heads, length = k.shape[0], k.shape[1]
        heads, tokens = q.shape[0], q.shape[1]
        # Query heads h sharing KV head h // group stacked as rows: no repeated copy of the keys.
        grouped = q.float().reshape(kv_heads, (heads // kv_heads) * tokens, q.shape[2])
        scores = torch.matmul(grouped, k.float().transpose(1, 2)).mul_(self.scale)  # [KVH, group * T, S]
        # In place: a score tensor spans the whole context, and a fresh one per step costs more than the step.
        scores = scores.view(heads, tokens, length).masked_fill_(~mask, float("-inf"))
        return torch.softmax(scores, dim=-1)

    def weigh_values(self, probs: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention output [T, H * d] of weights probs [H, T, S] over values v [KVH, S, d]."""
        kv_heads, heads, tokens = v.shape[0], probs.shape[0], probs.shape[1]
        grouped = probs.to(v.dtype).reshape(kv_heads, (heads // kv_heads) * tokens, probs.shape[2])
        out = torch.matmul(grouped, v).view(heads, tokens, v.shape[2])  # [H, T, d]
        return out.transpose(0, 1).reshape(tokens, -1)

    def finish(self, layer: int, hidden: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """Output projection, residuals and MLP: the layer's output hidden states [T, hidden]."""
        block = self.layers[layer]
        hidden = hidden + block.self_attn.o_proj(attn_out)
        return hidden + block.mlp(block.post_attention_layernorm(hidden))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head: [T, hidden] -> [T, vocab] in float32."""
        return self.model.lm_head(self.decoder.norm(hidden)).float()
