"""Turning the simulator LLM's raw text into documents the policy may read.

The simulator is asked for ``Doc 1: ...`` .. ``Doc k: ...``. Real outputs drift: chatter
before the first document, bold or spaced markers, skipped or repeated numbers, extra
documents, and (worst) text that opens or closes the policy's own protocol tags, which
would let a document end the ``<information>`` block or answer for the policy.
``sanitize`` (``zerosearch.protocol``: every engine's documents pass through it) removes those
tags; ``parse_documents`` recovers up to ``k`` documents.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from zerosearch.protocol import PROTOCOL_TAGS, sanitize

__all__ = ["PROTOCOL_TAGS", "ParsedOutput", "parse_documents", "sanitize"]

# ``Doc 1:``, ``Doc 1 :``, ``doc1:``, ``**Doc 1:**``, ``**Doc 1**:``, ``Document 1:``.
_MARKER_RE = re.compile(
    r"(?<![A-Za-z0-9])(?:document|doc)\s*(\d+)\s*(?:\*\*|__)?\s*:\s*(?:\*\*|__)?",
    re.IGNORECASE,
)
_DECORATION = " \t\r\n*#_>"  # markdown left around markers and at document ends
_USABLE_RE = re.compile(r"\w")  # a document must hold at least one letter or digit


@dataclass(frozen=True)
class ParsedOutput:
    """Documents recovered from one simulator output.

    ``docs``: at most ``k`` sanitized, one-line, non-empty documents, in the order written.
    ``malformed``: nothing usable was found (empty, only tags or punctuation, or only
    empty ``Doc N:`` markers); ``docs`` is then ``[]``.
    ``repaired``: documents were recovered despite a defect: no markers (text split by
    blank lines or lines), numbers skipped/out of order/duplicated, or fewer than ``k``
    documents. Leading chatter and documents past ``Doc k`` are dropped silently.
    """

    docs: list[str]
    malformed: bool
    repaired: bool


def _clean_doc(text: str, max_words: int) -> str:
    """One line, markdown decoration trimmed, at most ``max_words`` words; '' if unusable."""
    words = text.strip(_DECORATION).split()
    doc = " ".join(words[:max_words]).strip(_DECORATION)
    return doc if _USABLE_RE.search(doc) else ""


def _split_marked(text: str, k: int) -> tuple[list[str], list[int]] | None:
    """Segments after each ``Doc N:`` marker (N <= k), cut at the first N > k.

    Returns (segments, numbers), or None when the text has no marker at all.
    """
    matches = list(_MARKER_RE.finditer(text))
    if not matches:
        return None
    segments, numbers = [], []
    for i, m in enumerate(matches):
        number = int(m.group(1))
        if number > k:
            break  # Doc k+1 and everything after it is cut
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        segments.append(text[m.end():end])
        numbers.append(number)
    return segments, numbers


def _split_unmarked(text: str) -> list[str]:
    """Blocks separated by blank lines, or single lines when there is only one block."""
    blocks = [b for b in re.split(r"\n\s*\n", text) if b.strip()]
    if len(blocks) <= 1:
        blocks = [line for line in text.split("\n") if line.strip()]
    return blocks


def parse_documents(text: str, k: int, max_words: int = 80) -> ParsedOutput:
    """Up to ``k`` documents from the simulator's ``Doc 1: ... Doc k: ...`` text.

    The text is sanitized first (see ``sanitize``). With markers, the text after each
    ``Doc N:`` up to the next marker is one document; chatter before the first marker and
    everything from the first ``Doc N:`` with ``N > k`` on is dropped. Without markers the
    text is split by blank lines (or lines) into at most ``k`` documents. Each document is
    collapsed to one line and truncated to ``max_words`` whitespace-separated words;
    documents without a letter or digit and exact repeats are dropped.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if max_words < 1:
        raise ValueError(f"max_words must be >= 1, got {max_words}")
    clean = sanitize(text)
    marked = _split_marked(clean, k)
    if marked is None:
        segments, defect = _split_unmarked(clean), True
    else:
        segments, numbers = marked
        defect = numbers != list(range(1, len(numbers) + 1))
    docs: list[str] = []
    for segment in segments:
        doc = _clean_doc(segment, max_words)
        if not doc or doc in docs:
            defect = True
            continue
        docs.append(doc)
        if len(docs) == k:
            break
    if not docs:
        return ParsedOutput(docs=[], malformed=True, repaired=False)
    return ParsedOutput(docs=docs, malformed=False, repaired=defect or len(docs) < k)
