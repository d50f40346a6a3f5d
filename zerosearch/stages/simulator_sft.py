"""The simulator SFT stage: teach the simulator to write useful or noisy documents on request.

Run it with ``zerosearch simulator_sft`` (alias ``sft``; or ``dvc repro simulator_sft``);
``run(cfg, tracker)`` is the stage. As in the paper:
1. roll out the base policy against the *real* engine (BM25 over the corpus) on training
   questions and record every (query, returned documents) pair with its question and gold
   answers;
2. label a pair *useful* when its documents contain a gold answer, *noisy* otherwise;
3. balance the two labels, half the noisy pairs *counterfactual* (the same query as a useful
   pair, with the engine's next documents that lack the answer: see
   ``counterfactual_noisy``), hold out a fraction for the quality check;
4. fine-tune the simulator on instruction -> documents (``simulated.sft_prompt`` with the
   question and answer in the prompt; the loss is on the documents only), fully or with
   LoRA (``peft``; merged before saving so any server can load it).

The simulator fine-tuned is ``simulator_sft.init``'s: ``policy_copy`` loads
``base.simulator_model`` (the base stage's copy of the pretrained policy); ``scratch`` (tiny
world only) first builds a fresh model of ``simulator_sft.scratch.shape`` with the base
policy's tokenizer and pretrains it here on the policy's own pretraining texts
(``agent.pretraining``), so a simulator of another size reruns this stage and those after it,
never the base stage.

Outputs under ``models/simulator_sft/``: the model (HF format), ``sft_train.jsonl`` and
``sft_heldout.jsonl`` (the labelled pairs). Departures from the paper: the reference SFT
data came from a large policy querying a web engine, ours from the tiny base policy and
BM25; the counterfactual noisy pairs are ours.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from zerosearch.agent.pretraining import pretrain, pretraining_texts
from zerosearch.agent.rollout import Generator, RolloutSettings, run_rollouts
from zerosearch.atomic import write_csv
from zerosearch.config import Config, LoraSection, PretrainRun
from zerosearch.data.demos import demo_searches, demo_world
from zerosearch.data.schema import read_jsonl, read_qa_parquet, write_jsonl
from zerosearch.lm.generation import HFGenerator
from zerosearch.lm.models import (
    count_parameters,
    load_model,
    save_model,
    tiny_causal_lm,
    with_lora,
)
from zerosearch.lm.supervised import pack_examples, train_causal_lm
from zerosearch.progress import progress
from zerosearch.protocol import Doc, SearchEngine, Segment, format_docs
from zerosearch.rewards import normalize_answer
from zerosearch.search.bm25 import BM25Engine
from zerosearch.search.simulated import sft_prompt
from zerosearch.tracker import NullTracker, Tracker


class RecordingEngine:
    """Wraps a real engine and records every (query, documents, question, answers)."""

    def __init__(self, engine: SearchEngine):
        self.engine, self.records = engine, []

    def search(self, queries, *, questions=None, answers=None, step=0) -> list[list[Doc]]:
        results = self.engine.search(queries, questions=questions, answers=answers, step=step)
        for q, docs, question, gold in zip(queries, results, questions, answers, strict=True):
            self.records.append({"query": q, "question": question, "golden_answers": list(gold),
                                 "documents": [d.render() for d in docs]})
        return results


def contains_answer(texts: Sequence[str], golden_answers: Sequence[str]) -> bool:
    """True when a normalized gold alias occurs as whole words in a normalized text."""
    padded = [f" {normalize_answer(t)} " for t in texts]
    return any(f" {normalize_answer(g)} " in p for g in golden_answers if normalize_answer(g) for p in padded)


def collect_pairs(generator: Generator, tokenizer, engine: SearchEngine, questions: list[dict],
                  settings: RolloutSettings, *, batch_size: int = 64) -> list[dict]:
    """Roll out the policy on ``questions`` with ``engine`` under the training run's
    ``settings`` (so the searches are the ones RL will make); label each recorded search."""
    recorder = RecordingEngine(engine)
    with progress("collect simulator SFT pairs", -(-len(questions) // batch_size)) as bar:
        for i in range(0, len(questions), batch_size):
            chunk = questions[i : i + batch_size]
            run_rollouts(generator, tokenizer, recorder, [q["question"] for q in chunk],
                         [q["golden_answers"] for q in chunk], settings, prompts=[q.get("prompt") for q in chunk])
            bar.update(1, info=f"{len(recorder.records)} searches")
    pairs = [r for r in recorder.records if r["query"].strip() and r["documents"]]
    for r in pairs:
        r["label"] = "useful" if contains_answer(r["documents"], r["golden_answers"]) else "noisy"
    return pairs


def collect_policy_pairs(cfg: Config, engine: SearchEngine, questions: list[dict]) -> list[dict]:
    """``collect_pairs`` with the base policy at ``simulator_sft.collect_temperature``, its
    rollouts sampling from a generator of their own seeded from ``base.seed`` (never torch's
    global RNG, whose state depends on what ran before): two runs collect the same pairs."""
    policy, tok = load_model(cfg.base.policy_model)
    rng = torch.Generator().manual_seed(cfg.base.seed)
    generator = HFGenerator(policy, tok, temperature=cfg.simulator_sft.collect_temperature, generator=rng)
    return collect_pairs(generator, tok, engine, questions, RolloutSettings.from_config(cfg))


def counterfactual_noisy(pairs: list[dict], engine: BM25Engine, top_k: int, depth: int = 4) -> list[dict]:
    """For each useful pair, a noisy pair for the SAME query: the next documents the real
    engine ranks for it that do not contain a gold answer (related but unhelpful).

    Without these, a pair's label follows from its query (good queries find the answer,
    garbled ones do not) and a small simulator learns to reproduce the engine from the
    query, ignoring the useful/noisy instruction. Paired examples make the instruction the
    only difference."""
    useful = [p for p in pairs if p["label"] == "useful"]
    results = engine.search([p["query"] for p in useful], top_k=top_k * depth)
    out = []
    for p, docs in zip(useful, results):
        unhelpful = [d.render() for d in docs if not contains_answer([d.render()], p["golden_answers"])][:top_k]
        if unhelpful:
            out.append({**p, "documents": unhelpful, "label": "noisy", "counterfactual": True})
    return out


def balance(pairs: list[dict], seed: int, counterfactual: list[dict] = ()) -> list[dict]:
    """Equal numbers of useful and noisy pairs, shuffled. Noisy pairs are half counterfactual
    (same queries as useful ones) when there are enough, the rest sampled from ``pairs``."""
    rng = random.Random(seed)
    useful = [p for p in pairs if p["label"] == "useful"]
    noisy = [p for p in pairs if p["label"] == "noisy"]
    n = min(len(useful), len(noisy) + len(counterfactual))
    if n == 0:
        raise ValueError(f"cannot balance SFT pairs: {len(useful)} useful, {len(noisy)} noisy")
    n_cf = min(len(counterfactual), n // 2)
    n_cf = max(n_cf, n - len(noisy))
    out = rng.sample(useful, n) + rng.sample(list(counterfactual), n_cf) + rng.sample(noisy, n - n_cf)
    rng.shuffle(out)
    return out


def sft_example(pair: dict) -> list[Segment]:
    """Instruction (not trained) -> the documents the real engine returned (trained)."""
    prompt = sft_prompt(pair["query"], pair["question"], pair["golden_answers"][0], pair["label"] == "noisy")
    docs = format_docs([Doc("", d) for d in pair["documents"]])
    return [(prompt, False), (docs, True)]


def finetune(model, tokenizer, examples: list[list[Segment]], run: PretrainRun, lora: LoraSection, seed: int,
             on_step=None):
    """Supervised fine-tuning, full or LoRA; returns the (merged) model and the losses."""
    if lora.enabled:
        model = with_lora(model, lora)
    losses = train_causal_lm(model, pack_examples(tokenizer, examples, run.seq_len), run, seed,
                             desc="simulator sft", on_step=on_step)
    if lora.enabled:
        model = model.merge_and_unload()
    return model, losses


def label_searches(searches: list[dict], engine: SearchEngine) -> list[dict]:
    """Run each search's query through the real engine and label the pair useful/noisy."""
    results = engine.search([s["query"] for s in searches])
    pairs = [{**s, "documents": [d.render() for d in docs]} for s, docs in zip(searches, results) if docs]
    for p in pairs:
        p["label"] = "useful" if contains_answer(p["documents"], p["golden_answers"]) else "noisy"
    return pairs


def scratch_simulator(cfg: Config, tracker: Tracker) -> tuple[Any, Any, dict[str, float]]:
    """``simulator_sft.init: scratch``: a fresh Qwen2 model of ``simulator_sft.scratch.shape``
    with the base policy's tokenizer, pretrained with ``scratch.pretrain`` on the texts the base
    stage pretrained the policy on (rebuilt from the config, in the policy's order), init and
    batches seeded by ``base.seed + 2`` (the policy's are ``base.seed``, the copied
    simulator's further pretraining ``base.seed + 1``). Returns the model, the tokenizer and
    ``simulator_pretrain_{params,final_loss,seconds,train_tokens}``."""
    if not cfg.tiny_models.build:  # the config refuses it too; this stage reads the tiny world's texts
        raise ValueError("simulator_sft.init: scratch needs tiny_models.build: true")
    scratch, seed = cfg.simulator_sft.scratch, cfg.base.seed + 2
    _, tokenizer = load_model(cfg.base.policy_model)  # the base stage's tokenizer (the policy is unused)
    texts = pretraining_texts(cfg)
    model = tiny_causal_lm(scratch.shape, len(tokenizer), tokenizer, seed)
    stats = pretrain("simulator_pretrain", model, tokenizer, texts.policy_examples(cfg.base.seed), scratch.pretrain,
                     seed, tracker, {})
    return model, tokenizer, stats


def skip(cfg: Config) -> dict[str, Any]:
    """``simulator_sft.enabled: false`` (paper presets serving a released simulator): the
    stage's declared outputs, empty, with a note saying why; returns its stats."""
    out = cfg.path("models") / "simulator_sft"
    out.mkdir(parents=True, exist_ok=True)
    (out / "SKIPPED.txt").write_text(f"simulator_sft.enabled is false: {cfg.base.simulator_model} is served as is\n",
                                     encoding="utf-8")
    write_csv([], cfg.path("metrics") / "simulator_sft_loss.csv")
    return {"enabled": 0, "simulator_model": cfg.base.simulator_model}


def run(cfg: Config, tracker: Tracker = NullTracker()) -> dict[str, Any]:
    """The whole stage (or ``skip`` when ``simulator_sft.enabled`` is false); returns its stats."""
    if not cfg.simulator_sft.enabled:
        return skip(cfg)
    s, out = cfg.simulator_sft, cfg.path("models") / "simulator_sft"
    t0 = time.perf_counter()
    questions = read_qa_parquet(cfg.path("data") / "train.parquet")
    random.Random(cfg.base.seed).shuffle(questions)
    engine = BM25Engine.load(cfg.path("data") / "bm25", top_k=cfg.search.top_k)
    pairs = collect_policy_pairs(cfg, engine, questions[: s.n_questions])
    counterfactual = counterfactual_noisy(pairs, engine, cfg.search.top_k)
    demo = []
    if s.demo_world_searches:
        # Extra pairs on the separate demo world's fresh names: the simulator must copy the
        # subject from the query and the answer from its prompt, not recall the corpus.
        world, corpus = demo_world(cfg.base.seed, cfg.tiny_models.demo_entities)
        demo_engine = BM25Engine.build(corpus, top_k=cfg.search.top_k)
        demo = [{**p, "source": "demo_world"} for p in
                label_searches(demo_searches(world, s.demo_world_searches, cfg.base.seed), demo_engine)]
        counterfactual += counterfactual_noisy(demo, demo_engine, cfg.search.top_k)
    balanced = balance(pairs + demo, cfg.base.seed, counterfactual)
    world_pairs = [p for p in balanced if p.get("source") != "demo_world"]
    n_held = max(1, round(len(world_pairs) * s.heldout_fraction))
    heldout = world_pairs[:n_held]
    held_ids = {id(p) for p in heldout}
    train = [p for p in balanced if id(p) not in held_ids]
    collect_s = time.perf_counter() - t0

    if s.init == "scratch":
        simulator, sim_tok, init_stats = scratch_simulator(cfg, tracker)
    else:
        simulator, sim_tok = load_model(cfg.base.simulator_model)
        init_stats = {}
    init_stats["simulator_params"] = count_parameters(simulator)
    curve = []

    def on_step(step: int, m: dict[str, float]) -> None:
        tracker.log_metrics({f"sft_{k}": v for k, v in m.items()}, step=step)
        curve.append({"step": step, "sft_loss": round(m["loss"], 5)})

    simulator, losses = finetune(simulator, sim_tok, [sft_example(p) for p in train], s.train, s.lora,
                                 cfg.base.seed, on_step)
    save_model(simulator, sim_tok, out)
    write_jsonl(train, out / "sft_train.jsonl")
    write_jsonl(heldout, out / "sft_heldout.jsonl")
    write_csv(curve, cfg.path("metrics") / "simulator_sft_loss.csv")
    return {"pairs_collected": len(pairs), "pairs_useful": sum(p["label"] == "useful" for p in pairs),
            "demo_world_pairs": len(demo),
            "pairs_train": len(train), "pairs_heldout": len(heldout), "collect_seconds": collect_s,
            "sft_final_loss": sum(losses[-10:]) / len(losses[-10:]), "seconds": time.perf_counter() - t0,
            "simulator_init": s.init, **init_stats}


def load_heldout(directory: str | Path) -> list[dict]:
    return read_jsonl(Path(directory) / "sft_heldout.jsonl")
