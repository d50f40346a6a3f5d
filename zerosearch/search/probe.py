"""The simulator probe: does asking for useful or noisy documents change what the simulator
writes? The curriculum relies on that switch; a wrong input template or model breaks it
silently (training runs, the documents just never get noisier, or never help).

For ``n`` training questions the probe sends each question once asking for useful and once
for noisy documents, the question itself standing in for the policy's search query (no
policy is needed, so it runs in seconds before training starts). It parses the outputs
as the engine does (``parse_documents``, the first ``top_k`` documents) and counts how often
the documents hold a gold alias (normalized, as whole words). The switch works when

    useful_contains_gold_rate - noisy_contains_gold_rate >= min_gap

Malformed outputs (no documents) count as holding no answer; their share is reported.
The probe calls the completer directly: it draws nothing from the training engine's
curriculum, touches no counter or cache of it, and uses no random state of this process (a
server samples in its own process; the in-process simulator draws from its own generator,
seeded for the probe's call from ``base.seed``, and reseeded by the engine on every search).
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
from collections.abc import Mapping, Sequence
from typing import Any

from zerosearch.config import Config
from zerosearch.errors import InputError
from zerosearch.protocol import SearchEngine
from zerosearch.rewards import normalize_answer
from zerosearch.search.simulated import Completer
from zerosearch.search.simulator_output import parse_documents
from zerosearch.search.templates import PromptTemplate

__all__ = ["ProbeResult", "SimulatorProbeError", "check_probe", "contains_gold", "probe_from_config",
           "probe_questions", "run_probe"]


class SimulatorProbeError(InputError, RuntimeError):
    """The simulator's useful/noisy switch did not work in the probe."""


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """Rates over ``n_questions`` useful and as many noisy requests."""

    n_questions: int
    useful_contains_gold_rate: float
    noisy_contains_gold_rate: float
    malformed_rate: float
    min_gap: float
    template: str = ""
    model: str = ""
    # BM25 on the same queries (None: no BM25 index), the real engine's rate to compare with
    bm25_contains_gold_rate: float | None = None

    @property
    def gap(self) -> float:
        return self.useful_contains_gold_rate - self.noisy_contains_gold_rate

    @property
    def passed(self) -> bool:
        return self.n_questions > 0 and self.gap >= self.min_gap - 1e-12

    def metrics(self) -> dict[str, float]:
        """What the train stage logs (MLflow), under ``simulator_probe/``."""
        return {f"simulator_probe/{k}": float(v) for k, v in (
            ("useful_contains_gold_rate", self.useful_contains_gold_rate),
            ("noisy_contains_gold_rate", self.noisy_contains_gold_rate),
            ("gap", self.gap), ("malformed_rate", self.malformed_rate), ("n_questions", self.n_questions),
            *((("bm25_contains_gold_rate", self.bm25_contains_gold_rate),) if self.bm25_contains_gold_rate is not None
              else ()))}

    def record(self) -> dict[str, Any]:
        """The rates as the train stage's summary keeps them (``train.json`` ``simulator_probe``)."""
        return {"n_questions": self.n_questions, "useful_contains_gold_rate": self.useful_contains_gold_rate,
                "noisy_contains_gold_rate": self.noisy_contains_gold_rate, "gap": round(self.gap, 6),
                "malformed_rate": self.malformed_rate, "bm25_contains_gold_rate": self.bm25_contains_gold_rate}

    def summary(self) -> str:
        return (f"asked for useful documents, {self.useful_contains_gold_rate:.0%} of the outputs hold a gold "
                f"answer; asked for noisy ones, {self.noisy_contains_gold_rate:.0%} (gap {self.gap:+.2f}, "
                f"min_gap {self.min_gap:.2f}); {self.malformed_rate:.0%} of the outputs malformed; "
                + (f"BM25 on the same queries {self.bm25_contains_gold_rate:.0%}; "
                   if self.bm25_contains_gold_rate is not None else "") +
                f"{self.n_questions} training questions, template {self.template or '?'}, model {self.model or '?'}")

    def failure_message(self) -> str:
        if self.n_questions == 0:
            return "simulator probe: no training question with a gold answer to probe with"
        return (f"simulator probe failed: {self.summary()}. The useful/noisy switch the noise curriculum relies "
                f"on does not work with this template and model. Check that simulator.prompt (or "
                f"simulator.prompt_template_file), simulator.api and simulator.system_message give the input "
                f"format the model was trained on (the released SearchSimulation models: zerosearch-sft, api "
                f"chat, system_message ''; an instruct model: zerosearch-prompt), that base.simulator_model "
                f"(or the simulator_sft stage's output) is the simulator you mean, and the server log. "
                f"`zerosearch simulator probe` reruns the check; simulator.probe.min_gap sets the bar and "
                f"simulator.probe.enabled=false skips it.")


def contains_gold(docs: Sequence[str], golden_answers: Sequence[str]) -> bool:
    """True when a normalized gold alias occurs as whole words in a normalized document."""
    padded = [f" {normalize_answer(d)} " for d in docs]
    golds = [g for g in (normalize_answer(a) for a in golden_answers) if g]
    return any(f" {g} " in p for g in golds for p in padded)


def probe_questions(rows: Sequence[Mapping[str, Any]], n: int, seed: int) -> list[Mapping[str, Any]]:
    """``n`` rows with a gold answer, drawn with their own ``random.Random(seed)`` (no global state)."""
    usable = [r for r in rows if r.get("golden_answers")]
    return random.Random(seed).sample(usable, min(n, len(usable)))


def run_probe(completer: Completer, template: PromptTemplate, rows: Sequence[Mapping[str, Any]], *,
              n_questions: int, min_gap: float, top_k: int, max_tokens: int, temperature: float,
              top_p: float | None = 1.0, seed: int = 0, model: str = "",
              reference: SearchEngine | None = None) -> ProbeResult:
    """Ask ``completer`` for useful and for noisy documents on ``n_questions`` of ``rows``
    (``question``, ``golden_answers``); one batched call of ``2 * n`` prompts. ``reference``
    (a real engine, BM25) answers the same queries for ``bm25_contains_gold_rate``."""
    picked = probe_questions(rows, n_questions, seed)
    n = len(picked)
    if n == 0:
        return ProbeResult(0, 0.0, 0.0, 0.0, min_gap, template.name, model)
    prompts = [template.render(r["question"], r["question"], r["golden_answers"][0], noisy, top_k)
               for noisy in (False, True) for r in picked]
    texts = completer.complete(prompts, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)
    parsed = [parse_documents(t, top_k) for t in texts]
    hits = [contains_gold(p.docs, r["golden_answers"]) for p, r in zip(parsed, [*picked, *picked], strict=True)]
    real = None
    if reference is not None:
        found = reference.search([r["question"] for r in picked])
        real = sum(contains_gold([d.render() for d in docs], r["golden_answers"])
                   for docs, r in zip(found, picked, strict=True)) / n
    return ProbeResult(n_questions=n, useful_contains_gold_rate=sum(hits[:n]) / n,
                       noisy_contains_gold_rate=sum(hits[n:]) / n,
                       malformed_rate=sum(p.malformed for p in parsed) / (2 * n),
                       min_gap=min_gap, template=template.name, model=model, bm25_contains_gold_rate=real)


def probe_from_config(cfg: Config, simulator_url: str | list[str] | None, rows: Sequence[Mapping[str, Any]],
                      *, n_questions: int | None = None, completer: Completer | None = None) -> ProbeResult:
    """The probe of ``cfg``'s simulator: ``completer`` when given (the training engine's
    in-process one), else a client of its own (no cache) of the server at ``simulator_url``, or,
    under ``simulator.backend: inprocess`` with no URL, the simulator loaded here; with its
    template, sampling and ``simulator.probe`` settings."""
    from zerosearch.search.factory import (
        inprocess_completer,
        real_engine,
        simulator_client,
        simulator_template,
    )

    sim, probe = cfg.simulator, cfg.simulator.probe
    template = simulator_template(cfg)
    reference = real_engine(cfg, "bm25") if (cfg.path("data") / "bm25").exists() else None
    name = sim.prompt_template_file or sim.prompt
    with contextlib.ExitStack() as stack:
        if completer is None and simulator_url is None and sim.backend == "inprocess":
            completer = inprocess_completer(cfg)
        if completer is None:
            if simulator_url is None:
                raise ValueError("the simulator probe needs a simulator server URL or a completer")
            completer = stack.enter_context(simulator_client(cfg, simulator_url, cache=False))
        result = run_probe(completer, template, rows, n_questions=n_questions or probe.n_questions,
                           min_gap=probe.min_gap, top_k=cfg.search.top_k, max_tokens=sim.max_tokens,
                           temperature=sim.temperature, top_p=sim.top_p, seed=cfg.base.seed,
                           model=cfg.served_simulator(), reference=reference)
    return dataclasses.replace(result, template=f"{name} ({sim.api})")


def check_probe(result: ProbeResult) -> None:
    """Raise ``SimulatorProbeError`` with the rates and what to check when the switch failed."""
    if not result.passed:
        raise SimulatorProbeError(result.failure_message())
