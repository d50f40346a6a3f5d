"""The simulated search engine (ZeroSearch): an LLM writes the documents.

Per search call the curriculum decides, for each query, whether the simulator is asked for
*useful* documents (that help answer the question) or *noisy* ones (related but unhelpful):
noise probability ``p(step)`` from ``curriculum.noise_probability`` (its ``schedule`` by name), flags drawn with a RNG
seeded by (seed, step, call index), so a resumed run redraws the same kinds. The call's
documents are seeded the same way: the completer gets ``seed=mix_seed(seed, step, call)``
(the in-process simulator reseeds its own generator with it; a served one sends a seed per
request derived from it), so with a backend that honours it the documents repeat too.
The simulator sees the query, the original question and its gold answer (a training-time
device, as in the paper), and writes ``Doc 1: ...`` to ``Doc k: ...``; ``simulator_output`` parses and
sanitizes that text. A malformed output gives no documents and is counted.

What the simulator is asked is a template (``templates.PromptTemplate``, files under
``configs/prompts/``, chosen by ``simulator.prompt``): ``ours-sft`` for our tiny SFT simulator
(raw completion), ``zerosearch-sft`` for the released SearchSimulation models, and the two
prompt-mode templates for instruct models; how it is sent (completions or chat, the system
message) is the completer's business (``client.SimulatorClient``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from zerosearch.protocol import Doc
from zerosearch.search.curriculum import mix_seed, noise_probability, noisy_flags
from zerosearch.search.simulator_output import parse_documents
from zerosearch.search.templates import PromptTemplate, named_template

log = logging.getLogger(__name__)


class Completer(Protocol):
    """What the engine needs from a simulator backend (``SimulatorClient`` or
    ``InProcessCompleter``). ``seed``: one per call; None leaves the backend unseeded."""

    def complete(self, prompts: Sequence[str], *, max_tokens: int, temperature: float,
                 top_p: float | None = 1.0, seed: int | None = None) -> list[str]: ...


def sft_prompt(query: str, question: str, answer: str, noisy: bool) -> str:
    """The ``ours-sft`` text: what our SFT-mode simulator is fine-tuned on and queried with."""
    return named_template("ours-sft").render(query, question, answer, noisy, k=0)


class SimulatedEngine:
    """``SearchEngine`` whose documents an LLM writes, noisier as training goes on."""

    def __init__(
        self,
        completer: Completer,
        *,
        template: PromptTemplate | None = None,
        top_k: int = 5,
        max_tokens: int = 600,
        temperature: float = 1.0,
        top_p: float | None = 1.0,
        p_start: float = 0.0,
        p_end: float = 0.5,
        base: float = 4.0,
        total_steps: int = 1,
        seed: int = 0,
        schedule: str = "exponential",
    ):
        self.completer, self.top_k = completer, top_k
        self.template = template if template is not None else named_template("ours-sft")
        self.max_tokens, self.temperature, self.top_p = max_tokens, temperature, top_p
        self.p_start, self.p_end, self.base, self.total_steps = p_start, p_end, base, total_steps
        self.schedule = schedule
        self.seed = seed
        self._step, self._call = -1, 0
        self.reset_stats()

    def reset_stats(self) -> None:
        self.stats = {"queries": 0, "noisy": 0, "malformed": 0, "repaired": 0}

    def noise_probability(self, step: int) -> float:
        return noise_probability(step, self.total_steps, self.p_start, self.p_end, self.base, self.schedule)

    def prompt(self, query: str, question: str, answers: Sequence[str], noisy: bool) -> str:
        return self.template.render(query, question, answers[0] if answers else "", noisy, self.top_k)

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
        texts = self.completer.complete(prompts, max_tokens=self.max_tokens, temperature=self.temperature,
                                        top_p=self.top_p, seed=mix_seed(self.seed, step, self._call))
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
