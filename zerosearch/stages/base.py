"""The base stage: the tiny policy and simulator, built from scratch and offline.

Run it with ``zerosearch base`` (or ``dvc repro base``); ``run(cfg, tracker)`` is the stage. With ``tiny_models.build: true`` it
trains a byte-level BPE tokenizer on the world, pretrains the policy on the corpus plus
protocol demonstrations (from a separate demo world), continues pretraining a copy of it on
the corpus as the simulator, and saves both
in HF format (safetensors) at ``base.policy_model`` and ``base.simulator_model``. With
``build: false`` (paper presets) it checks that the named hub/local models resolve instead.
"""

from __future__ import annotations

import copy
from typing import Any

from zerosearch.agent.pretraining import pretrain, pretraining_texts
from zerosearch.atomic import write_csv, write_json
from zerosearch.config import Config
from zerosearch.lm.models import (
    resolve_model_path,
    save_model,
    tiny_causal_lm,
    train_tokenizer,
)
from zerosearch.tracker import NullTracker, Tracker


def build_tiny_models(cfg: Config, tracker: Tracker) -> dict[str, Any]:
    tm = cfg.tiny_models
    texts = pretraining_texts(cfg)  # the simulator_sft stage's scratch simulator reads these too
    tokenizer = train_tokenizer(texts.tokenizer_texts(), tm.vocab_size)

    policy_texts = texts.policy_examples(cfg.base.seed)
    curve: dict[int, dict] = {}
    stats: dict[str, Any] = {"vocab_size": len(tokenizer), "demos": len(texts.demos)}
    policy = tiny_causal_lm(tm.policy, len(tokenizer), tokenizer, cfg.base.seed)
    stats |= pretrain("policy", policy, tokenizer, policy_texts, tm.policy_pretrain, cfg.base.seed, tracker, curve)
    save_model(policy, tokenizer, cfg.base.policy_model)

    # The simulator starts from the pretrained policy, as the paper's simulators are fine-tuned
    # from the policy's model family: it inherits the ability to copy names from its prompt.
    # (simulator_sft.init: scratch ignores it and pretrains one of its own size in that stage.)
    simulator = copy.deepcopy(policy)
    stats |= pretrain("simulator", simulator, tokenizer, texts.documents, tm.simulator_pretrain, cfg.base.seed + 1,
                      tracker, curve)
    save_model(simulator, tokenizer, cfg.base.simulator_model)
    write_csv([curve[s] for s in sorted(curve)], cfg.path("metrics") / "base_loss.csv")
    return stats


def resolve_base_models(cfg: Config) -> dict[str, Any]:
    """Paper presets: the policy and simulator are hub/local models; check they resolve."""
    return {"policy_model": resolve_model_path(cfg.base.policy_model),
            "simulator_model": resolve_model_path(cfg.base.simulator_model)}


def run(cfg: Config, tracker: Tracker = NullTracker()) -> dict[str, Any]:
    """The base stage; writes ``models/base/manifest.json`` and returns its stats."""
    if cfg.tiny_models.build:
        stats = build_tiny_models(cfg, tracker)
    else:
        stats = resolve_base_models(cfg)
        write_csv([], cfg.path("metrics") / "base_loss.csv")  # nothing trained: an empty curve
    write_json(stats, cfg.path("models") / "base" / "manifest.json")
    return stats
