"""A data dir written by the release before the shared database (SQLite schema version 1,
no change log) is upgraded in place at start, its documents kept and searchable."""

from __future__ import annotations

import sqlite3

import numpy as np

from retrieval import RetrievalService
from retrieval.database import STORE_FILE
from retrieval.schema import SCHEMA_VERSION

# The schema of version 1, as that release created it.
_VERSION_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE documents (id TEXT PRIMARY KEY, metadata TEXT NOT NULL, text TEXT NOT NULL,
    state TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE chunks (id INTEGER PRIMARY KEY AUTOINCREMENT,
    document_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    position INTEGER NOT NULL, text TEXT NOT NULL, token_count INTEGER NOT NULL,
    content_hash TEXT NOT NULL, embedding BLOB NOT NULL);
CREATE INDEX chunks_by_document ON chunks (document_id, position);
INSERT INTO meta VALUES ('schema_version', '1');
"""


def test_a_version_1_store_is_upgraded_and_kept(tmp_path, count_tokens, embedder):
    data = tmp_path / "data"
    data.mkdir()
    text = "Lighthouse keepers on Skellig trim the lamp wick at dusk."
    vector = embedder.embed([text])[0].astype(np.float32)
    with sqlite3.connect(data / STORE_FILE) as conn:
        conn.executescript(_VERSION_1)
        conn.execute("INSERT INTO meta VALUES ('embedding_model', ?)", (embedder.fingerprint,))
        conn.execute("INSERT INTO documents VALUES ('old', '{}', ?, 'indexed', "
                     "'2025-01-01T00:00:00+00:00', '2025-01-01T00:00:00+00:00')", (text,))
        conn.execute("INSERT INTO chunks (document_id, position, text, token_count, content_hash,"
                     " embedding) VALUES ('old', 0, ?, 12, 'h', ?)", (text, vector.tobytes()))
    conn.close()

    with RetrievalService(data, count_tokens, embedder) as service:
        assert service.search("Who trims the lamp wick?", top_k=1)[0].document_id == "old"
        added = service.add_document("Tram drivers in Lisbon climb the Alfama hills.", "new")
        assert added.chunks[0].id > 1  # ids continue after the old ones, never reused
    with sqlite3.connect(data / STORE_FILE) as conn:
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    conn.close()
    assert version == (str(SCHEMA_VERSION),)
