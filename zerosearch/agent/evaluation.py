"""Evaluating search agents and baselines: greedy generation over benchmarks, EM/F1 tables.

Every record and table carries the three answer metrics of ``zerosearch.rewards``: ``em``
(strict exact match), ``substring_em`` (a gold alias contained in the prediction, the
reference's "EM") and ``f1``.

Methods (rows of the paper's Table 1, in miniature):

- ``direct``: the model answers without searching (its response starts with ``<answer>``).
- ``rag``: the question is retrieved once (top-k), the documents are given in an
  ``<information>`` block, and the model writes one turn (thinks, answers).
- ``base_agent`` / ``agent``: the multi-turn search loop (``zerosearch.agent.rollout``) with the base
  and the trained policy.

``predict_*`` return one record per question (question, gold, prediction, the three metrics,
searches, the trajectory text); ``summarize`` turns records into a benchmark's numbers,
``table`` into the whole table with averages (all, in-domain, out-of-domain) and
``by_source`` into per-data-source numbers plus their average (validation during training).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from zerosearch.agent.rollout import RolloutSettings, run_rollouts
from zerosearch.lm.generation import HFGenerator
from zerosearch.protocol import (
    INFORMATION_LAYOUTS,
    SearchEngine,
    encode_prompt,
    information_block,
    parse_action,
    policy_prompt,
)
from zerosearch.rewards import ANSWER_METRICS, METRIC_LABELS, answer_scores

ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"


def _record(row: dict, prediction: str | None, trajectory: str, *, searches: int = 0, invalid: int = 0,
            turns: int = 1) -> dict[str, Any]:
    gold = list(row["golden_answers"])
    return {"id": row.get("id"), "question": row["question"], "golden_answers": gold, "prediction": prediction,
            **answer_scores(prediction, gold), "searches": searches,
            "invalid_actions": invalid, "turns": turns, "trajectory": trajectory}


def _batches(rows: Sequence[dict], size: int):
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


def predict_agent(model, tokenizer, engine: SearchEngine, rows: Sequence[dict], settings: RolloutSettings, *,
                  batch_size: int = 64, generator=None) -> list[dict]:
    """The search agent, greedy: one record per row. ``generator``: a greedy ``rollout.Generator``
    over ``model`` other than the default ``HFGenerator`` (the trainer's, in its compute dtype
    or over its vLLM engine)."""
    generator = generator or HFGenerator(model, tokenizer, do_sample=False)
    model.eval()
    records = []
    with torch.no_grad():
        for chunk in _batches(rows, batch_size):
            batch = run_rollouts(generator, tokenizer, engine, [r["question"] for r in chunk],
                                 [r["golden_answers"] for r in chunk], settings,
                                 prompts=[r.get("prompt") for r in chunk])
            for row, t in zip(chunk, batch.trajectories, strict=True):
                records.append(_record(row, t.answer, tokenizer.decode(t.response_ids, skip_special_tokens=False),
                                       searches=t.searches, invalid=t.invalid_actions, turns=t.turns))
    return records


def _forced_answers(model, tokenizer, contexts: list[str], max_tokens: int) -> list[str]:
    """Greedy continuation of each context (which ends with ``<answer>``) up to ``</answer>``."""
    generator = HFGenerator(model, tokenizer, do_sample=False)
    ids = [encode_prompt(c, tokenizer) for c in contexts]
    outs = generator.generate(ids, max_tokens)
    return [tokenizer.decode(o, skip_special_tokens=False) for o in outs]


def _answer_text(continuation: str) -> str | None:
    """The answer a forced ``<answer>`` continuation gives: text up to ``</answer>``."""
    text = continuation.split(ANSWER_CLOSE)[0]
    for special in ("<|endoftext|>", "<|im_end|>", "</s>"):
        text = text.split(special)[0]
    return text.strip() or None


def predict_direct(model, tokenizer, rows: Sequence[dict], settings: RolloutSettings, *,
                   batch_size: int = 64) -> list[dict]:
    """Answer without searching: the response is forced to start with ``<answer>`` (the
    prompt and answer length of ``settings``)."""
    model.eval()
    records = []
    with torch.no_grad():
        for chunk in _batches(rows, batch_size):
            contexts = [_prompt(r, tokenizer, settings) + ANSWER_OPEN for r in chunk]
            outs = _forced_answers(model, tokenizer, contexts, settings.max_response_tokens)
            for row, out in zip(chunk, outs, strict=True):
                records.append(_record(row, _answer_text(out), ANSWER_OPEN + out))
    return records


def predict_rag(model, tokenizer, engine: SearchEngine, rows: Sequence[dict], settings: RolloutSettings, *,
                batch_size: int = 64) -> list[dict]:
    """Retrieve once with the question as the query, put the documents in an ``<information>``
    block after the prompt, and let the model write one turn: its ``<answer>`` is the
    prediction (a search instead gets nothing: retrieval happened once)."""
    generator = HFGenerator(model, tokenizer, do_sample=False)
    model.eval()
    records = []
    with torch.no_grad():
        for chunk in _batches(rows, batch_size):
            docs = engine.search([r["question"] for r in chunk], questions=[r["question"] for r in chunk],
                                 answers=[r["golden_answers"] for r in chunk], step=0)
            blocks = [_truncate(information_block(d, settings.information_layout, tokenizer=tokenizer), tokenizer, settings)
                      for d in docs]
            contexts = [encode_prompt(_prompt(r, tokenizer, settings) + b, tokenizer)
                        for r, b in zip(chunk, blocks, strict=True)]
            outs = [tokenizer.decode(o, skip_special_tokens=False)
                    for o in generator.generate(contexts, settings.max_response_tokens)]
            for row, block, out in zip(chunk, blocks, outs, strict=True):
                action = parse_action(out)
                answer = action[1] if action and action[0] == "answer" else None
                records.append(_record(row, answer, block + out, searches=1, invalid=int(action is None)))
    return records


def _truncate(block: str, tokenizer, settings: RolloutSettings) -> str:
    ids = tokenizer(block, add_special_tokens=False)["input_ids"]
    if len(ids) <= settings.max_obs_tokens:
        return block
    return tokenizer.decode(ids[:settings.max_obs_tokens]) + INFORMATION_LAYOUTS[settings.information_layout][1]


def _prompt(row: dict, tokenizer, settings: RolloutSettings) -> str:
    """The row's policy prompt: its ``prompt`` messages when it has them, else our template."""
    return policy_prompt(row["question"], tokenizer, chat=settings.chat, messages=row.get("prompt"))


def summarize(records: Sequence[dict]) -> dict[str, float]:
    """Mean strict EM, substring EM, F1, searches; share of rows with an answer; format errors per turn."""
    n = max(1, len(records))
    turns = max(1, sum(r["turns"] for r in records))
    return {
        "n": len(records),
        **{m: sum(r[m] for r in records) / n for m in ANSWER_METRICS},
        "searches": sum(r["searches"] for r in records) / n,
        "answered": sum(r["prediction"] is not None for r in records) / n,
        "format_error_rate": sum(r["invalid_actions"] for r in records) / turns,
    }


def table(results: dict[str, dict[str, dict[str, float]]], in_domain: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``results[method][benchmark] = summarize(...)`` -> per method: the benchmarks plus
    ``average`` / ``in_domain`` / ``out_of_domain`` strict EM, substring EM and F1 (unweighted
    means over benchmarks)."""
    out: dict[str, dict[str, Any]] = {}
    for method, per_bench in results.items():
        row: dict[str, Any] = {b: {k: round(v, 4) for k, v in s.items()} for b, s in per_bench.items()}
        groups: dict[str, list[str]] = {
            "average": list(per_bench), "in_domain": [b for b in per_bench if b in in_domain],
            "out_of_domain": [b for b in per_bench if b not in in_domain]}
        for name, benches in groups.items():
            if benches:
                row[name] = {m: round(sum(per_bench[b][m] for b in benches) / len(benches), 4) for m in ANSWER_METRICS}
        out[method] = row
    return out


def headline(tab: dict[str, dict[str, Any]], metric: str) -> dict[str, Any]:
    """The headline numbers: ``{"metric": metric, <method>: its average of that metric}``."""
    return {"metric": metric, **{method: row["average"][metric] for method, row in tab.items() if "average" in row}}


def by_source(records: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Records with a ``data_source`` -> per source ``{"n", "em", "substring_em", "f1"}`` and
    ``average`` (the unweighted mean over sources, as the benchmark table's average)."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["data_source"], []).append(r)
    out = {src: {"n": len(rs), **{m: sum(r[m] for r in rs) / len(rs) for m in ANSWER_METRICS}}
           for src, rs in groups.items()}
    if out:
        out["average"] = {"n": len(records), **{m: sum(s[m] for s in out.values()) / len(out) for m in ANSWER_METRICS}}
    return out


def markdown_table(tab: dict[str, dict[str, Any]], benchmarks: Sequence[str], metric: str = "em") -> str:
    """The table of one metric as markdown: rows methods, columns benchmarks then the averages."""
    rows = {m: r for m, r in tab.items() if isinstance(r, dict) and all(isinstance(v, dict) for v in r.values())}
    extra = [c for c in ("in_domain", "out_of_domain", "average") if any(c in r for r in rows.values())]
    cols = [*benchmarks, *extra]
    lines = [f"| method | {' | '.join(cols)} |", "|---" * (len(cols) + 1) + "|"]
    for method, row in rows.items():  # method rows only (not evaluate.json's ``headline``)
        cells = [f"{row[c][metric]:.3f}" if metric in row.get(c, {}) else "" for c in cols]
        lines.append(f"| {method} | {' | '.join(cells)} |")
    return "\n".join(lines)


def markdown_tables(tab: dict[str, dict[str, Any]], benchmarks: Sequence[str], headline_metric: str) -> str:
    """One titled table per answer metric, the headline metric first."""
    order = [headline_metric, *[m for m in ANSWER_METRICS if m != headline_metric]]
    return "\n\n".join(f"**{METRIC_LABELS[m]}**{' (headline)' if m == headline_metric else ''}\n\n"
                        f"{markdown_table(tab, benchmarks, m)}" for m in order)
