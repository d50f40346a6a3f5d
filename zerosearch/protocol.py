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

import dataclasses
import functools
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

PROTOCOL_TAGS: tuple[str, ...] = (
    "<think>", "</think>", "<search>", "</search>",
    "<information>", "</information>", "<answer>", "</answer>",
    "<|im_start|>", "<|im_end|>", "<|endoftext|>",
)

# Bracket and slash characters, literal or HTML-escaped (named, decimal, hex, double-escaped).
_PIECES = {
    "<": r"(?:<|&(?:amp;)?lt;|&#0*60;|&#x0*3c;)",
    ">": r"(?:>|&(?:amp;)?gt;|&#0*62;|&#x0*3e;)",
    "/": r"(?:/|&sol;|&#0*47;|&#x0*2f;)",
    "|": r"\|",
}


def _tag_pattern(tag: str) -> str:
    """``</answer>`` -> a pattern allowing whitespace between its pieces and escaped brackets."""
    pieces = re.findall(r"[<>/|]|[^<>/|]+", tag)
    return r"\s*".join(_PIECES.get(p, re.escape(p)) for p in pieces)


_TAG_RE = re.compile("|".join(_tag_pattern(t) for t in PROTOCOL_TAGS), re.IGNORECASE)


def sanitize(text: str, extra: Sequence[str] = ()) -> str:
    """``text`` with every protocol tag and chat marker of ``PROTOCOL_TAGS`` (and every string of
    ``extra``, e.g. a tokenizer's special tokens, matched exactly) removed.

    Matching is case-insensitive and tolerates spaces inside the brackets
    (``< /information >``) and HTML-escaped brackets (``&lt;answer&gt;``). Removal repeats
    until nothing matches, so fragments cannot reassemble into a tag (``<ans<answer>wer>``).
    Each tag becomes a space; runs of spaces/tabs are then collapsed to one space, spaces
    around line breaks dropped and 3+ line breaks reduced to one blank line (line structure
    is kept, since ``parse_documents`` uses it). The result is stripped.
    """
    out = text.replace("\r\n", "\n").replace("\r", "\n")
    pattern = _control_re(tuple(extra))
    while True:
        cleaned = pattern.sub(" ", out)
        if cleaned == out:
            break
        out = cleaned
    out = re.sub(r"[^\S\n]+", " ", out)
    out = re.sub(r" ?\n ?", "\n", out)
    out = re.sub(r"\n{3,}", "\n\n", out)
    return out.strip()


@functools.lru_cache(maxsize=32)
def _control_re(extra: tuple[str, ...]) -> re.Pattern:
    if not extra:
        return _TAG_RE
    literal = "|".join(re.escape(e) for e in sorted(set(extra), key=len, reverse=True) if e)
    return re.compile(f"{_TAG_RE.pattern}|{literal}", re.IGNORECASE) if literal else _TAG_RE


def has_control(text: str, extra: Sequence[str] = ()) -> bool:
    """Whether ``text`` holds a protocol tag, a chat marker or a string of ``extra``."""
    return _control_re(tuple(extra)).search(text) is not None


def neutralize(text: str, extra: Sequence[str] = ()) -> str:
    """Text from outside (a document of any engine, a question) made safe for the policy's
    context: unchanged when it holds no control text (``has_control``), else ``sanitize``d. So
    no corpus document, web snippet or question can close ``<information>``, answer for the
    policy or smuggle in a tokenizer's control tokens, and clean text keeps its bytes."""
    return sanitize(text, extra) if has_control(text, extra) else text


def special_token_strings(tokenizer) -> tuple[str, ...]:
    """The strings a tokenizer turns into control tokens: its special tokens and every added
    token marked special (``<|im_end|>``, ``<|eot_id|>``, ``<|start_header_id|>``, ``<|pad|>``...)."""
    if tokenizer is None:
        return ()
    names = set(getattr(tokenizer, "all_special_tokens", []) or [])
    names |= {t.content for t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values()
              if getattr(t, "special", False)}
    return tuple(sorted(n for n in names if n))


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
    rendered by ``render_messages``. The question is ``neutralize``d (no protocol tags or control
    tokens from the data reach the policy as such); a row's messages lose control tokens only."""
    extra = special_token_strings(tokenizer)
    if messages:  # the data's own instruction names the tags: only control tokens are removed
        safe = [{**m, "content": _without(m["content"], extra)} for m in messages]
    else:
        safe = prompt_messages(neutralize(question, extra))
    return render_messages(safe, tokenizer, chat=chat)


def _without(text: str, strings: Sequence[str]) -> str:
    """``text`` with each of ``strings`` removed (replaced by a space), unchanged when none occurs."""
    if not any(s in text for s in strings):
        return text
    for s in sorted(strings, key=len, reverse=True):
        text = text.replace(s, " ")
    return text


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


def information_block(docs: Sequence[Doc], layout: Layout = "ours", *, tokenizer=None) -> str:
    """Retrieved documents as the policy sees them (state-masked in RL), in ``layout``
    (``INFORMATION_LAYOUTS``); an empty result says so explicitly rather than leaving an
    empty block. Every document's title and text are ``neutralize``d first (protocol tags,
    chat markers and ``tokenizer``'s special tokens), whichever engine wrote them."""
    before, after = INFORMATION_LAYOUTS[layout]
    extra = special_token_strings(tokenizer)
    safe = [dataclasses.replace(d, title=neutralize(d.title, extra), text=neutralize(d.text, extra)) for d in docs]
    body = format_docs(safe) if safe else NO_RESULTS
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
