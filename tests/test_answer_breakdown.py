"""bench/answer_breakdown.py splits an agent's misses into searches that found no gold answer
and answers that missed one the documents held."""

import sys

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import answer_breakdown


def _record(method, em, docs, prediction="x", searches=1):
    return {"method": method, "em": em, "searches": searches, "golden_answers": ["Velora City", "Velora"],
            "prediction": prediction, "trajectory": f"<search> q </search>\n<information>{docs}</information>\n<answer>"}


def test_misses_split_into_search_and_reading():
    records = [_record("agent", 1.0, "Doc 1: born in Velora."),        # found, right
               _record("agent", 0.0, "Doc 1: born in VELORA city."),   # found (normalized), wrong
               _record("agent", 0.0, "Doc 1: nothing here.", searches=0),  # not found
               _record("rag", 1.0, "Doc 1: Velora")]                   # another method
    b = answer_breakdown.breakdown(records, "agent")
    assert b == {"questions": 3, "em": 1 / 3, "searched": 2 / 3, "gold_in_docs": 2 / 3, "em_given_gold_in_docs": 0.5}
    assert answer_breakdown.breakdown(records, "base_agent") == {}
