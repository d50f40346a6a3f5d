"""The search protocol between the policy and an engine: its text and its types.

One place, so demonstrations, rollouts, evaluation and every engine agree byte for byte:
the policy instruction and prompt (our template, or a data row's chat messages, plain or
through the tokenizer's chat template, tokenized with the tokenizer's start tokens once), the
``<search>``/``<answer>`` actions and how a turn is parsed, where a turn stops, the document
type every engine returns, how documents are shown inside ``<information>`` and the corrective
message (each in two layouts: ``ours`` and ``reference``, the reference implementation's
whitespace and sentence shape in our own words), and the batched ``SearchEngine`` interface.
Nothing here imports another module of the project.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

INSTRUCTION = (
    "Answer the question. Think inside <think> </think>. To look up facts, write "
    "<search> query </search> and the results appear inside <information> </information>. "
    "Put the final short answer inside <answer> </answer>."
)
INVALID_ACTION = (
    "\nMy previous action is invalid. I should search with <search> query </search> "
    "or answer with <answer> answer </answer>.\n"
)
# The reference's shape (its words are not copied): the policy's voice, the action was invalid,
# where a search and an answer go, then "let me try again".
INVALID_ACTION_REFERENCE = (
    "\nMy previous action was invalid. A search query belongs between <search> and </search>, "
    "and a final answer between <answer> and </answer>. Let me try again.\n"
)
Layout = Literal["ours", "reference"]
CORRECTIVE_MESSAGES: dict[str, str] = {"ours": INVALID_ACTION, "reference": INVALID_ACTION_REFERENCE}
# Text around the documents of one search: (before, after). ``ours``: the tags on their own
# lines; ``reference``: a blank line, the block with the documents against the tags, a blank line.
INFORMATION_LAYOUTS: dict[str, tuple[str, str]] = {
    "ours": ("\n<information>\n", "\n</information>\n"),
    "reference": ("\n\n<information>", "</information>\n\n"),
}
ChatMode = bool | Literal["auto"]
Message = dict[str, str]  # {"role": ..., "content": ...}
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


def prompt_messages(question: str) -> list[Message]:
    """Our template as chat messages: one user message, the instruction then the question
    (kept as written, a trailing "?" included; only surrounding whitespace goes)."""
    return [{"role": "user", "content": f"{INSTRUCTION}\nQuestion: {question.strip()}\n"}]


def uses_chat_template(tokenizer, chat: ChatMode) -> bool:
    """Whether the prompt goes through the tokenizer's chat template: ``"auto"`` when the
    tokenizer has one (the reference applies it to base and instruct models alike), ``False``
    never, ``True`` always (an error when the tokenizer has none)."""
    has = getattr(tokenizer, "chat_template", None) is not None
    if chat is True and not has:
        raise ValueError("base.chat_prompt is true but the policy's tokenizer has no chat template "
                         "(use auto or false)")
    return has if chat == "auto" else bool(chat)


def render_messages(messages: Sequence[Message], tokenizer=None, *, chat: ChatMode = False) -> str:
    """Chat messages as the text the policy continues: through the tokenizer's chat template
    (with the assistant's generation prompt) when ``uses_chat_template``; else the plain
    rendering: the messages' contents joined by a blank line (one message: its content as is)."""
    if uses_chat_template(tokenizer, chat):
        return tokenizer.apply_chat_template([dict(m) for m in messages], tokenize=False,
                                             add_generation_prompt=True)
    return "\n\n".join(m["content"] for m in messages)


def policy_prompt(question: str, tokenizer=None, *, chat: ChatMode = False,
                  messages: Sequence[Message] | None = None) -> str:
    """The prompt the policy continues: the data row's ``messages`` when it has them (the
    ``prompt`` column of ZeroSearch/Search-R1 data), else our template for ``question``;
    rendered by ``render_messages``."""
    return render_messages(messages if messages else prompt_messages(question), tokenizer, chat=chat)


def encode_prompt(text: str, tokenizer) -> list[int]:
    """Token ids of a text that starts a context: the tokenizer's own start tokens (e.g. a
    Llama tokenizer's BOS) exactly once, then the text. A text that already begins with them
    (a chat template that renders BOS) gets none added; end tokens some tokenizers append
    are left out (the policy continues the prompt). Later segments (documents, corrective
    messages) are tokenized without special tokens."""
    plain = tokenizer(text, add_special_tokens=False)["input_ids"]
    full = tokenizer(text, add_special_tokens=True)["input_ids"]
    n = len(plain)
    start = next((k for k in range(len(full) - n + 1) if full[k:k + n] == plain), 0)
    prefix = full[:start]
    return plain if plain[:len(prefix)] == prefix else prefix + plain


def information_block(docs: Sequence[Doc], layout: Layout = "ours") -> str:
    """Retrieved documents as the policy sees them (state-masked in RL), in ``layout``
    (``INFORMATION_LAYOUTS``); an empty result says so explicitly rather than leaving an
    empty block."""
    before, after = INFORMATION_LAYOUTS[layout]
    body = format_docs(docs) if docs else NO_RESULTS
    return f"{before}{body}{after}"


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
