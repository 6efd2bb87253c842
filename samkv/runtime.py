"""Model runtime: resolving a model name or path, loading the model and tokenizer, device and dtype."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from samkv.embedded import DEFAULT_MODEL, EMBEDDED, converted_checkpoint
from samkv.errors import ModelLoadError
from samkv.quantize import WEIGHTS, quantize_weights

logger = logging.getLogger(__name__)

SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2")
_HASH_BLOCK = 1 << 20


@dataclass(frozen=True)
class LoadedModel:
    """A causal LM ready for the engine, with what identifies it."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    path: Path
    weights_fingerprint: str
    device: torch.device
    dtype: torch.dtype


def resolve_device(device: str | None) -> torch.device:
    """`auto`/None picks CUDA when present, else the CPU."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """`auto`/None is bfloat16 on CUDA and float32 on the CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "", "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in names:
        raise ModelLoadError(f"unknown dtype {dtype!r}; expected auto, {', '.join(names)}")
    return names[dtype]


def resolve_model_path(model: str | os.PathLike[str] | None, cache_dir: Path | None = None) -> Path:
    """The local checkpoint to load: an embedded model's name (empty: the default) or a path."""
    if model in (None, ""):
        model = DEFAULT_MODEL
    if str(model) in EMBEDDED:
        return converted_checkpoint(str(model), cache_dir)
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"no Hugging Face checkpoint at {path} (config.json missing) and no embedded model "
            f"of that name ({', '.join(EMBEDDED)}); models are loaded from local paths only, "
            "never downloaded"
        )
    return path


def _weights_fingerprint(path: Path) -> str:
    """Identifies the checkpoint's weights, config and tokenizer without reading every byte."""
    digest = hashlib.sha256()
    for file in sorted(path.iterdir()):
        if not file.is_file():
            continue
        digest.update(file.name.encode())
        size = file.stat().st_size
        digest.update(str(size).encode())
        with file.open("rb") as handle:
            digest.update(handle.read(_HASH_BLOCK))
            if size > 2 * _HASH_BLOCK:
                handle.seek(size - _HASH_BLOCK)
                digest.update(handle.read(_HASH_BLOCK))
    return digest.hexdigest()


def load_tokenizer(
    model: str | os.PathLike[str] | None = None, cache_dir: Path | None = None
) -> PreTrainedTokenizerBase:
    """The tokenizer of `model` (the default embedded model when empty)."""
    return _tokenizer(resolve_model_path(model, cache_dir))


def _tokenizer(path: Path) -> PreTrainedTokenizerBase:
    # transformers 4.57.3+ warns of a wrong Mistral pre-tokenizer regex for every local
    # checkpoint; ours are converted by families' own converters (tests/samkv/test_models.py
    # checks Qwen2's digit and punctuation splits), so the flag only silences it.
    return AutoTokenizer.from_pretrained(path, fix_mistral_regex=False)


def load_model(
    model: str | os.PathLike[str] | None = None,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    cache_dir: Path | None = None,
    weights: str = "float",
) -> LoadedModel:
    """Loads a Llama / Mistral / Qwen2 checkpoint (or an embedded model by name) for the engine.

    `weights="int8"` makes the linear layers int8 weight-only (samkv.quantize) before anything
    runs, so encoding, recomputation and decoding share the same weights.
    """
    if weights not in WEIGHTS:
        raise ModelLoadError(f"unknown weights {weights!r}; expected one of {', '.join(WEIGHTS)}")
    path = resolve_model_path(model, cache_dir)
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    try:
        tokenizer = _tokenizer(path)
        hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=resolved_dtype)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"could not load the model at {path}: {error}") from error
    family = hf_model.config.model_type
    if family not in SUPPORTED_FAMILIES:
        raise ModelLoadError(
            f"model family {family!r} is not supported; expected one of {', '.join(SUPPORTED_FAMILIES)}"
        )
    hf_model.to(resolved_device).eval()
    quantize_weights(hf_model, weights)
    fingerprint = _weights_fingerprint(path)
    if weights != "float":
        # Caches computed with other weights are other caches.
        fingerprint = hashlib.sha256(f"{fingerprint}:{weights}".encode()).hexdigest()
    return LoadedModel(
        model=hf_model,
        tokenizer=tokenizer,
        path=path,
        weights_fingerprint=fingerprint,
        device=resolved_device,
        dtype=resolved_dtype,
    )
