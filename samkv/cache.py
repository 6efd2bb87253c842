"""The decoding KV cache and the meter that measures the KV bytes a request holds."""

from __future__ import annotations

import torch


def tensor_bytes(*tensors: torch.Tensor) -> int:
    """The bytes the elements of `tensors` take."""
    return sum(t.numel() * t.element_size() for t in tensors)


class KVMeter:
    """Counts the bytes of KV tensors a request holds, and the peak of that count."""

    def __init__(self) -> None:
        self.current = 0
        self.peak = 0

    def hold(self, *tensors: torch.Tensor) -> None:
        self.current += tensor_bytes(*tensors)
        self.peak = max(self.peak, self.current)

    def release(self, *tensors: torch.Tensor) -> None:
        self.current -= tensor_bytes(*tensors)


class KVCache:
    """Per-layer keys (after RoPE) and values, preallocated to the request's final length.

    Entries are appended in prompt order; a token's position is carried by its rotated key, so
    a compact cache (tokens dropped) keeps every remaining token at its original position.
    """

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        capacity: int,
        dtype: torch.dtype,
        device: torch.device,
        meter: KVMeter,
    ) -> None:
        shape = (num_layers, num_kv_heads, capacity, head_dim)
        self.keys = torch.empty(shape, dtype=dtype, device=device)
        self.values = torch.empty(shape, dtype=dtype, device=device)
        self.length = 0
        self.capacity = capacity
        meter.hold(self.keys, self.values)

    def write_layer(self, layer: int, start: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Writes [KVH, T, d] keys and values of `layer` at cache slots start .. start+T-1."""
        end = start + keys.shape[1]
        if end > self.capacity:
            raise RuntimeError(f"KV cache overflow: {end} > capacity {self.capacity}")
        self.keys[layer, :, start:end] = keys
        self.values[layer, :, start:end] = values

    def layer(self, layer: int, end: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [KVH, end, d] of `layer` (default: the filled part)."""
        end = self.length if end is None else end
        return self.keys[layer, :, :end], self.values[layer, :, :end]

    @property
    def used_bytes(self) -> int:
        """Bytes of the filled entries: the KV a decoding step reads."""
        per_slot = self.keys[:, :, :1].numel() * self.keys.element_size()
        return 2 * per_slot * self.length
