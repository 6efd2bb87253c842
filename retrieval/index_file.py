"""The index file on disk: FAISS's own serialisation followed by a checksum trailer.

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

import numpy as np

MAGIC = b"SAMKVIX1"
_DIGEST_BYTES = hashlib.sha256().digest_size
_TRAILER_BYTES = len(MAGIC) + _DIGEST_BYTES


def write_index_file(path: Path, data: np.ndarray) -> None:
    """Write serialised index bytes and their trailer atomically.

    A temporary file in the same directory is written and fsynced, renamed over `path`, and
    the directory fsynced, so a crash leaves either the old complete file or the new one.
    """
    payload = np.ascontiguousarray(data, dtype=np.uint8).tobytes()
    trailer = MAGIC + hashlib.sha256(payload).digest()
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


def read_index_file(path: Path) -> np.ndarray:
    """The serialised index bytes of a file written by `write_index_file`.

    Raises ValueError when the trailer is missing or the checksum does not match (a truncated,
    overwritten or bit-flipped file); OSError when the file cannot be read.
    """
    data = path.read_bytes()
    if len(data) < _TRAILER_BYTES or data[-_TRAILER_BYTES:-_DIGEST_BYTES] != MAGIC:
        raise ValueError("no checksum trailer (truncated, or not written by this service)")
    payload, digest = data[:-_TRAILER_BYTES], data[-_DIGEST_BYTES:]
    if hashlib.sha256(payload).digest() != digest:
        raise ValueError("checksum mismatch (the file was damaged after it was written)")
    return np.frombuffer(payload, dtype=np.uint8)
