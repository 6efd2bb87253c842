"""The index file on disk: FAISS's own serialisation followed by a trailer holding the
change version the index reflects and a checksum.

FAISS reads many damaged files without complaint (a flipped bit in a vector is still a
vector), so the trailer is what tells a damaged index from a good one. A file without a valid
trailer is treated as damaged; the caller rebuilds the index from the store, which is always
possible and always right.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

MAGIC = b"SAMKVIX2"
_VERSION_BYTES = 8
_DIGEST_BYTES = hashlib.sha256().digest_size
TRAILER_BYTES = len(MAGIC) + _VERSION_BYTES + _DIGEST_BYTES


class IndexFile(NamedTuple):
    """What an index file holds: the serialised index and the change version it reflects."""

    data: np.ndarray
    version: int


def write_index_file(path: Path, data: np.ndarray, version: int = 0) -> None:
    """Write serialised index bytes, the change `version` they reflect and a checksum atomically.

    A temporary file in the same directory is written and fsynced, renamed over `path`, and
    the directory fsynced, so a crash leaves either the old complete file or the new one.
    """
    payload = np.ascontiguousarray(data, dtype=np.uint8).tobytes()
    stamp = version.to_bytes(_VERSION_BYTES, "little", signed=True)
    trailer = MAGIC + stamp + hashlib.sha256(payload + stamp).digest()
    handle, temporary = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(payload)
            file.write(trailer)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    # The rename itself is only durable once the directory entry is on disk.
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def read_index_file(path: Path) -> IndexFile:
    """The serialised index bytes and version of a file written by `write_index_file`.

    Raises ValueError when the trailer is missing or the checksum does not match (a truncated,
    overwritten or bit-flipped file); OSError when the file cannot be read.
    """
    data = path.read_bytes()
    magic_end = len(data) - TRAILER_BYTES + len(MAGIC)
    if len(data) < TRAILER_BYTES or data[-TRAILER_BYTES:magic_end] != MAGIC:
        raise ValueError("no checksum trailer (truncated, or not written by this service)")
    payload, stamp = data[:-TRAILER_BYTES], data[magic_end:-_DIGEST_BYTES]
    if hashlib.sha256(payload + stamp).digest() != data[-_DIGEST_BYTES:]:
        raise ValueError("checksum mismatch (the file was damaged after it was written)")
    version = int.from_bytes(stamp, "little", signed=True)
    return IndexFile(np.frombuffer(payload, dtype=np.uint8), version)
