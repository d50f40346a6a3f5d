"""Answer extraction, SQuAD-style normalization, exact match, substring exact match and F1.

Three answer metrics, each the max over the gold aliases, on normalized text:

- ``em`` (``exact_match``): strict, the prediction equals a gold alias;
- ``substring_em`` (``substring_exact_match``): a gold alias is contained in the prediction,
  what the ZeroSearch / Search-R1 reference code reports as "EM" in its paper tables;
- ``f1`` (``f1_score``): word-level F1, the paper's default training reward.

Rewards are plain callables ``f(completions, golden_answers) -> list[float]`` registered by
name (``get_reward``).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def extract_answer(text: str) -> str | None:
    """The content of the last ``<answer>...</answer>`` block, stripped; None when absent."""
    matches = _ANSWER_RE.findall(text)
    return matches[-1].strip() if matches else None


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES_RE.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str | None, golden_answers: Sequence[str]) -> float:
    """1.0 when the normalized prediction equals a normalized gold alias, else 0.0."""
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golden_answers))


def substring_exact_match(prediction: str | None, golden_answers: Sequence[str]) -> float:
    """1.0 when a normalized gold alias occurs in the normalized prediction, else 0.0 (plain
    string containment, as the reference's check: gold "paris" is in "paris france" and
    also in "parison"). A gold alias that normalizes to the empty string never counts (the
    empty string is in every prediction)."""
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction)
    return float(any(gold and gold in pred for gold in (normalize_answer(g) for g in golden_answers)))


def _f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str | None, golden_answers: Sequence[str]) -> float:
    """Word-level F1 between normalized prediction and gold, max over aliases."""
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction).split()
    return max((_f1(pred, normalize_answer(g).split()) for g in golden_answers), default=0.0)


RewardFn = Callable[[Sequence[str], Sequence[Sequence[str]]], list[float]]
_METRICS = {"em": exact_match, "substring_em": substring_exact_match, "f1": f1_score}
# The answer metrics every evaluation reports, in table order.
ANSWER_METRICS = ("em", "substring_em", "f1")
# How tables and plots name them.
METRIC_LABELS = {"em": "strict EM", "substring_em": "substring EM", "f1": "F1"}


def answer_scores(prediction: str | None, golden_answers: Sequence[str]) -> dict[str, float]:
    """Every answer metric of one prediction: ``{"em", "substring_em", "f1"}``."""
    return {name: _METRICS[name](prediction, golden_answers) for name in ANSWER_METRICS}


def get_reward(name: str) -> RewardFn:
    """A batched outcome reward by name: scores ``extract_answer(completion)`` against gold."""
    if name not in _METRICS:
        raise ValueError(f"unknown reward {name!r}; known: {sorted(_METRICS)}")
    metric = _METRICS[name]

    def reward(completions: Sequence[str], golden_answers: Sequence[Sequence[str]]) -> list[float]:
        return [metric(extract_answer(c), g) for c, g in zip(completions, golden_answers, strict=True)]

    reward.__name__ = name
    return reward
