"""Ask a trained search agent a question: the Python API behind ``zerosearch ask``.

    from zerosearch.agent.ask import Agent
    from zerosearch.agent.rollout import RolloutSettings
    agent = Agent.load("models/policy", engine, RolloutSettings.from_config(cfg))
    answer = agent.ask("Where was Sous Poto born?")
    answer.answer, answer.steps                          # steps: think / search / information / answer
    agent.ask_many(["Q1?", "Q2?"])                       # one batched rollout for many questions

The policy is a local directory or a hub id; an MLflow registry reference
(``models:/<name>/<version>``) is resolved to a directory first by
``zerosearch.mlops.registry.resolve_policy`` (the CLI does this).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import torch

from zerosearch.agent.rollout import RolloutSettings, Trajectory, run_rollouts
from zerosearch.lm.generation import HFGenerator
from zerosearch.protocol import SearchEngine

_STEP = re.compile(r"<(think|search|information|answer)>(.*?)</\1>", re.DOTALL)


@dataclass
class AgentAnswer:
    question: str
    answer: str | None
    searches: int
    steps: list[dict[str, str]] = field(default_factory=list)  # {"kind": think|search|information|answer, "text"}
    trajectory: str = ""
    turns: int = 0  # generation turns the rollout ran
    searched: list[dict] = field(default_factory=list)  # per search: {"query", "documents": [{"title", "text", "id"}]}
    prompt_tokens: int = 0  # tokens of the prompt (chat template and start tokens included)
    completion_tokens: int = 0  # tokens the policy wrote (documents and corrective messages excluded)

    def to_dict(self) -> dict:
        return asdict(self)


def parse_steps(trajectory: str) -> list[dict[str, str]]:
    """The tagged blocks of a trajectory, in order."""
    return [{"kind": m.group(1), "text": m.group(2).strip()} for m in _STEP.finditer(trajectory)]


class Agent:
    """A policy plus an engine under one ``RolloutSettings``; greedy multi-turn answers."""

    def __init__(self, model, tokenizer, engine: SearchEngine, settings: RolloutSettings):
        self.model, self.tokenizer, self.engine, self.settings = model, tokenizer, engine, settings

    @classmethod
    def load(cls, policy: str, engine: SearchEngine, settings: RolloutSettings, *,
             trust_remote_code: bool = False) -> Agent:
        from zerosearch.lm.models import load_model

        model, tokenizer = load_model(policy, trust_remote_code=trust_remote_code)
        return cls(model, tokenizer, engine, settings)

    def ask(self, question: str, golden_answers: list[str] | None = None) -> AgentAnswer:
        """Answer one question. ``golden_answers`` only matter to a simulated engine, whose
        prompt carries the answer (a training-time device); real engines ignore them. An empty
        question is an error: the policy would answer something anyway."""
        return self.ask_many([question], [golden_answers] if golden_answers else None)[0]

    @torch.no_grad()
    def ask_many(self, questions: list[str], golden_answers: list[list[str] | None] | None = None) -> list[AgentAnswer]:
        """Answer several questions in ONE batched rollout (one ``generate`` call per turn, one
        engine call per turn for all pending searches), greedy; answers in question order."""
        for question in questions:
            if not question or not question.strip():
                raise ValueError("the question is empty: ask something (e.g. zerosearch ask \"Where was X born?\")")
        gold = [g or [""] for g in (golden_answers or [None] * len(questions))]
        self.model.eval()
        batch = run_rollouts(HFGenerator(self.model, self.tokenizer, do_sample=False), self.tokenizer, self.engine,
                             list(questions), gold, self.settings)
        return [self._answer(t) for t in batch.trajectories]

    def _answer(self, t: Trajectory) -> AgentAnswer:
        text = self.tokenizer.decode(t.response_ids, skip_special_tokens=False)
        searched = [{"query": q, "documents": [{"title": d.title, "text": d.text, "id": d.id} for d in docs]}
                    for q, docs in zip(t.queries, t.documents, strict=True)]
        return AgentAnswer(t.question, t.answer, t.searches, parse_steps(text), text, turns=t.turns,
                           searched=searched, prompt_tokens=len(t.prompt_ids), completion_tokens=sum(t.loss_mask))
