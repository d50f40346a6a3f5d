"""The search protocol's text: the policy instruction, the information block, the corrective
message. One place, so demonstrations, rollouts and evaluation agree byte for byte."""

from __future__ import annotations

from collections.abc import Sequence

from zerosearch.search.base import Doc, format_docs

INSTRUCTION = (
    "Answer the question. Think inside <think> </think>. To look up facts, write "
    "<search> query </search> and the results appear inside <information> </information>. "
    "Put the final short answer inside <answer> </answer>."
)
INVALID_ACTION = (
    "\nMy previous action is invalid. I should search with <search> query </search> "
    "or answer with <answer> answer </answer>.\n"
)


def policy_prompt(question: str, tokenizer=None, *, chat: bool = False) -> str:
    """The prompt the policy continues. Base models get plain text; instruct models
    (``chat=True``) get the tokenizer's chat template with the same content."""
    content = f"{INSTRUCTION}\nQuestion: {question.strip()}\n"
    if chat:
        messages = [{"role": "user", "content": content}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return content


NO_RESULTS = "No documents found."


def information_block(docs: Sequence[Doc]) -> str:
    """Retrieved documents as the policy sees them (state-masked in RL); an empty result
    says so explicitly rather than leaving an empty block."""
    body = format_docs(docs) if docs else NO_RESULTS
    return f"\n<information>\n{body}\n</information>\n"
