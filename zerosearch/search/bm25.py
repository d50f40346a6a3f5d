"""The real engine for the tiny world: BM25 (``bm25s``) over a local jsonl corpus."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import bm25s

from zerosearch.atomic import atomic_path
from zerosearch.data.schema import read_corpus, write_jsonl
from zerosearch.protocol import Doc

_DOCS_FILE = "docs.jsonl"
logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs every empty query at INFO


def _doc_text(doc: dict) -> str:
    return f"{doc['title']} {doc['text']}"


class BM25Engine:
    """Batched BM25 retrieval; title and text are indexed together."""

    def __init__(self, retriever: bm25s.BM25, docs: list[dict], top_k: int = 3):
        self.retriever = retriever
        self.docs = docs
        self.top_k = top_k

    @classmethod
    def build(cls, docs: list[dict], *, k1: float = 1.5, b: float = 0.75, top_k: int = 3) -> BM25Engine:
        retriever = bm25s.BM25(k1=k1, b=b)
        tokens = bm25s.tokenize([_doc_text(d) for d in docs], stopwords="en", show_progress=False)
        retriever.index(tokens, show_progress=False)
        return cls(retriever, docs, top_k)

    @classmethod
    def from_corpus(cls, corpus_path: str | Path, **kwargs) -> BM25Engine:
        return cls.build(read_corpus(corpus_path), **kwargs)

    def save(self, directory: str | Path) -> Path:
        """Save the index and its documents under ``directory`` (replaced atomically)."""
        with atomic_path(directory) as tmp:
            self.retriever.save(tmp, show_progress=False)
            write_jsonl(self.docs, tmp / _DOCS_FILE)
        return Path(directory)

    @classmethod
    def load(cls, directory: str | Path, top_k: int = 3) -> BM25Engine:
        directory = Path(directory)
        if not (directory / _DOCS_FILE).exists():
            raise FileNotFoundError(
                f"no BM25 index at {directory}: run the data stage (`zerosearch data`) first"
            )
        retriever = bm25s.BM25.load(directory, show_progress=False)
        return cls(retriever, read_corpus(directory / _DOCS_FILE), top_k)

    def search(
        self,
        queries: Sequence[str],
        *,
        questions: Sequence[str] | None = None,
        answers: Sequence[Sequence[str]] | None = None,
        step: int = 0,
        top_k: int | None = None,
    ) -> list[list[Doc]]:
        """Top-k documents per query; an empty or stopword-only query returns no documents."""
        k = min(top_k or self.top_k, len(self.docs))
        if not queries:
            return []
        tokens = bm25s.tokenize(list(queries), stopwords="en", show_progress=False, allow_empty=True)
        ids, scores = self.retriever.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        results = []
        for row_ids, row_scores in zip(ids, scores):
            docs = [self.docs[int(i)] for i, s in zip(row_ids, row_scores) if s > 0]
            results.append([Doc(title=d["title"], text=d["text"], id=str(d["id"])) for d in docs])
        return results
