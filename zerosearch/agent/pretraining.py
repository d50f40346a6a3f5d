"""Pretraining the tiny world's models from scratch: what they read and the run itself.

Two stages pretrain from scratch and must read the same texts: the base stage (the tiny
policy, and the tokenizer trained on those texts) and, under ``simulator_sft.init: scratch``,
the simulator SFT stage (a simulator of its own size). ``pretraining_texts`` rebuilds them
from the config alone (the data stage's corpus, ``base.seed``, the demo world of
``tiny_models.demo_entities`` entities, ``tiny_models.n_demos`` protocol demonstrations and
``tiny_models.n_reading_drills`` reading drills, answered by BM25 with ``search.bm25`` and ``search.top_k``), so both stages get the same
texts byte for byte without passing files between them; ``pretrain`` is the one training
run both use.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

from zerosearch.config import Config, PretrainRun
from zerosearch.data.demos import demo_world, protocol_demos, reading_drills
from zerosearch.data.schema import read_corpus
from zerosearch.lm.models import count_parameters
from zerosearch.lm.supervised import pack_examples, train_causal_lm
from zerosearch.protocol import Doc, Segment
from zerosearch.search.bm25 import BM25Engine
from zerosearch.tracker import Tracker


@dataclass(frozen=True)
class PretrainingTexts:
    """The tiny world's pretraining examples (each a list of (text, trained) segments).

    demos:     protocol demonstrations on the separate demo world (fresh names)
    documents: one example per corpus document, as the engines render it
    drills:    reading drills on the demo world (demonstrations trained only on what they read)
    """

    demos: list[list[Segment]]
    documents: list[list[Segment]]
    drills: list[list[Segment]]

    def tokenizer_texts(self) -> Iterator[str]:
        """The texts the tokenizer is trained on: documents, then demonstrations (the drills,
        demonstrations of the same kind, leave it out: the default tokenizer stays as it was)."""
        return (text for ex in self.documents + self.demos for text, _ in ex)

    def policy_examples(self, seed: int) -> list[list[Segment]]:
        """Demonstrations, drills and documents shuffled by ``seed``: the policy's pretraining set
        (with no drills, the same list as before they existed)."""
        examples = self.demos + self.drills + self.documents
        random.Random(seed).shuffle(examples)
        return examples


def pretraining_texts(cfg: Config) -> PretrainingTexts:
    """The pretraining texts of ``cfg``'s tiny world (needs the data stage's ``corpus.jsonl``)."""
    tm = cfg.tiny_models
    corpus = read_corpus(cfg.path("data") / "corpus.jsonl")
    world, demo_corpus = demo_world(cfg.base.seed, tm.demo_entities)
    engine = BM25Engine.build(demo_corpus, k1=cfg.search.bm25.k1, b=cfg.search.bm25.b, top_k=cfg.search.top_k)
    demos = protocol_demos(world, engine, tm.n_demos, cfg.base.seed)
    drills = reading_drills(world, engine, tm.n_reading_drills, cfg.base.seed)
    documents = [[(Doc(d["title"], d["text"]).render(), True)] for d in corpus]
    return PretrainingTexts(demos=demos, documents=documents, drills=drills)


def pretrain(name: str, model, tokenizer, examples: list[list[Segment]], run: PretrainRun, seed: int,
             tracker: Tracker, curve: dict[int, dict]) -> dict[str, float]:
    """``run`` on ``examples`` packed into ``run.seq_len`` chunks; logs ``<name>_<metric>`` per step
    to ``tracker`` and ``<name>_loss`` into ``curve`` (step -> row). Returns ``<name>_params``,
    ``_final_loss`` (mean of the last 10 steps), ``_seconds`` and ``_train_tokens``."""
    chunks = pack_examples(tokenizer, examples, run.seq_len)
    t0 = time.perf_counter()

    def on_step(step: int, m: dict[str, float]) -> None:
        tracker.log_metrics({f"{name}_{k}": v for k, v in m.items()}, step=step)
        curve.setdefault(step, {"step": step})[f"{name}_loss"] = round(m["loss"], 5)

    losses = train_causal_lm(model, chunks, run, seed, desc=f"pretrain {name}", on_step=on_step)
    return {f"{name}_params": count_parameters(model), f"{name}_final_loss": sum(losses[-10:]) / len(losses[-10:]),
            f"{name}_seconds": time.perf_counter() - t0, f"{name}_train_tokens": run.steps * run.batch_size * run.seq_len}
