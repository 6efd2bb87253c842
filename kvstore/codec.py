"""Between the engine's `DocumentKV` and the stored form: cast, int8 quantisation, checksums.

int8 quantisation is symmetric, with scale = max|x| / 127 taken per (layer, head, channel) over
the tokens for keys and per (layer, head, token) over the channels for values, so a dequantised
element x̂ of an original element x obeys

    |x̂ - x| <= scale / 2 + eps * |x̂|

where eps is the storage dtype's unit roundoff (2^-11 for float16, 2^-8 for bfloat16), from
rounding the dequantised product to the storage dtype. Summary queries are never quantised:
they cost w/L of the keys and decide which tokens are kept.
"""

from __future__ import annotations

import torch

from kvstore.checksum import tensor_digest
from kvstore.stored_format import (
    DEFAULT_FORMAT,
    Header,
    StorageFormat,
    StoredDocument,
    combined_checksum,
)
from samkv.document import DocumentKV, LayerKV

_INT8_MAX = 127.0
# A channel or token that is all zeros still needs a non-zero scale to divide by.
_MIN_SCALE = 1e-12


def _quantize(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantisation with one float32 scale per slice along `dim`."""
    x = x.float()
    scale = (x.abs().amax(dim=dim, keepdim=True) / _INT8_MAX).clamp_min(_MIN_SCALE)
    q = torch.round(x / scale).clamp_(-_INT8_MAX, _INT8_MAX).to(torch.int8)
    return q, scale


def encode(doc: DocumentKV, fmt: StorageFormat = DEFAULT_FORMAT) -> StoredDocument:
    """Cast (and optionally quantise) a document to its stored form, with checksums.

    Tensors already in the storage dtype on the CPU are kept, not copied.
    """
    dtype = fmt.torch_dtype
    token_ids = doc.token_ids.detach().to("cpu", torch.int64).contiguous()
    # [n_layers, n_heads, w, head_dim]
    queries = doc.summary_queries.detach().to("cpu", dtype).contiguous()
    # In layer_spec order, which is checksum order.
    if fmt.quantization == "int8":
        # keys [n_layers, n_kv_heads, L, head_dim]: scale per channel, over tokens (dim -2);
        # values: scale per token, over channels (dim -1)
        k, k_scale = _quantize(doc.keys.detach().cpu(), dim=-2)
        v, v_scale = _quantize(doc.values.detach().cpu(), dim=-1)
        tensors = {"k": k, "v": v, "q": queries, "k_scale": k_scale, "v_scale": v_scale}
    else:
        k = doc.keys.detach().to("cpu", dtype).contiguous()
        v = doc.values.detach().to("cpu", dtype).contiguous()
        tensors = {"k": k, "v": v, "q": queries}

    n_kv_heads, length, head_dim = doc.keys.shape[1:]
    n_heads, window = doc.summary_queries.shape[1:3]
    token_sum = tensor_digest(fmt.checksum, [token_ids])
    layer_sums = tuple(
        tensor_digest(fmt.checksum, [t[i] for t in tensors.values()]) for i in range(doc.num_layers)
    )
    header = Header(
        fingerprint=doc.fingerprint,
        storage_dtype=fmt.dtype,
        quantization=fmt.quantization,
        prefix_len=int(doc.prefix_len),
        n_layers=doc.num_layers,
        n_kv_heads=int(n_kv_heads),
        length=int(length),
        head_dim=int(head_dim),
        n_heads=int(n_heads),
        window=int(window),
        token_ids_checksum=token_sum,
        layer_checksums=layer_sums,
        checksum=combined_checksum(token_sum, layer_sums),
        checksum_algorithm=fmt.checksum,
    )
    return StoredDocument(header, token_ids, tensors)


def _keys_values(
    header: Header, tensors: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values in the storage dtype, of one layer or stacked: as stored (no copy), or
    dequantised from int8."""
    if header.quantization == "none":
        return tensors["k"], tensors["v"]
    dtype = header.format.torch_dtype
    keys = (tensors["k"].float() * tensors["k_scale"]).to(dtype)
    values = (tensors["v"].float() * tensors["v_scale"]).to(dtype)
    return keys, values


def decode_layer(header: Header, tensors: dict[str, torch.Tensor]) -> LayerKV:
    """One stored layer as the engine reads it; unquantised layers are returned without a copy."""
    return LayerKV(*_keys_values(header, tensors), tensors["q"])


def decode(stored: StoredDocument) -> DocumentKV:
    """The `DocumentKV` a stored document stands for, in the storage dtype.

    Unquantised, it shares the stored tensors (no copy); int8 keys and values are dequantised.
    """
    keys, values = _keys_values(stored.header, stored.tensors)
    return DocumentKV(
        token_ids=stored.token_ids,
        keys=keys,
        values=values,
        summary_queries=stored.tensors["q"],
        fingerprint=stored.header.fingerprint,
        prefix_len=stored.header.prefix_len,
    )
