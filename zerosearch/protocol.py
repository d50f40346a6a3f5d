"""The search protocol between the policy and an engine: its text and its types.

One place, so demonstrations, rollouts, evaluation and every engine agree byte for byte:
the policy instruction and prompt, the ``<search>``/``<answer>`` actions and how a turn is
parsed, where a turn stops, the document type every engine returns, how documents are shown
inside ``<information>``, the corrective message, and the batched ``SearchEngine`` interface.
Nothing here imports another module of the project.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

INSTRUCTION = (
    "Answer the question. Think inside <think> </think>. To look up facts, write "
    "<search> query </search> and the results appear inside <information> </information>. "
    "Put the final short answer inside <answer> </answer>."
)
INVALID_ACTION = (
    "\nMy previous action is invalid. I should search with <search> query </search> "
    "or answer with <answer> answer </answer>.\n"
)
NO_RESULTS = "No documents found."
ACTION_RE = re.compile(r"<(search|answer)>(.*?)</\1>", re.DOTALL)

Segment = tuple[str, bool]  # (text, trained on): False for context the model must not learn to write


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


def policy_prompt(question: str, tokenizer=None, *, chat: bool = False) -> str:
    """The prompt the policy continues. Base models get plain text; instruct models
    (``chat=True``) get the tokenizer's chat template with the same content."""
    content = f"{INSTRUCTION}\nQuestion: {question.strip()}\n"
    if chat:
        messages = [{"role": "user", "content": content}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return content


def information_block(docs: Sequence[Doc]) -> str:
    """Retrieved documents as the policy sees them (state-masked in RL); an empty result
    says so explicitly rather than leaving an empty block."""
    body = format_docs(docs) if docs else NO_RESULTS
    return f"\n<information>\n{body}\n</information>\n"


def parse_action(text: str) -> tuple[str, str] | None:
    """The first ``<search>``/``<answer>`` block of a turn as (kind, content), or None."""
    m = ACTION_RE.search(text)
    return (m.group(1), m.group(2).strip()) if m else None


def stop_markers(tokenizer) -> tuple[list[int], list[str]]:
    """Where a turn stops: ``(token ids, strings)``. ``</search>`` and ``</answer>`` are stop
    token ids when the tokenizer has them as single tokens (else stop strings), plus EOS."""
    tag_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("</search>", "</answer>")]
    single = all(i is not None and i != tokenizer.unk_token_id for i in tag_ids)
    return (tag_ids if single else []) + [tokenizer.eos_token_id], [] if single else ["</search>", "</answer>"]
