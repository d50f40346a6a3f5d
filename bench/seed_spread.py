"""Bench: how far results move with the seed: the evaluate stage's EM of runs that differ only
in ``base.seed`` (base models, simulator) or only in ``train.seed`` (the RL run).

Reads each run's ``metrics/evaluate.json`` and prints, per group of runs, every run's average
EM (``eval.headline_metric``) of the base agent and of the trained agent, the mean and the
span (max - min), against the target spans of the robustness issue (base agent <= 0.04, trained
agent <= 0.06).

    python bench/seed_spread.py --group "base.seed" b0=. b1=../seeds/b1 b2=../seeds/b2 \\
                                --group "train.seed" s0=. s1=../seeds/r1 s2=../seeds/r2

A run is ``label=<source>[+<source>...]``; a source is a repository directory (its
``metrics/evaluate.json`` is read) or ``exp:<name>``, a DVC experiment of the repository
``--repo`` (default ``.``; the replication study's, e.g. ``exp:rep-default-b1-s0``). The methods
of a run's sources are merged (the study evaluates the base agent and the trained agent in
separate experiments). ``--group NAME`` starts a new group.

    python bench/seed_spread.py --repo ../study \
        --group "base.seed" b0=exp:rep-baselines-b0-s0+exp:rep-default-b0-s0 \
                            b1=exp:rep-baselines-b1-s0+exp:rep-default-b1-s0 ...
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

TARGETS = {"base_agent": 0.04, "agent": 0.06}


def headline_em(evaluate: dict) -> dict[str, float]:
    """``{method: average headline EM}`` of an evaluate.json."""
    metric = evaluate.get("headline", {}).get("metric", "em")
    return {m: evaluate[m]["average"][metric] for m in TARGETS if m in evaluate}


def read_run(spec: str, repo: Path = Path(".")) -> dict[str, float]:
    """The methods of every source of ``spec`` (``+``-joined directories or ``exp:<name>``)."""
    from zerosearch.mlops.experiments import experiment_metrics

    out: dict[str, float] = {}
    for source in spec.split("+"):
        if source.startswith("exp:"):
            evaluate = experiment_metrics(source[4:], "metrics/evaluate.json", repo)
        else:
            evaluate = json.loads((Path(source) / "metrics" / "evaluate.json").read_text(encoding="utf-8"))
        out |= headline_em(evaluate)
    return out


def parse_args(argv: list[str]) -> tuple[Path, dict[str, dict[str, str]]]:
    """(``--repo``, ``{group: {label: spec}}``)."""
    groups: dict[str, dict[str, str]] = {}
    repo, current = Path("."), None
    it = iter(argv)
    for arg in it:
        if arg == "--repo":
            repo = Path(next(it))
        elif arg == "--group":
            current = next(it)
            groups[current] = {}
        elif current is None:
            raise SystemExit("start with --group NAME")
        else:
            label, _, spec = arg.partition("=")
            groups[current][label] = spec
    return repo, groups


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0 if len(sys.argv) >= 2 else 2)
    repo, groups = parse_args(sys.argv[1:])
    table = Table(title="average EM by seed (evaluate stage, 600 test questions)")
    for col in ("seed varied", "run", "base agent", "trained agent"):
        table.add_column(col)
    for name, runs in groups.items():
        values = {label: read_run(spec, repo) for label, spec in runs.items()}
        for label, v in values.items():
            table.add_row(name, label, *(f"{v[m]:.3f}" if m in v else "-" for m in TARGETS))
        cells = []
        for m, target in TARGETS.items():
            xs = [v[m] for v in values.values() if m in v]
            if len(xs) < 2:
                cells.append(f"{len(xs)} run: no spread")
                continue
            span = max(xs) - min(xs)
            cells.append(f"mean {statistics.mean(xs):.3f}, span {span:.3f} "
                         f"({'<=' if span <= target else '>'} {target}: {'met' if span <= target else 'not met'})")
        table.add_row(name, "all", *cells, end_section=True)
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
