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
import random
import time
from typing import Any

from zerosearch.atomic import write_csv, write_json
from zerosearch.config import Config
from zerosearch.data.demos import demo_world, protocol_demos
from zerosearch.data.schema import read_corpus
from zerosearch.lm.models import (
    count_parameters,
    resolve_model_path,
    save_model,
    tiny_causal_lm,
    train_tokenizer,
)
from zerosearch.lm.supervised import pack_examples, train_causal_lm
from zerosearch.protocol import Doc, Segment
from zerosearch.search.bm25 import BM25Engine
from zerosearch.tracker import NullTracker, Tracker


def _pretrain(name: str, model, tokenizer, examples: list[list[Segment]], run, seed: int, tracker,
              curve: dict) -> dict[str, float]:
    chunks = pack_examples(tokenizer, examples, run.seq_len)
    t0 = time.perf_counter()

    def on_step(step: int, m: dict[str, float]) -> None:
        tracker.log_metrics({f"{name}_{k}": v for k, v in m.items()}, step=step)
        curve.setdefault(step, {"step": step})[f"{name}_loss"] = round(m["loss"], 5)

    losses = train_causal_lm(model, chunks, run, seed, desc=f"pretrain {name}", on_step=on_step)
    return {f"{name}_params": count_parameters(model), f"{name}_final_loss": sum(losses[-10:]) / len(losses[-10:]),
            f"{name}_seconds": time.perf_counter() - t0, f"{name}_train_tokens": run.steps * run.batch_size * run.seq_len}


def build_tiny_models(cfg: Config, tracker: Tracker) -> dict[str, Any]:
    tm, data_dir = cfg.tiny_models, cfg.path("data")
    corpus = read_corpus(data_dir / "corpus.jsonl")
    world, demo_corpus = demo_world(cfg.base.seed, tm.demo_entities)
    engine = BM25Engine.build(demo_corpus, k1=cfg.search.bm25.k1, b=cfg.search.bm25.b, top_k=cfg.search.top_k)
    demos = protocol_demos(world, engine, tm.n_demos, cfg.base.seed)
    documents = [[(Doc(d["title"], d["text"]).render(), True)] for d in corpus]
    tokenizer = train_tokenizer((text for ex in documents + demos for text, _ in ex), tm.vocab_size)

    policy_texts = demos + documents
    random.Random(cfg.base.seed).shuffle(policy_texts)
    curve: dict[int, dict] = {}
    stats: dict[str, Any] = {"vocab_size": len(tokenizer), "demos": len(demos)}
    policy = tiny_causal_lm(tm.policy, len(tokenizer), tokenizer, cfg.base.seed)
    stats |= _pretrain("policy", policy, tokenizer, policy_texts, tm.policy_pretrain, cfg.base.seed, tracker, curve)
    save_model(policy, tokenizer, cfg.base.policy_model)

    # The simulator starts from the pretrained policy, as the paper's simulators are fine-tuned
    # from the policy's model family: it inherits the ability to copy names from its prompt.
    simulator = copy.deepcopy(policy)
    stats |= _pretrain("simulator", simulator, tokenizer, documents, tm.simulator_pretrain, cfg.base.seed + 1, tracker, curve)
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
