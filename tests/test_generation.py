"""HFGenerator: its own decode loop must give what ``model.generate`` gives, with KV caches
kept between turns and finished rows cut out of the batch."""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from zerosearch.lm.generation import HFGenerator, sample_categorical
from zerosearch.lm.models import left_pad, train_tokenizer


@pytest.fixture(scope="module")
def tok():
    texts = ["Where was Kadmir born? <search> Kadmir </search> <answer> Velora </answer> Velora is a city.",
             "Kadmir Ostavel was born in Velora. The answer is Velora. Zandoria country capital."] * 30
    return train_tokenizer(texts, vocab_size=400)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    m = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, intermediate_size=128, pad_token_id=tok.pad_token_id,
                                     eos_token_id=tok.eos_token_id))
    # Make the stop tags likely so rows stop at different lengths.
    with torch.no_grad():
        for t in ("</search>", "</answer>"):
            m.lm_head.weight[tok.convert_tokens_to_ids(t)] *= 4
    return m.eval()


def reference(model, gen: HFGenerator, contexts, max_new):
    """``model.generate`` greedy, cut after the first stop token."""
    ids, mask = left_pad(contexts, gen.pad_id)
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                         eos_token_id=gen.stop_ids, pad_token_id=gen.pad_id)[:, ids.shape[1]:].tolist()
    cut = []
    for row in out:
        stop = next((i for i, t in enumerate(row) if t in gen.stop_ids), None)
        cut.append(row[: stop + 1] if stop is not None else row)
    return cut


def contexts_for(tok, n):
    texts = ["Where was Kadmir born?", "Velora is a city. Where", "Zandoria", "The answer is"] * n
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts[:n]]


def test_greedy_equals_model_generate_over_two_turns_with_kept_caches(tok, model):
    gen = HFGenerator(model, tok, do_sample=False)
    contexts = contexts_for(tok, 8)
    first = gen.generate(contexts, 16, keys=list(range(8)))
    assert first == reference(model, gen, contexts, 16)
    assert len({len(x) for x in first}) > 1  # rows stopped at different lengths: some were cut out early
    assert sorted(gen._kept) == list(range(8))
    for i, kept in gen._kept.items():  # the cache covers exactly the tokens run through the model
        assert kept.tokens == contexts[i] + first[i][:-1]
        assert all(kv.shape[1] == len(kept.tokens) for kv in kept.kv)

    obs = tok(" Velora is a city in Zandoria.", add_special_tokens=False)["input_ids"]
    second_ctx = [c + f + obs[: 2 + i] for i, (c, f) in enumerate(zip(contexts, first))]  # different lengths
    assert gen.generate(second_ctx, 16, keys=list(range(8))) == reference(model, gen, second_ctx, 16)


def test_a_kept_cache_that_does_not_match_the_context_is_not_used(tok, model):
    gen = HFGenerator(model, tok, do_sample=False)
    contexts = contexts_for(tok, 4)
    gen.generate(contexts, 8, keys=["a", "b", "c", "d"])
    swapped = [contexts[1], contexts[0], contexts[3], contexts[2]]  # same keys, other trajectories
    assert [gen._kept[k].prefix_length(c) for k, c in zip("abcd", swapped)] == [0, 0, 0, 0]
    assert gen.generate(swapped, 8, keys=["a", "b", "c", "d"]) == reference(model, gen, swapped, 8)
    gen.generate(contexts[:2], 8, keys=["a", "b"])
    assert sorted(gen._kept) == ["a", "b"]  # keys not asked for are dropped


def test_no_keys_or_reuse_off_keeps_nothing(tok, model):
    gen = HFGenerator(model, tok, do_sample=False, reuse_cache=False)
    contexts = contexts_for(tok, 3)
    assert gen.generate(contexts, 8, keys=[0, 1, 2]) == reference(model, gen, contexts, 8)
    assert gen._kept == {}
    assert HFGenerator(model, tok, do_sample=False).generate(contexts, 8) == reference(model, gen, contexts, 8)


def test_sampling_is_seeded_and_respects_max_new_tokens(tok, model):
    gen = HFGenerator(model, tok, temperature=1.0, top_p=0.9)
    contexts = contexts_for(tok, 6)
    torch.manual_seed(3)
    a = gen.generate(contexts, 5, keys=list(range(6)))
    torch.manual_seed(3)
    b = gen.generate(contexts, 5, keys=list(range(6)))
    assert a == b
    assert all(1 <= len(x) <= 5 for x in a)
    assert all(x[-1] in gen.stop_ids or len(x) == 5 for x in a)


def test_the_transformers_forward_step_gives_the_same_turns(tok, model):
    from zerosearch.lm.kv_forward import transformers_step

    gen = HFGenerator(model, tok, do_sample=False)
    gen.step = transformers_step(model)  # the step for models without the Llama layout
    contexts = contexts_for(tok, 6)
    first = gen.generate(contexts, 12, keys=list(range(6)))
    assert first == reference(model, gen, contexts, 12)
    second = [c + f + [5, 6, 7] for c, f in zip(contexts, first)]
    assert gen.generate(second, 12, keys=list(range(6))) == reference(model, gen, second, 12)


def test_rows_with_the_same_context_are_prefilled_once(tok, model):
    gen = HFGenerator(model, tok, do_sample=False)
    prefill_rows = []
    step = gen.step

    def recording(ids, positions, valid, kv):
        if ids.shape[1] > 1:
            prefill_rows.append(ids.shape[0])
        return step(ids, positions, valid, kv)

    gen.step = recording
    contexts = contexts_for(tok, 4) * 3  # a group of 3 rollouts per prompt
    out = gen.generate(contexts, 10, keys=list(range(12)))
    assert prefill_rows == [4]
    assert out == reference(model, gen, contexts, 10)


def test_sample_categorical_draws_each_index_at_its_probability_and_never_a_zero_one():
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3, 0.0], [0.0, 0.0, 0.0, 0.0, 2.0]])  # row 2: unnormalized, last index
    torch.manual_seed(0)
    draws = torch.stack([sample_categorical(probs) for _ in range(20000)])
    assert draws.shape == (20000, 2)
    freq = torch.bincount(draws[:, 0], minlength=5).float() / len(draws)
    torch.testing.assert_close(freq, probs[0], atol=0.015, rtol=0)
    assert freq[1] == 0 and freq[4] == 0
    assert (draws[:, 1] == 4).all()


def test_sample_categorical_names_non_finite_probabilities():
    with pytest.raises(ValueError, match="not finite or sums to 0"):
        sample_categorical(torch.tensor([[0.5, float("nan")]]))
