"""Ask a trained search agent a question: the Python API behind ``zerosearch ask``.

    from zerosearch.agent import Agent
    agent = Agent.load("models/policy", engine)          # or "models:/zerosearch-policy/1", a hub id
    answer = agent.ask("Where was Sous Poto born?")
    answer.answer, answer.steps                          # steps: think / search / information / answer

A policy reference is a local directory, a hub id, or an MLflow registry URI
(``models:/<name>/<version>``), which is downloaded from the tracking server first.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from zerosearch.generation import HFGenerator
from zerosearch.rollout import run_rollouts
from zerosearch.search.base import SearchEngine

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


def resolve_policy(ref: str) -> str:
    """A loadable path or hub id for ``ref``; ``models:/...`` is fetched from MLflow."""
    if not ref.startswith("models:/"):
        return ref
    import mlflow

    from zerosearch.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    local = Path(mlflow.artifacts.download_artifacts(ref))
    configs = sorted(local.rglob("config.json"), key=lambda p: len(p.parts))
    if not configs:
        raise FileNotFoundError(f"{ref} downloaded to {local} but holds no HF model (no config.json)")
    return str(configs[0].parent)


class Agent:
    """A policy plus an engine; greedy multi-turn answers."""

    def __init__(self, model, tokenizer, engine: SearchEngine, *, max_turns: int = 4,
                 max_response_tokens: int = 96, max_obs_tokens: int = 512, chat: bool = False):
        self.model, self.tokenizer, self.engine = model, tokenizer, engine
        self.max_turns, self.max_response_tokens, self.max_obs_tokens, self.chat = (
            max_turns, max_response_tokens, max_obs_tokens, chat)

    @classmethod
    def load(cls, policy: str, engine: SearchEngine, **kwargs) -> Agent:
        from zerosearch.models import load_model

        model, tokenizer = load_model(resolve_policy(policy))
        return cls(model, tokenizer, engine, **kwargs)

    @torch.no_grad()
    def ask(self, question: str, golden_answers: list[str] | None = None) -> AgentAnswer:
        """Answer one question. ``golden_answers`` only matter to a simulated engine, whose
        prompt carries the answer (a training-time device); real engines ignore them."""
        self.model.eval()
        batch = run_rollouts(HFGenerator(self.model, self.tokenizer, do_sample=False), self.tokenizer, self.engine,
                             [question], [golden_answers or [""]], max_turns=self.max_turns,
                             max_response_tokens=self.max_response_tokens, max_obs_tokens=self.max_obs_tokens,
                             chat=self.chat)
        t = batch.trajectories[0]
        text = self.tokenizer.decode(t.response_ids, skip_special_tokens=False)
        return AgentAnswer(question, t.answer, t.searches, parse_steps(text), text)


def _pyfunc_base():
    import mlflow.pyfunc

    return mlflow.pyfunc.PythonModel


class AgentPyfunc(_pyfunc_base()):
    """The agent as an MLflow pyfunc model (what the registry holds): artifacts ``policy`` (an HF
    directory) and, when logged, ``bm25`` (an index the agent searches); ``predict`` takes
    questions (a list or a DataFrame column ``question``) and returns the answers."""

    def load_context(self, context) -> None:
        from zerosearch.search.bm25 import BM25Engine

        arts = context.artifacts
        engine = BM25Engine.load(arts["bm25"]) if "bm25" in arts else None
        self.agent = Agent.load(arts["policy"], engine) if engine is not None else None
        if self.agent is None:
            from zerosearch.models import load_model

            self.model, self.tokenizer = load_model(arts["policy"])

    def predict(self, context, model_input, params=None) -> list[str | None]:
        questions = list(model_input["question"]) if hasattr(model_input, "columns") else list(model_input)
        if self.agent is not None:
            return [self.agent.ask(q).answer for q in questions]
        from zerosearch.evaluation import predict_direct

        rows = [{"question": q, "golden_answers": [""]} for q in questions]
        return [r["prediction"] for r in predict_direct(self.model, self.tokenizer, rows, max_response_tokens=96)]
