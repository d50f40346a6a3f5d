"""The rollout state machine, with a scripted fake policy (exact masks) and the tiny model."""

import pytest
import torch

from zerosearch.agent.rollout import RolloutSettings, run_rollouts
from zerosearch.lm.generation import HFGenerator
from zerosearch.lm.models import train_tokenizer
from zerosearch.protocol import (
    INVALID_ACTION,
    Doc,
    information_block,
    parse_action,
    policy_prompt,
)


@pytest.fixture(scope="module")
def tok():
    texts = ["Where was Kadmir born? Velora is a city. Kadmir Ostavel was born in Velora.",
             "I need the birthplace. The answer is Velora. Zandoria country capital."] * 30
    return train_tokenizer(texts, vocab_size=600)


class ScriptedPolicy:
    """Answers each context with the next scripted turn of its trajectory (by prompt)."""

    def __init__(self, tok, scripts):
        self.tok, self.scripts, self.calls = tok, scripts, []

    def generate(self, contexts, max_new_tokens, keys=None):
        self.calls.append(len(contexts))
        out = []
        for ctx in contexts:
            text = self.tok.decode(ctx)
            key = next(q for q in self.scripts if f"Question: {q}\n" in text)
            turn = self.scripts[key].pop(0)
            out.append(self.tok(turn, add_special_tokens=False)["input_ids"][:max_new_tokens])
        return out


class RecordingEngine:
    def __init__(self, noisy=False):
        self.calls, self.noisy = [], noisy

    def search(self, queries, *, questions=None, answers=None, step=0):
        self.calls.append((list(queries), list(questions), step))
        return [[Doc(f"T{q}", f"about {q}", noisy=self.noisy)] for q in queries]


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_masks_are_exactly_the_policy_tokens(tok):
    scripts = {
        "Q1": ["<think> x </think><search> Velora </search>", "<answer> Velora </answer>"],
        "Q2": ["I am confused", "<answer> Zandoria </answer>"],
        "Q3": ["<answer> Kadmir </answer>"],
    }
    engine = RecordingEngine(noisy=True)
    batch = run_rollouts(ScriptedPolicy(tok, {k: list(v) for k, v in scripts.items()}), tok, engine,
                         ["Q1", "Q2", "Q3"], [["Velora"], ["Zandoria"], ["x"]],
                         RolloutSettings(max_search_turns=3, max_response_tokens=64, max_obs_tokens=512), step=7)
    # Q1: turn (policy) + docs (env) + turn (policy)
    obs = ids(tok, information_block([Doc("TVelora", "about Velora", noisy=True)]))
    t1, t2 = ids(tok, scripts["Q1"][0]), ids(tok, scripts["Q1"][1])
    expected_q1 = [(i, 1) for i in t1] + [(i, 0) for i in obs] + [(i, 1) for i in t2]
    # Q2: invalid turn (policy) + corrective message (env) + answer (policy)
    bad, fix, ans = ids(tok, scripts["Q2"][0]), ids(tok, INVALID_ACTION), ids(tok, scripts["Q2"][1])
    expected_q2 = [(i, 1) for i in bad] + [(i, 0) for i in fix] + [(i, 1) for i in ans]
    for row, expected, question in ((0, expected_q1, "Q1"), (1, expected_q2, "Q2")):
        p = int(batch.prompt_lengths[row])
        assert p == len(ids(tok, policy_prompt(question)))
        n = p + len(expected)
        assert batch.input_ids[row, p:n].tolist() == [i for i, _ in expected]
        assert batch.loss_mask[row, p:n].tolist() == [m for _, m in expected]
        assert batch.loss_mask[row, :p].sum() == 0 and batch.loss_mask[row, n:].sum() == 0
        assert batch.attention_mask[row].sum() == n
    assert batch.answers == ["Velora", "Zandoria", "Kadmir"]
    # the response mask (the ablation without state masking) adds the observation and the
    # corrective message, never the prompt or padding; trained_mask picks by the switch
    for row, expected in ((0, expected_q1), (1, expected_q2)):
        p = int(batch.prompt_lengths[row])
        n = p + len(expected)
        assert batch.response_mask[row].tolist() == [0] * p + [1] * len(expected) + [0] * (batch.input_ids.shape[1] - n)
    assert torch.equal(batch.response_mask, batch.attention_mask * (torch.arange(batch.input_ids.shape[1])
                                                                    >= batch.prompt_lengths[:, None]))
    assert batch.trained_mask(True) is batch.loss_mask and batch.trained_mask(False) is batch.response_mask
    observed = batch.response_mask - batch.loss_mask  # exactly the tokens the environment wrote
    assert observed.min() == 0 and observed[0].sum() == len(obs) and observed[1].sum() == len(fix)
    assert observed[2].sum() == 0  # Q3 answered at once: nothing to unmask
    assert batch.num_searches.tolist() == [1, 0, 0]
    assert [t.invalid_actions for t in batch.trajectories] == [0, 1, 0]
    assert batch.trajectories[0].noisy == [True]
    # one batched engine call, with the step and the original question
    assert engine.calls == [(["Velora"], ["Q1"], 7)]
    stats = batch.stats()
    assert stats["searches_per_trajectory"] == pytest.approx(1 / 3)
    assert stats["noisy_fraction"] == 1.0 and stats["answered_fraction"] == 1.0


def test_all_pending_queries_go_in_one_call_per_turn_and_max_turns_stops(tok):
    scripts = {q: ["<search> a </search>"] * 5 for q in ("Q1", "Q2", "Q3")}
    engine = RecordingEngine()
    policy = ScriptedPolicy(tok, scripts)
    batch = run_rollouts(policy, tok, engine, ["Q1", "Q2", "Q3"], [["a"]] * 3,
                         RolloutSettings(max_search_turns=1, max_response_tokens=64, max_obs_tokens=512))
    # one batched call per turn, none after the last turn (nobody would read those documents)
    assert [len(c[0]) for c in engine.calls] == [3]
    assert policy.calls == [3, 3]
    assert batch.answers == [None, None, None]
    assert all(t.turns == 2 and t.searches == 1 for t in batch.trajectories)
    # the last turn's search is the final (trained) text: nothing is appended after it
    assert all(batch.loss_mask[i, batch.attention_mask[i].sum() - 1] == 1 for i in range(3))


def test_first_action_of_a_turn_wins_and_parse_action():
    assert parse_action("<search> a </search><answer> b </answer>") == ("search", "a")
    assert parse_action("<think>..</think>\n<answer>\n X \n</answer>") == ("answer", "X")
    assert parse_action("<search> unclosed") is None
    assert parse_action("<search>a</answer>") is None


def test_observations_are_truncated_to_the_budget(tok):
    class LongDocs:
        def search(self, queries, **_):
            return [[Doc("T", "Velora " * 300)] for _ in queries]

    scripts = {"Q1": ["<search> Velora </search>", "<answer> V </answer>"]}
    batch = run_rollouts(ScriptedPolicy(tok, scripts), tok, LongDocs(), ["Q1"], [["V"]],
                         RolloutSettings(max_search_turns=2, max_response_tokens=64, max_obs_tokens=40))
    t = batch.trajectories[0]
    assert t.truncated_observations == 1
    obs_len = int((batch.loss_mask[0] == 0).sum() - batch.prompt_lengths[0] - (batch.attention_mask[0] == 0).sum())
    assert obs_len == 40
    assert tok.decode(t.response_ids).count("</information>") == 1


def test_real_tiny_model_rollout_shapes_and_masks(tok):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, intermediate_size=64,
                                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))
    gen = HFGenerator(model, tok, temperature=1.0)
    batch = run_rollouts(gen, tok, RecordingEngine(), ["Where was Kadmir born?"] * 4, [["Velora"]] * 4,
                         RolloutSettings(max_search_turns=1, max_response_tokens=12, max_obs_tokens=64))
    b, length = batch.input_ids.shape
    assert b == 4 and batch.loss_mask.shape == (b, length)
    for i, t in enumerate(batch.trajectories):
        assert 1 <= t.turns <= 2
        policy_tokens = batch.loss_mask[i].sum().item()
        assert 1 <= policy_tokens <= 2 * 12
        assert policy_tokens == sum(t.loss_mask)
        # every masked-in token is inside the attended region and after the prompt
        assert (batch.loss_mask[i] <= batch.attention_mask[i]).all()
        assert batch.loss_mask[i, : int(batch.prompt_lengths[i])].sum() == 0


def test_a_trajectory_that_would_outgrow_the_context_window_stops(tok):
    def scripts():
        return {"Q1": ["<search> a </search>"] * 5}

    batch = run_rollouts(ScriptedPolicy(tok, scripts()), tok, RecordingEngine(), ["Q1"], [["a"]],
                         RolloutSettings(max_search_turns=4, max_response_tokens=16, max_obs_tokens=512,
                                         max_context_tokens=10_000))
    unlimited = batch.trajectories[0]
    assert unlimited.turns == 5 and not unlimited.hit_context_limit
    window = len(unlimited.prompt_ids) + 40
    batch = run_rollouts(ScriptedPolicy(tok, scripts()), tok, RecordingEngine(), ["Q1"], [["a"]],
                         RolloutSettings(max_search_turns=4, max_response_tokens=16, max_obs_tokens=512,
                                         max_context_tokens=window))
    t = batch.trajectories[0]
    assert t.hit_context_limit and t.turns < 5 and t.answer is None
    assert len(t.context) + 16 > window and batch.stats()["context_limit_stops"] == 1


def test_the_turn_budget_counts_search_turns_then_one_answer_turn(tok):
    """``max_search_turns`` N (the reference's max_turns): N searches get documents, then one
    more generation for the final answer; a search there gets nothing."""
    for n in (0, 1, 3):
        engine = RecordingEngine()
        policy = ScriptedPolicy(tok, {"Q1": ["<search> a </search>"] * (n + 2)})
        batch = run_rollouts(policy, tok, engine, ["Q1"], [["a"]],
                             RolloutSettings(max_search_turns=n, max_response_tokens=16, max_obs_tokens=512))
        t = batch.trajectories[0]
        assert len(policy.calls) == n + 1 and t.turns == n + 1
        assert len(engine.calls) == n and t.searches == n and t.answer is None
    # an answer before the budget ends the trajectory
    policy = ScriptedPolicy(tok, {"Q1": ["<search> a </search>", "<answer> Velora </answer>"]})
    batch = run_rollouts(policy, tok, RecordingEngine(), ["Q1"], [["a"]],
                         RolloutSettings(max_search_turns=5, max_response_tokens=16, max_obs_tokens=512))
    assert batch.answers == ["Velora"] and batch.trajectories[0].turns == 2


def test_the_reference_layouts_of_documents_and_the_corrective_message(tok):
    from zerosearch.protocol import CORRECTIVE_MESSAGES, INVALID_ACTION_REFERENCE

    scripts = {"Q1": ["<search> Velora </search>", "no action here", "<answer> Velora </answer>"]}
    settings = RolloutSettings(max_search_turns=2, max_response_tokens=64, max_obs_tokens=512,
                               corrective_message="reference", information_layout="reference")
    batch = run_rollouts(ScriptedPolicy(tok, scripts), tok, RecordingEngine(), ["Q1"], [["a"]], settings)
    t = batch.trajectories[0]
    block = information_block([Doc("TVelora", "about Velora")], "reference")
    assert block == "\n\n<information>Doc 1: (TVelora) about Velora</information>\n\n"
    assert "previous action was invalid" in INVALID_ACTION_REFERENCE and "try again" in INVALID_ACTION_REFERENCE
    assert CORRECTIVE_MESSAGES["ours"] == INVALID_ACTION
    expected = (ids(tok, "<search> Velora </search>") + ids(tok, block) + ids(tok, "no action here")
                + ids(tok, INVALID_ACTION_REFERENCE) + ids(tok, "<answer> Velora </answer>"))
    assert t.response_ids == expected
    mask = ([1] * len(ids(tok, "<search> Velora </search>")) + [0] * len(ids(tok, block))
            + [1] * len(ids(tok, "no action here")) + [0] * len(ids(tok, INVALID_ACTION_REFERENCE))
            + [1] * len(ids(tok, "<answer> Velora </answer>")))
    assert t.loss_mask == mask and t.answer == "Velora"


def test_settings_logged_with_the_old_turn_count_load_as_the_same_rollouts():
    """A registered model's ``rollout_settings`` from before: ``max_turns`` counted generation
    turns (the answer turn included) and the layouts did not exist (ours)."""
    from pathlib import Path

    from zerosearch.config import load_config

    old = {"max_turns": 4, "max_response_tokens": 96, "max_obs_tokens": 512, "max_context_tokens": 1024,
           "chat": False}
    settings = RolloutSettings.from_dict(old)
    assert settings.max_search_turns == 3
    assert (settings.corrective_message, settings.information_layout) == ("ours", "ours")
    tiny = load_config(Path(__file__).resolve().parents[1] / "params.yaml")
    assert settings == RolloutSettings.from_config(tiny)  # the tiny world's settings, unchanged
    assert RolloutSettings.from_dict(settings.to_dict()) == settings
    with pytest.raises(ValueError, match="unknown field"):
        RolloutSettings.from_dict({**settings.to_dict(), "max_turns": 4, "extra": 1})
