"""The index file's checksum: damage FAISS would read without complaint is detected."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from retrieval.index_file import TRAILER_BYTES, read_index_file, write_index_file
from retrieval.vector_index import VectorIndex


@pytest.fixture
def index_path(tmp_path):
    index = VectorIndex(8)
    vectors = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    index.add(np.arange(16, dtype=np.int64), vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    path = tmp_path / "index.faiss"
    write_index_file(path, index.to_bytes(), version=7)
    return path


def test_an_intact_file_reads_back(index_path):
    stored = read_index_file(index_path)
    assert stored.version == 7
    assert VectorIndex.from_bytes(stored.data).ntotal == 16
    assert not list(index_path.parent.glob("*.tmp"))


def test_a_flipped_byte_is_detected_though_faiss_reads_it(index_path):
    raw = bytearray(index_path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    index_path.write_bytes(bytes(raw))
    # FAISS alone would serve the damaged vectors.
    assert faiss.deserialize_index(np.frombuffer(bytes(raw[:-TRAILER_BYTES]), dtype=np.uint8)).ntotal == 16
    with pytest.raises(ValueError, match="checksum mismatch"):
        read_index_file(index_path)


@pytest.mark.parametrize("damage", ["truncated", "no trailer", "empty"])
def test_missing_trailer_is_detected(index_path, damage):
    raw = index_path.read_bytes()
    index_path.write_bytes({"truncated": raw[: len(raw) // 2], "no trailer": raw[:-TRAILER_BYTES],
                            "empty": b""}[damage])
    with pytest.raises(ValueError, match="no checksum trailer"):
        read_index_file(index_path)
