"""The ``SearchEngine`` protocol and the document type every engine returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Doc:
    title: str
    text: str
    id: str = ""
    noisy: bool | None = None  # set by the simulated engine: which kind it was asked for

    def render(self) -> str:
        return f"({self.title}) {self.text}" if self.title else self.text


def format_docs(docs: Sequence[Doc]) -> str:
    """``Doc 1: (title) text`` lines, the format the policy reads inside ``<information>``."""
    return "\n".join(f"Doc {i}: {d.render()}" for i, d in enumerate(docs, start=1))


class SearchEngine(Protocol):
    """Batched search: one list of documents per query.

    ``questions``/``answers`` (the original question and gold aliases of each query's
    trajectory) are used only by the simulated engine; ``step`` drives its curriculum.
    """

    def search(
        self,
        queries: Sequence[str],
        *,
        questions: Sequence[str] | None = None,
        answers: Sequence[Sequence[str]] | None = None,
        step: int = 0,
    ) -> list[list[Doc]]: ...
