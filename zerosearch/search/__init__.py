"""Search engines behind one batched protocol, so rollouts and evaluation can swap them."""

from zerosearch.search.base import Doc, SearchEngine, format_docs

__all__ = ["Doc", "SearchEngine", "format_docs"]
