"""Ask a trained search agent a question: the Python API behind ``zerosearch ask``.

    from zerosearch.agent.ask import Agent
    from zerosearch.agent.rollout import RolloutSettings
    agent = Agent.load("models/policy", engine, RolloutSettings.from_config(cfg))
    answer = agent.ask("Where was Sous Poto born?")
    answer.answer, answer.steps                          # steps: think / search / information / answer

The policy is a local directory or a hub id; an MLflow registry reference
(``models:/<name>/<version>``) is resolved to a directory first by
``zerosearch.mlops.registry.resolve_policy`` (the CLI does this).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import torch

from zerosearch.agent.rollout import RolloutSettings, run_rollouts
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

    @torch.no_grad()
    def ask(self, question: str, golden_answers: list[str] | None = None) -> AgentAnswer:
        """Answer one question. ``golden_answers`` only matter to a simulated engine, whose
        prompt carries the answer (a training-time device); real engines ignore them. An empty
        question is an error: the policy would answer something anyway."""
        if not question or not question.strip():
            raise ValueError("the question is empty: ask something (e.g. zerosearch ask \"Where was X born?\")")
        self.model.eval()
        batch = run_rollouts(HFGenerator(self.model, self.tokenizer, do_sample=False), self.tokenizer, self.engine,
                             [question], [golden_answers or [""]], self.settings)
        t = batch.trajectories[0]
        text = self.tokenizer.decode(t.response_ids, skip_special_tokens=False)
        return AgentAnswer(question, t.answer, t.searches, parse_steps(text), text)
