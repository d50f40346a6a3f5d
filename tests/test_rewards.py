import pytest

from zerosearch.rewards import (
    answer_scores,
    exact_match,
    extract_answer,
    f1_score,
    get_reward,
    normalize_answer,
    substring_exact_match,
)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  a   cat, an apple and THE end. ", "cat apple and end"),
        ("theory of the atheist", "theory of atheist"),  # articles only as whole words
        ("Zoë’s café", "zoë’s café"),  # unicode letters kept; ’ is not ASCII punctuation
        ("", ""),
        ("...", ""),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_extract_answer_takes_last_block_and_strips():
    text = "<think>x</think><answer> first </answer> more <answer>\n Velora \n</answer>"
    assert extract_answer(text) == "Velora"
    assert extract_answer("<answer></answer>") == ""
    assert extract_answer("no tags here") is None
    assert extract_answer("<answer>unclosed") is None


def test_exact_match_over_aliases():
    assert exact_match("the Velora", ["Velora City", "Velora"]) == 1.0
    assert exact_match("Velora city.", ["velora city"]) == 1.0
    assert exact_match("Velora river", ["Velora"]) == 0.0
    assert exact_match(None, ["x"]) == 0.0
    assert exact_match("", ["x"]) == 0.0
    assert exact_match("", [""]) == 1.0  # both normalize to the empty string


@pytest.mark.parametrize(
    "prediction, gold, expected",
    [
        ("Velora", ["Velora"], 1.0),
        ("The city of Velora, in the north.", ["velora"], 1.0),  # contained after normalization
        ("Kadmir Ostavel", ["Ostavel"], 1.0),  # strict EM would say 0
        ("Ostavel", ["Kadmir Ostavel"], 0.0),  # the gold must be in the prediction, not the reverse
        ("U.S.A.", ["usa"], 1.0),  # punctuation dropped on both sides
        ("the Velora river", ["A Velora"], 1.0),  # articles dropped: "velora" in "velora river"
        ("Parison", ["Paris"], 1.0),  # plain string containment, not whole words (as the reference)
        ("Lyon", ["Paris", "Lyon"], 1.0),  # max over aliases
        ("Lyon", ["Paris", "Nice"], 0.0),
        ("Velora", ["the", "..."], 0.0),  # a gold that normalizes to "" is never contained
        ("", ["x"], 0.0),
        (None, ["Velora"], 0.0),
    ],
)
def test_substring_exact_match(prediction, gold, expected):
    assert substring_exact_match(prediction, gold) == expected


def test_answer_scores_gives_all_three_metrics():
    assert answer_scores("Kadmir Ostavel, painter", ["Kadmir Ostavel"]) == {
        "em": 0.0, "substring_em": 1.0, "f1": pytest.approx(0.8)}
    assert answer_scores(None, ["x"]) == {"em": 0.0, "substring_em": 0.0, "f1": 0.0}


def test_f1_hand_computed():
    # pred tokens: [kadmir, ostavel, painter]; gold: [kadmir, ostavel] -> p=2/3, r=1 -> 0.8
    assert f1_score("Kadmir Ostavel, painter", ["Kadmir Ostavel"]) == pytest.approx(0.8)
    # max over aliases: the second alias matches exactly
    assert f1_score("Ostavel", ["Kadmir Ostavel", "Ostavel"]) == 1.0
    # repeated tokens count once per occurrence in both
    # "a" is an article: pred [b, b] vs gold [b, b, c] -> p=1, r=2/3 -> 0.8
    assert f1_score("a b b", ["b b c"]) == pytest.approx(0.8)
    assert f1_score("", ["x"]) == 0.0
    assert f1_score(None, ["x"]) == 0.0
    assert f1_score("the", ["a"]) == 0.0  # both empty after normalization: no overlap


def test_get_reward_batches_and_rejects_unknown():
    f1 = get_reward("f1")
    em = get_reward("em")
    outs = ["<answer>Velora</answer>", "<answer>Velora river</answer>", "no answer"]
    gold = [["Velora"], ["Velora"], ["Velora"]]
    assert em(outs, gold) == [1.0, 0.0, 0.0]
    assert f1(outs, gold) == [1.0, pytest.approx(2 / 3), 0.0]
    assert get_reward("substring_em")(outs, gold) == [1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="known: \\['em', 'f1', 'substring_em'\\]"):
        get_reward("bleu")
