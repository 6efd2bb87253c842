"""Durable tier: one safetensors file per chunk under `data_dir/kv/<2 hex>/<2 hex>/<key>.safetensors`."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from kvstore.errors import CorruptEntry, StoreWriteError, TierUnavailable
from kvstore.keys import StoreKey
from kvstore.serialization import (
    Header,
    StoredDocument,
    from_blob,
    layer_entry,
    to_blob,
    verify_layer,
    verify_token_ids,
)

_SUFFIX = ".safetensors"
_TEMP_SUFFIX = ".tmp"


class DiskTier:
    """Files written atomically (temp file in the same folder, fsync, rename), read lazily per layer.

    A reader sees either the previous complete file or the new complete file, never a partial one.
    """

    name = "disk"

    def __init__(self, data_dir: Path | str) -> None:
        self.root = Path(data_dir) / "kv"
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: StoreKey) -> Path:
        """Where `key`'s file lives."""
        h = key.content_hash
        return self.root / h[:2] / h[2:4] / f"{key}{_SUFFIX}"

    def put(self, key: StoreKey, stored: StoredDocument) -> None:
        """Write atomically; raise `StoreWriteError` (leaving no temp file) when the write fails."""
        self.write_bytes(key, to_blob(stored))

    def write_bytes(self, key: StoreKey, blob: bytes) -> None:
        """Write an already-serialised blob atomically under `key`."""
        path = self.path(key)
        tmp_name: str | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(
                prefix=f".{path.name[:16]}.", suffix=_TEMP_SUFFIX, dir=path.parent
            )
            try:
                view = memoryview(blob)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp_name, path)
            tmp_name = None
            _fsync_dir(path.parent)
        except OSError as exc:
            hint = (
                "free disk space"
                if exc.errno in (errno.ENOSPC, errno.EDQUOT)
                else "check the data directory"
            )
            raise StoreWriteError(
                f"could not write KV cache {key.content_hash[:12]} to {path}: "
                f"{exc.strerror or exc}; {hint} and ingest again"
            ) from exc
        finally:
            if tmp_name is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp_name)

    def get(self, key: StoreKey) -> StoredDocument | None:
        try:
            blob = self.path(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TierUnavailable(f"cannot read {self.path(key)}: {exc}") from exc
        return from_blob(blob, key.fingerprint_hash)

    def delete(self, key: StoreKey) -> bool:
        try:
            self.path(key).unlink()
        except FileNotFoundError:
            return False
        return True

    def contains(self, key: StoreKey) -> bool:
        return self.path(key).exists()

    def read_header(self, key: StoreKey) -> tuple[Header, torch.Tensor] | None:
        with self._open(key) as f:
            if f is None:
                return None
            header = self._header(f, key)
            token_ids = self._tensor(f, "token_ids")
        verify_token_ids(header, token_ids)
        return header, token_ids

    def read_layer(
        self, key: StoreKey, layer: int
    ) -> tuple[Header, dict[str, torch.Tensor]] | None:
        with self._open(key) as f:
            if f is None:
                return None
            header = self._header(f, key)
            if not 0 <= layer < header.n_layers:
                raise IndexError(
                    f"layer {layer} out of range for a {header.n_layers}-layer document"
                )
            tensors = {
                name: self._tensor(f, layer_entry(layer, name)) for name in header.layer_spec()
            }
        verify_layer(header, layer, tensors)
        return header, tensors

    @contextlib.contextmanager
    def _open(self, key: StoreKey):
        # One open per read: the header and the tensors then come from the same file even if a
        # writer replaces it meanwhile (the old inode lives on until closed).
        path = self.path(key)
        try:
            handle = safe_open(str(path), framework="pt")
        except FileNotFoundError:
            yield None
            return
        except SafetensorError as exc:
            if not path.exists():
                yield None
                return
            raise CorruptEntry(f"unreadable safetensors file {path}: {exc}") from exc
        except OSError as exc:
            raise TierUnavailable(f"cannot read {path}: {exc}") from exc
        with handle as f:
            yield f

    @staticmethod
    def _header(f, key: StoreKey) -> Header:
        header = Header.from_metadata(f.metadata())
        header.check_fingerprint(key.fingerprint_hash)
        return header

    @staticmethod
    def _tensor(f, name: str) -> torch.Tensor:
        try:
            return f.get_tensor(name)
        except SafetensorError as exc:
            raise CorruptEntry(f"entry {name!r} missing or unreadable: {exc}") from exc


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; some filesystems cannot open directories, which is harmless.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
