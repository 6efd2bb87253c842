"""Durable tier: one safetensors file per chunk under `data_dir/kv/<2 hex>/<2 hex>/<key>.safetensors`
(the blob of `kvstore/disk_layout.py`)."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import time
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from kvstore.blob import BlobIndex
from kvstore.disk_layout import read_blob, read_blob_layer, to_blob
from kvstore.errors import CorruptEntry, StoreWriteError, TierUnavailable
from kvstore.keys import StoreKey
from kvstore.stored_format import Header, StoredDocument
from kvstore.stored_reads import read_header, read_token_ids
from kvstore.tier import Tier

_SUFFIX = ".safetensors"
_TEMP_SUFFIX = ".tmp"
# preadv takes at most this many buffers per call.
_IOV_MAX = os.sysconf("SC_IOV_MAX")


class DiskTier(Tier):
    """Files written atomically (temp file in the same folder, fsync, rename), read lazily per layer.

    A reader sees either the previous complete file or the new complete file, never a partial one:
    every read works on one open file, whose inode outlives a rename over it or a delete.
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
        with self._open(key) as f:
            return None if f is None else read_blob(f, key.fingerprint_hash)

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
            header, index = _read_file_header(f, key)
            return header, read_token_ids(f, index, header)

    def read_layer(
        self, key: StoreKey, layer: int
    ) -> tuple[Header, dict[str, torch.Tensor]] | None:
        with self._open(key) as f:
            if f is None:
                return None
            header, index = _read_file_header(f, key)
            return header, read_blob_layer(f, index, header, layer)

    def drop_page_cache(self) -> int:
        """Ask the OS to evict every stored file's pages from its page cache, so the next reads
        come from the device (a cold tier); returns the number of files advised.

        A hint: the kernel keeps pages that are dirty or mapped. Files that vanish meanwhile
        are skipped.
        """
        dropped = 0
        for path in self._files(_SUFFIX):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            dropped += 1
        return dropped

    def stored_keys(self, fingerprint_hash: str) -> set[StoreKey]:
        """Keys of the files that hold copies made by the model of `fingerprint_hash`; files in
        the folder that are not copies of ours are left out (and alone)."""
        keys = set()
        for path in self._files(_SUFFIX):
            try:
                key = StoreKey.parse(path.name.removesuffix(_SUFFIX))
            except ValueError:
                continue
            if key.fingerprint_hash == fingerprint_hash:
                keys.add(key)
        return keys

    def remove_interrupted_writes(self, older_than_s: float) -> int:
        """Delete the temporary files of writes that started over `older_than_s` seconds ago,
        which a crash must have interrupted; the number deleted. A younger one may be a write
        in progress (another process's, on a shared volume), so it stays."""
        removed = 0
        deadline = time.time() - older_than_s
        for path in self._files(_TEMP_SUFFIX):
            try:
                if path.stat().st_mtime < deadline:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:  # its writer finished or removed it meanwhile
                continue
        return removed

    def open_reader(self, key: StoreKey) -> DiskReader | None:
        path = self.path(key)
        f = _open_file(path)
        if f is None:
            return None
        try:
            header, index = _read_file_header(f, key)
            token_ids = read_token_ids(f, index, header)
        except BaseException:
            f.close()
            raise
        return DiskReader(path, key, f, index, header, token_ids)

    def _files(self, suffix: str) -> Iterator[Path]:
        return self.root.glob(f"*/*/*{suffix}")

    @contextlib.contextmanager
    def _open(self, key: StoreKey):
        f = _open_file(self.path(key))
        try:
            yield f
        finally:
            if f is not None:
                f.close()


def _open_file(path: Path) -> _File | None:
    """The file at `path` opened for reading, None when there is none."""
    try:
        return _File(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TierUnavailable(f"cannot read {path}: {exc}") from exc


def _read_file_header(f: _File, key: StoreKey) -> tuple[Header, BlobIndex]:
    header, index = read_header(f)
    header.check_fingerprint(key.fingerprint_hash)
    return header, index


class _File:
    """An open file as a `ByteSource`; closed when dropped if nobody closed it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_RDONLY)
        # A reader dropped mid-pass (a request that failed) still releases its descriptor.
        self._close = weakref.finalize(self, os.close, fd)
        self._fd = fd
        try:
            self.size = os.fstat(fd).st_size
        except OSError:
            self.close()
            raise

    def read(self, offset: int, length: int) -> bytes:
        out = np.empty(length, np.uint8)
        self.read_into(offset, [out])
        return out.tobytes()

    def read_into(self, offset: int, outs: Sequence[np.ndarray]) -> None:
        # One preadv scatters a run of adjacent entries into their separate buffers: a whole
        # document is one system call, like the raw read it is measured against.
        views = [memoryview(out) for out in outs if out.nbytes]
        first = 0
        try:
            while first < len(views):
                n = os.preadv(self._fd, views[first : first + _IOV_MAX], offset)
                if n == 0:
                    raise CorruptEntry(f"{self.path} ends before the entry it indexes")
                offset += n
                # A short read (a signal, a huge run) resumes inside the buffer it stopped in.
                while n:
                    if n >= len(views[first]):
                        n -= len(views[first])
                        first += 1
                    else:
                        views[first] = views[first][n:]
                        n = 0
        except OSError as exc:
            raise TierUnavailable(f"cannot read {self.path}: {exc}") from exc

    def close(self) -> None:
        self._close()


class DiskReader:
    """One file kept open for a pass over its layers: one open and one header parse per pass."""

    def __init__(
        self,
        path: Path,
        key: StoreKey,
        f: _File,
        index: BlobIndex,
        header: Header,
        token_ids: torch.Tensor,
    ) -> None:
        self._path = path
        self._key = key
        self._file: _File | None = f
        self._index = index
        self.header = header
        self.token_ids = token_ids

    def read_layer(self, layer: int) -> tuple[Header, dict[str, torch.Tensor]] | None:
        if self._file is None:
            f = _open_file(self._path)
            if f is None:
                return None
            try:
                self.header, self._index = _read_file_header(f, self._key)
            except BaseException:
                f.close()
                raise
            self._file = f
        return self.header, read_blob_layer(self._file, self._index, self.header, layer)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


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
