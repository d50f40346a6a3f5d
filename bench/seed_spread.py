"""Bench: how far results move with the seed: the evaluate stage's EM of runs that differ only
in ``base.seed`` (world, base models, simulator) or only in ``train.seed`` (the RL run).

Reads each run's ``metrics/evaluate.json`` and prints, per group of runs, every run's average
EM (``eval.headline_metric``) of the base agent and of the trained agent, the mean and the
span (max - min), against the target spans of the robustness issue (base agent <= 0.04, trained
agent <= 0.06).

    python bench/seed_spread.py --group "base.seed" b0=. b1=../seeds/b1 b2=../seeds/b2 \\
                                --group "train.seed" s0=. s1=../seeds/r1 s2=../seeds/r2

A run is ``label=<repo dir>`` (its ``metrics/evaluate.json`` is read); ``--group NAME`` starts a
new group.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

TARGETS = {"base_agent": 0.04, "agent": 0.06}


def read_run(path: Path) -> dict[str, float]:
    """``{method: average headline EM}`` of a run's evaluate.json."""
    e = json.loads((path / "metrics" / "evaluate.json").read_text(encoding="utf-8"))
    metric = e.get("headline", {}).get("metric", "em")
    return {m: e[m]["average"][metric] for m in TARGETS if m in e}


def parse_groups(argv: list[str]) -> dict[str, dict[str, Path]]:
    groups: dict[str, dict[str, Path]] = {}
    current = None
    it = iter(argv)
    for arg in it:
        if arg == "--group":
            current = next(it)
            groups[current] = {}
        elif current is None:
            raise SystemExit("start with --group NAME")
        else:
            label, _, path = arg.partition("=")
            groups[current][label] = Path(path)
    return groups


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0 if len(sys.argv) >= 2 else 2)
    groups = parse_groups(sys.argv[1:])
    table = Table(title="average EM by seed (evaluate stage, 600 test questions)")
    for col in ("seed varied", "run", "base agent", "trained agent"):
        table.add_column(col)
    for name, runs in groups.items():
        values = {label: read_run(path) for label, path in runs.items()}
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
