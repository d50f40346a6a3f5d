"""The replication report: ``metrics/replication.json``, ``docs/REPLICATION.md`` and a bar chart per claim.

``results(study, experiments, collected)`` turns the finished experiments' per-question
correctness into the report's data (numbers in %, as the paper's tables): per claim and row
the per-seed EM per benchmark, the mean, its 95% CI (``mlops/bootstrap.py``), the paper's
number, and per compared pair the difference, its CI and the verdict. ``render_markdown``,
``plot_claims`` and ``write_report`` only format that data, so rerunning
``zerosearch replicate --report-only`` regenerates every file; nothing is written by hand.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from zerosearch.atomic import write_json
from zerosearch.mlops import bootstrap
from zerosearch.mlops.replication import Collected
from zerosearch.mlops.study import Claim, Experiment, Study, experiment_name

GENERATED_BY = "zerosearch replicate --report-only"
NOT_RUN = "not run yet"
JSON_PATH, MARKDOWN_PATH, PLOTS_DIR = Path("metrics/replication.json"), Path("docs/REPLICATION.md"), Path("metrics/replication_plots")


def _pct(x: float | None) -> float | None:
    return None if x is None else round(100.0 * x, 2)


def _row_scores(study: Study, claim: Claim, row, collected: Collected) -> tuple[dict, list[str], list[str]]:
    """``(scores, finished experiment names, missing names)`` of one row over the claim's seeds."""
    scores: dict[int, dict[int, dict]] = {}
    found, missing = [], []
    bases, rls = study.seeds(claim, row.variant)
    for b in bases:
        for s in rls:
            name = experiment_name(row.variant, b, s)
            if name not in collected.predictions:
                missing.append(name)
                continue
            per_bench = bootstrap.correctness(collected.predictions[name], row.method, study.metric)
            if not per_bench:
                missing.append(name)
                continue
            scores.setdefault(b, {})[s] = per_bench
            found.append(name)
    return scores, found, missing


def _simulator_quality(train: Mapping[str, Any]) -> dict[str, float | None]:
    """The simulator's own numbers from an experiment's ``metrics/train.json``: the share of
    queries drawn noisy, malformed and repaired (``stats``), and the probe's rates when the
    train stage recorded them (``simulator_probe``: useful / noisy requests' outputs holding a
    gold answer, and ``bm25_contains_gold_rate``, BM25 on the same queries)."""
    stats = train.get("stats") or {}
    q = stats.get("queries") or 0
    probe = train.get("simulator_probe") or {}
    return {"noisy_share": stats.get("noisy", 0) / q if q else None,
            "malformed_rate": stats.get("malformed", 0) / q if q else None,
            "repaired_rate": stats.get("repaired", 0) / q if q else None,
            "useful_contains_gold_rate": probe.get("useful_contains_gold_rate"),
            "noisy_contains_gold_rate": probe.get("noisy_contains_gold_rate"),
            "bm25_contains_gold_rate": probe.get("bm25_contains_gold_rate")}


def _mean(values: Sequence[float | None]) -> float | None:
    xs = [v for v in values if v is not None]
    return round(100.0 * sum(xs) / len(xs), 2) if xs else None


def _percent_row(summary: dict[str, Any]) -> dict[str, Any]:
    return {"benchmarks": summary["benchmarks"], "n_runs": summary["n_runs"],
            "mean": {k: _pct(v) for k, v in summary["mean"].items()},
            "ci": {k: [_pct(v[0]), _pct(v[1])] for k, v in summary["ci"].items()},
            "per_seed": [{**p, "em": {k: _pct(v) for k, v in p["em"].items()}} for p in summary["per_seed"]]}


def claim_results(study: Study, claim: Claim, collected: Collected) -> dict[str, Any]:
    rows, scores = [], {}
    for row in claim.rows:
        s, found, missing = _row_scores(study, claim, row, collected)
        scores[row.id] = s
        entry: dict[str, Any] = {"id": row.id, "variant": row.variant, "method": row.method,
                                 "label": study.variants[row.variant].label if row.method == "agent" else f"{row.method} (base policy)",
                                 "paper": row.paper, "paper_label": row.paper_label, "experiments": found, "missing": missing}
        if s:
            entry.update(_percent_row(bootstrap.summarize_row(s, resamples=study.resamples, seed=study.bootstrap_seed,
                                                              confidence=study.confidence)))
        else:
            entry.update({"benchmarks": [], "n_runs": 0, "mean": {}, "ci": {}, "per_seed": []})
        if claim.simulator_quality and row.method == "agent":
            quality = [_simulator_quality(collected.train.get(n, {})) for n in found]
            entry["simulator_quality"] = {k: _mean([q[k] for q in quality]) for k in _simulator_quality({})}
        rows.append(entry)
    comparisons = []
    for pair in claim.compare:
        paper_better, paper_worse = claim.row(pair.better).paper, claim.row(pair.worse).paper
        paper_diff = None if paper_better is None or paper_worse is None else round(paper_better - paper_worse, 2)
        if scores[pair.better] and scores[pair.worse]:
            d = bootstrap.difference(scores[pair.better], scores[pair.worse], resamples=study.resamples,
                                     seed=study.bootstrap_seed, confidence=study.confidence)
            comparisons.append({"better": pair.better, "worse": pair.worse, "diff": _pct(d["diff"]),
                                "ci": None if d["ci"] is None else [_pct(d["ci"][0]), _pct(d["ci"][1])],
                                "verdict": d["verdict"], "paper_diff": paper_diff, "paired_bases": d["bases"],
                                "paired_questions": d["questions"]})
        else:
            comparisons.append({"better": pair.better, "worse": pair.worse, "diff": None, "ci": None,
                                "verdict": NOT_RUN, "paper_diff": paper_diff, "paired_bases": [], "paired_questions": 0})
    return {"id": claim.id, "title": claim.title, "paper_table": claim.paper_table, "question": claim.question,
            "vary": list(claim.vary), "seeds": {"base": list(range(study.base_seeds)) if "base" in claim.vary else [0],
                                                "rl": list(range(study.rl_seeds)) if "rl" in claim.vary else [0]},
            "rows": rows, "comparisons": comparisons,
            "verdict": comparisons[0]["verdict"] if comparisons else NOT_RUN,
            "plot": str(PLOTS_DIR / f"claim{claim.id}.png")}


def results(study: Study, experiments: Sequence[Experiment], collected: Collected) -> dict[str, Any]:
    """The whole report's data (what ``metrics/replication.json`` holds)."""
    finished = [e.name for e in experiments if e.name in collected.predictions]
    return {"generated_by": GENERATED_BY, "units": "percent", "metric": study.metric,
            "bootstrap": {"resamples": study.resamples, "seed": study.bootstrap_seed, "confidence": study.confidence,
                          "levels": "seeds (base seeds, then RL seeds within each), then questions (one draw per benchmark, shared by the base seeds that answered the same questions)"},
            "seeds": {"rl": study.rl_seeds, "base": study.base_seeds},
            "experiments": {"planned": len(experiments), "finished": len(finished),
                            "missing": [e.name for e in experiments if e.name not in collected.predictions]},
            "claims": [claim_results(study, c, collected) for c in study.claims]}


# ----------------------------------------------------------------------------- markdown

def _fmt(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def _ci(ci: Sequence[float | None] | None, signed: bool = False) -> str:
    return "-" if not ci or ci[0] is None else f"[{_fmt(ci[0], signed)}, {_fmt(ci[1], signed)}]"


def _span(xs: Sequence[int]) -> str:
    return f"{xs[0]}" if len(xs) == 1 else f"{xs[0]}-{xs[-1]}"


def _seeds_line(claim: dict[str, Any]) -> str:
    s = claim["seeds"]
    varied = [f"base seeds (`base.seed`) {_span(s['base'])}" if "base" in claim["vary"] else None,
              f"RL seeds (`train.seed`) {_span(s['rl'])}" if "rl" in claim["vary"] else None]
    fixed = [f"`base.seed` {s['base'][0]}" if "base" not in claim["vary"] else None,
             f"`train.seed` {s['rl'][0]}" if "rl" not in claim["vary"] else None]
    text = "Seeds that vary: " + (", ".join(v for v in varied if v) or "none")
    if any(fixed):
        text += "; fixed: " + ", ".join(f for f in fixed if f)
    return text + f" (up to {len(s['base']) * len(s['rl'])} runs per row)."


def _verdict_line(c: dict[str, Any], claim: dict[str, Any]) -> str:
    labels = {r["id"]: r["id"] for r in claim["rows"]}
    paper = f"paper {_fmt(c['paper_diff'], True)}" if c["paper_diff"] is not None else "no paper number"
    if c["verdict"] == NOT_RUN:
        return f"`{labels[c['better']]}` - `{labels[c['worse']]}`: **{NOT_RUN}** ({paper})"
    verdict = c["verdict"] + (" at this scale" if c["verdict"] == bootstrap.INCONCLUSIVE else "")
    return (f"`{labels[c['better']]}` - `{labels[c['worse']]}` = {_fmt(c['diff'], True)} "
            f"{_ci(c['ci'], True)}: **{verdict}** ({paper}; paired over {c['paired_questions']} questions "
            f"of base seeds {c['paired_bases']})")


def _claim_markdown(claim: dict[str, Any], confidence: float) -> list[str]:
    benchmarks = next((r["benchmarks"] for r in claim["rows"] if r["benchmarks"]), [])
    pct = round(confidence * 100)
    out = [f"## Claim {claim['id']}: {claim['title']}", "", claim["question"], "",
           f"Paper: {claim['paper_table']}. {_seeds_line(claim)}", ""]
    head = ["row", *benchmarks, f"average [{pct}% CI]", "runs", "paper", "paper row"]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in claim["rows"]:
        cells = [f"`{r['id']}`: {r['label']}", *[_fmt(r["mean"].get(b)) for b in benchmarks],
                 f"{_fmt(r['mean'].get('average'))} {_ci(r['ci'].get('average'))}" if r["mean"] else "-",
                 f"{r['n_runs']}" + (f" ({len(r['missing'])} missing)" if r["missing"] else ""),
                 _fmt(r["paper"]), r["paper_label"]]
        out.append("| " + " | ".join(cells) + " |")
    out += ["", f"**Verdict: {claim['verdict']}{' at this scale' if claim['verdict'] == bootstrap.INCONCLUSIVE else ''}**", ""]
    out += [f"- {_verdict_line(c, claim)}" for c in claim["comparisons"]]
    quality = [r for r in claim["rows"] if "simulator_quality" in r]
    if quality:
        out += ["", ("Each engine's own quality during training (means over the row's runs, %): the share of searches "
                "answered with noisy documents by the curriculum, malformed and repaired simulator outputs, and the "
                "simulator probe's rates (outputs holding a gold answer when asked for useful / noisy documents, BM25's on "
                "the same queries) where the train stage recorded them (`simulator_probe` in `metrics/train.json`)."), "",
                "| row | noisy share | malformed | repaired | useful holds gold | noisy holds gold | BM25 holds gold |",
                "|---|---|---|---|---|---|---|"]
        for r in quality:
            q = r["simulator_quality"]
            out.append(f"| `{r['id']}` | " + " | ".join(_fmt(q[k]) for k in (
                "noisy_share", "malformed_rate", "repaired_rate", "useful_contains_gold_rate",
                "noisy_contains_gold_rate", "bm25_contains_gold_rate")) + " |")
    out += ["", f"![claim {claim['id']}](../{claim['plot']})", ""]
    return out


def render_markdown(report: dict[str, Any]) -> str:
    e, b = report["experiments"], report["bootstrap"]
    pct = round(b["confidence"] * 100)
    lines = ["<!-- generated by `zerosearch replicate --report-only` from metrics/replication.json: do not edit -->",
             "# Replication study", "",
             (f"Generated by `{GENERATED_BY}`, do not edit: rerunning it regenerates this file, "
             "`metrics/replication.json` and the charts from the study's DVC experiments (`configs/studies/replication.yaml`)."), "",
             (f"Scores: {report['metric']} in % per benchmark of the tiny world (the paper's numbers: average EM in % "
             f"over its 7 benchmarks, from the latest version of the paper, Sun et al. 2025, arXiv 2505.04588; compare directions, not levels). "
             f"CIs: {pct}% percentile bootstrap, {b['resamples']} resamples (seed {b['seed']}) over {b['levels']}. "
             f"Verdicts from the CI of (the paper's better - its worse): above 0 the claim holds, below 0 the opposite, "
             f"else inconclusive at this scale."), "",
             f"Experiments finished: {e['finished']} of {e['planned']}"
             + (f" (missing: {', '.join(f'`{m}`' for m in e['missing'][:12])}{' ...' if len(e['missing']) > 12 else ''})"
                if e["missing"] else "") + ".", ""]
    lines += ["| claim | verdict |", "|---|---|"]
    lines += [f"| {c['id']}. {c['title']} | {c['verdict']} |" for c in report["claims"]]
    lines.append("")
    for claim in report["claims"]:
        lines += _claim_markdown(claim, b["confidence"])
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------- charts

def plot_claim(claim: dict[str, Any], out: Path, confidence: float = 0.95) -> Path:
    """Ours (average with CI error bars) and the paper's numbers, one bar per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = [r["id"] for r in claim["rows"]]
    ours = [r["mean"].get("average") for r in claim["rows"]]
    lo = [(m - r["ci"]["average"][0]) if m is not None else 0 for m, r in zip(ours, claim["rows"], strict=True)]
    hi = [(r["ci"]["average"][1] - m) if m is not None else 0 for m, r in zip(ours, claim["rows"], strict=True)]
    paper = [r["paper"] for r in claim["rows"]]
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.3 * len(ids), 3.4))
    bars = axes[0].bar(ids, [m or 0 for m in ours], yerr=[lo, hi], capsize=4, color="#4c72b0")
    axes[0].bar_label(bars, labels=[_fmt(m) for m in ours], padding=2, fontsize=8)
    axes[0].set_title(f"ours (tiny world), {round(confidence * 100)}% CI")
    bars = axes[1].bar(ids, [p or 0 for p in paper], color="#999999")
    axes[1].bar_label(bars, labels=[_fmt(p) for p in paper], padding=2, fontsize=8)
    axes[1].set_title("paper (average EM)")
    tops = [r["ci"]["average"][1] for r in claim["rows"] if r["mean"]] + [p for p in paper if p is not None]
    for ax in axes:
        ax.set_ylim(0, max(tops, default=1.0) * 1.15 or 1.0)
        ax.set_ylabel("EM (%)")
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.suptitle(f"Claim {claim['id']}: {claim['title']} ({claim['verdict']})", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def write_report(report: dict[str, Any], root: str | Path = ".") -> list[Path]:
    """Write replication.json, the charts and REPLICATION.md under ``root``; the paths written."""
    root = Path(root)
    write_json(report, root / JSON_PATH)
    paths = [root / JSON_PATH]
    for claim in report["claims"]:
        paths.append(plot_claim(claim, root / claim["plot"], report["bootstrap"]["confidence"]))
    (root / MARKDOWN_PATH).parent.mkdir(parents=True, exist_ok=True)
    (root / MARKDOWN_PATH).write_text(render_markdown(report), encoding="utf-8")
    paths.append(root / MARKDOWN_PATH)
    return paths


def flat_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The report's numbers as MLflow metrics: ``claim<k>.<row>.average`` (and its CI) and
    ``claim<k>.<better>-vs-<worse>.diff``."""
    out: dict[str, float] = {}
    for c in report["claims"]:
        for r in c["rows"]:
            if r["mean"].get("average") is not None:
                out[f"claim{c['id']}.{r['id']}.average"] = r["mean"]["average"]
                out[f"claim{c['id']}.{r['id']}.ci_low"], out[f"claim{c['id']}.{r['id']}.ci_high"] = r["ci"]["average"]
        for p in c["comparisons"]:
            if p["diff"] is not None:
                out[f"claim{c['id']}.{p['better']}-vs-{p['worse']}.diff"] = p["diff"]
    return out


def load_report(path: str | Path = JSON_PATH) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def build_report(study: Study, experiments: Sequence[Experiment], store, root: str | Path = ".") -> tuple[dict[str, Any], list[Path]]:
    """Read the finished experiments from ``store`` (a ``replication.ExperimentStore``), compute
    the report and write its files under ``root``."""
    from zerosearch.mlops.replication import collect

    report = results(study, experiments, collect(experiments, store))
    return report, write_report(report, root)


def publish(report: dict[str, Any], paths: Sequence[Path], config, params_file: str | Path = "params.yaml") -> None:
    """Log the report to MLflow: a ``replication`` run (``tracking.stage_run``: under the
    workspace's pipeline run; ``ZEROSEARCH_TRACKING=off`` logs nothing) with its numbers as
    metrics and its files as artifacts."""
    from zerosearch.mlops.tracking import stage_run

    with stage_run("replication", config, params_file) as tracker:
        tracker.log_metrics(flat_metrics(report))
        for path in paths:
            tracker.log_artifact(path)
