"""The trained agent in the MLflow model registry: the pyfunc model and how it is logged.

``register_agent`` (the evaluate flow's last task) logs the policy directory, the BM25 index
it searches and the run's ``RolloutSettings`` as artifacts of an ``AgentPyfunc`` and registers
it as ``eval.registered_model`` with the agent's EM as version tags. ``AgentPyfunc.predict``
answers questions with exactly the settings of the run that registered it (turns, token
limits, context window, chat template). ``resolve_policy`` turns a ``models:/name/version``
reference into a local directory.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc

from zerosearch.agent.rollout import RolloutSettings
from zerosearch.config import Config, flatten
from zerosearch.tracker import Tracker

logger = logging.getLogger(__name__)

SETTINGS_ARTIFACT = "rollout_settings"
# What models registered before settings were logged ran with (the old Agent defaults: 4 generation
# turns, i.e. 3 searches with documents + the answer turn).
LEGACY_SETTINGS = RolloutSettings(max_search_turns=3, max_response_tokens=96, max_obs_tokens=512)


def resolve_policy(ref: str) -> str:
    """A loadable path or hub id for ``ref``; ``models:/...`` is fetched from MLflow."""
    if not ref.startswith("models:/"):
        return ref
    from zerosearch.mlops.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    local = Path(mlflow.artifacts.download_artifacts(ref))
    configs = sorted(local.rglob("config.json"), key=lambda p: len(p.parts))
    if not configs:
        raise FileNotFoundError(f"{ref} downloaded to {local} but holds no HF model (no config.json)")
    return str(configs[0].parent)


def read_settings(artifacts: dict[str, str]) -> RolloutSettings:
    """The logged settings, or ``LEGACY_SETTINGS`` (with a warning) for models logged without."""
    if SETTINGS_ARTIFACT not in artifacts:
        logger.warning("registered agent has no %s artifact (logged before settings were recorded): "
                       "answering with %s", SETTINGS_ARTIFACT, LEGACY_SETTINGS)
        return LEGACY_SETTINGS
    return RolloutSettings.from_dict(json.loads(Path(artifacts[SETTINGS_ARTIFACT]).read_text(encoding="utf-8")))


class AgentPyfunc(mlflow.pyfunc.PythonModel):
    """The agent as an MLflow pyfunc model (what the registry holds): artifacts ``policy`` (an HF
    directory), ``rollout_settings`` (JSON) and, when logged, ``bm25`` (an index the agent
    searches); ``predict`` takes questions (a list or a DataFrame column ``question``) and
    returns the answers."""

    def load_context(self, context) -> None:
        from zerosearch.agent.ask import Agent
        from zerosearch.lm.models import load_model
        from zerosearch.search.bm25 import BM25Engine

        arts = context.artifacts
        self.settings = read_settings(arts)
        self.model, self.tokenizer = load_model(arts["policy"])
        self.agent = (Agent(self.model, self.tokenizer, BM25Engine.load(arts["bm25"]), self.settings)
                      if "bm25" in arts else None)

    def predict(self, context, model_input, params=None) -> list[str | None]:
        questions = list(model_input["question"]) if hasattr(model_input, "columns") else list(model_input)
        if self.agent is not None:
            return [self.agent.ask(q).answer for q in questions]
        from zerosearch.agent.evaluation import predict_direct

        rows = [{"question": q, "golden_answers": [""]} for q in questions]
        return [r["prediction"] for r in predict_direct(self.model, self.tokenizer, rows, self.settings)]


def register_agent(cfg: Config, table: dict[str, Any], tracker: Tracker) -> str | None:
    """Log ``eval.policy`` as an ``AgentPyfunc`` with the BM25 index of the data stage and the
    config's ``RolloutSettings``, registered as ``eval.registered_model`` with the agent's strict
    and substring EM per benchmark as version tags. Returns ``models:/<name>/<version>``, or None when the
    evaluation has no ``agent`` method or the tracker registers nothing."""
    if "agent" not in cfg.eval.methods:
        return None
    index = cfg.path("data") / "bm25"
    metrics = {f"evaluate.{k}": v for k, v in flatten(table["agent"]).items()
               if k.endswith((".em", ".substring_em"))}
    with tempfile.TemporaryDirectory() as tmp:
        settings_file = Path(tmp) / f"{SETTINGS_ARTIFACT}.json"
        settings_file.write_text(json.dumps(RolloutSettings.from_config(cfg).to_dict(), indent=1), encoding="utf-8")
        artifacts = {"policy": str(cfg.eval.policy), SETTINGS_ARTIFACT: str(settings_file),
                     **({"bm25": str(index)} if index.exists() else {})}
        return tracker.log_model(AgentPyfunc(), artifacts, cfg.eval.registered_model, metrics)
