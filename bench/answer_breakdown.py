"""Bench: where an agent's answers go wrong, from the evaluate stage's predictions: how often
it searched, how often the documents it read held a gold answer (the search's part), and how
often it answered right when they did (the reading/copying part).

    python bench/answer_breakdown.py .                       # this repository's last evaluate
    python bench/answer_breakdown.py --repo ../study exp:rep-baselines-b0-s0 exp:rep-baselines-b1-s0

A run is a repository directory (its ``metrics/evaluate_predictions.jsonl``) or ``exp:<name>``,
a DVC experiment of ``--repo`` (default ``.``), read back from the DVC cache. Every method of
the predictions that searches (``base_agent``, ``agent``) gets a row.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from zerosearch.data.schema import read_jsonl
from zerosearch.rewards import normalize_answer

INFORMATION = re.compile(r"<information>(.*?)</information>", flags=re.DOTALL)
SEARCHING = ("base_agent", "agent")


def read_predictions(run: str, repo: Path) -> list[dict]:
    if run.startswith("exp:"):
        from zerosearch.mlops.replication import DvcStore

        return DvcStore(repo).predictions(run[4:])
    return read_jsonl(Path(run) / "metrics" / "evaluate_predictions.jsonl")


def breakdown(records: list[dict], method: str) -> dict[str, float]:
    """Shares over ``method``'s records: em, searched, gold_in_docs, em_given_gold_in_docs."""
    n = searched = em = found = em_found = 0.0
    for r in records:
        if r["method"] != method:
            continue
        read = normalize_answer(" ".join(INFORMATION.findall(r["trajectory"])))
        hit = any(g and g in read for g in map(normalize_answer, r["golden_answers"]))
        n, em, searched = n + 1, em + float(r["em"]), searched + (int(r["searches"]) > 0)
        found, em_found = found + hit, em_found + float(r["em"]) * hit
    if not n:
        return {}
    return {"questions": n, "em": em / n, "searched": searched / n, "gold_in_docs": found / n,
            "em_given_gold_in_docs": em_found / found if found else 0.0}


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0 if args else 2)
    repo = Path(".")
    if args[0] == "--repo":
        repo, args = Path(args[1]), args[2:]
    table = Table(title="where the answers go wrong (strict EM; documents = every <information> block read)")
    for col in ("run", "method", "questions", "EM", "searched", "gold in the documents", "EM when it was"):
        table.add_column(col)
    for run in args:
        records = read_predictions(run, repo)
        for method in SEARCHING:
            b = breakdown(records, method)
            if b:
                table.add_row(run, method, f"{b['questions']:.0f}", f"{b['em']:.3f}", f"{b['searched']:.2f}",
                              f"{b['gold_in_docs']:.3f}", f"{b['em_given_gold_in_docs']:.3f}")
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
