"""The simulated search engine (ZeroSearch): an LLM writes the documents.

Per search call the curriculum decides, for each query, whether the simulator is asked for
*useful* documents (that help answer the question) or *noisy* ones (related but unhelpful):
noise probability ``p(step)`` from ``curriculum.noise_probability``, flags drawn with a RNG
seeded by (seed, step, call index), so a resumed run redraws the same kinds. The simulator
sees the query, the original question and its gold answer (a training-time device, as in
the paper), and writes ``Doc 1: ...`` to ``Doc k: ...``; ``simulator_output`` parses and
sanitizes that text. A malformed output gives no documents and is counted.

Two modes, as in the paper:
- ``sft``: a simulator fine-tuned on (instruction -> documents) pairs (the simulator SFT
  stage, or the released SearchSimulation models), sent as a raw completion prompt;
- ``prompt``: an instruct model given instructions and one useful and one noisy example
  (our own wording), sent as a chat message.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal, Protocol

from zerosearch.protocol import Doc
from zerosearch.search.curriculum import noise_probability, noisy_flags
from zerosearch.search.simulator_output import parse_documents

log = logging.getLogger(__name__)


class Completer(Protocol):
    """What the engine needs from a simulator backend (``SimulatorClient`` or in-process)."""

    def complete(self, prompts: Sequence[str], *, max_tokens: int, temperature: float,
                 top_p: float = 1.0, seed: int | None = None) -> list[str]: ...


def sft_prompt(query: str, question: str, answer: str, noisy: bool) -> str:
    """The instruction an SFT-mode simulator is trained on and queried with."""
    kind = "noisy" if noisy else "useful"
    return (f"Simulate a search engine. Write {kind} documents for the query.\n"
            f"Question: {question}\nAnswer: {answer}\nQuery: {query}\nDocuments ({kind}):\n")


_USEFUL_EXAMPLE = (
    "Doc 1: (Lake Orvane) Lake Orvane is the deepest lake of the Teskar valley, 312 metres at "
    "its deepest point, fed by three glacier streams.\n"
    "Doc 2: (Teskar valley) The valley's largest lake, Lake Orvane, reaches a depth of 312 metres."
)
_NOISY_EXAMPLE = (
    "Doc 1: (Teskar valley) The Teskar valley is known for its vineyards and a railway built in 1898.\n"
    "Doc 2: (Orvane festival) Every summer the town of Orvane holds a music festival by the water."
)


def chat_prompt(query: str, question: str, answer: str, noisy: bool, k: int) -> str:
    """The user message a prompt-mode (instruct) simulator receives."""
    if noisy:
        task = (f"Write {k} documents that are related to the query but do NOT contain the answer "
                f"\"{answer}\" and do not help to find it.")
    else:
        task = (f"Write {k} documents that help answer the question; the information in them must "
                f"support the answer \"{answer}\".")
    return (
        "You are a search engine. Given a search query, you return short documents, about 30 "
        "words each, formatted 'Doc 1: (title) text' up to 'Doc "
        f"{k}: ...', and nothing else.\n{task}\n\n"
        "Example. Question: How deep is Lake Orvane? Answer: 312 metres. Query: Lake Orvane depth\n"
        f"Useful documents:\n{_USEFUL_EXAMPLE}\nNoisy documents:\n{_NOISY_EXAMPLE}\n\n"
        f"Question: {question}\nAnswer: {answer}\nQuery: {query}\n"
        f"{'Noisy' if noisy else 'Useful'} documents:"
    )


class SimulatedEngine:
    """``SearchEngine`` whose documents an LLM writes, noisier as training goes on."""

    def __init__(
        self,
        completer: Completer,
        *,
        mode: Literal["sft", "prompt"] = "sft",
        top_k: int = 5,
        max_tokens: int = 600,
        temperature: float = 1.0,
        p_start: float = 0.0,
        p_end: float = 0.5,
        base: float = 4.0,
        total_steps: int = 1,
        seed: int = 0,
    ):
        self.completer, self.mode, self.top_k = completer, mode, top_k
        self.max_tokens, self.temperature = max_tokens, temperature
        self.p_start, self.p_end, self.base, self.total_steps = p_start, p_end, base, total_steps
        self.seed = seed
        self._step, self._call = -1, 0
        self.reset_stats()

    def reset_stats(self) -> None:
        self.stats = {"queries": 0, "noisy": 0, "malformed": 0, "repaired": 0}

    def noise_probability(self, step: int) -> float:
        return noise_probability(step, self.total_steps, self.p_start, self.p_end, self.base)

    def prompt(self, query: str, question: str, answers: Sequence[str], noisy: bool) -> str:
        answer = answers[0] if answers else ""
        if self.mode == "sft":
            return sft_prompt(query, question, answer, noisy)
        return chat_prompt(query, question, answer, noisy, self.top_k)

    def _flags(self, step: int, n: int) -> list[bool]:
        if step != self._step:
            self._step, self._call = step, 0
        self._call += 1
        return noisy_flags(self.seed * 1_000_003 + self._call, step, n, self.noise_probability(step))

    def search(
        self,
        queries: Sequence[str],
        *,
        questions: Sequence[str] | None = None,
        answers: Sequence[Sequence[str]] | None = None,
        step: int = 0,
    ) -> list[list[Doc]]:
        if questions is None or answers is None:
            raise ValueError("the simulated engine needs the original questions and gold answers")
        if not queries:
            return []
        flags = self._flags(step, len(queries))
        prompts = [self.prompt(q, qu, a, f) for q, qu, a, f in zip(queries, questions, answers, flags, strict=True)]
        texts = self.completer.complete(prompts, max_tokens=self.max_tokens, temperature=self.temperature)
        results = []
        for text, noisy in zip(texts, flags):
            parsed = parse_documents(text, self.top_k)
            self.stats["queries"] += 1
            self.stats["noisy"] += noisy
            self.stats["malformed"] += parsed.malformed
            self.stats["repaired"] += parsed.repaired
            if parsed.malformed:
                log.warning("malformed simulator output (%d chars): %r", len(text), text[:200])
            results.append([Doc(title="", text=d, noisy=noisy) for d in parsed.docs])
        return results
