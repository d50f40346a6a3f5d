"""HFGenerator: its own decode loop must give what ``model.generate`` gives, with KV caches
kept between turns and finished rows cut out of the batch."""

import math
import random

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from tests.conftest import FIXTURES
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


def test_top_p_one_samples_as_without_a_nucleus_filter_and_draws_nothing_more(tok, model):
    """top_p 1.0 (the tiny world's) is the plain softmax draw: no warper, the same tokens, the same
    RNG state after, so runs stay bit-identical to before train.top_p existed."""
    gen = HFGenerator(model, tok, temperature=0.7, top_p=1.0)
    assert gen.top_p is None
    logits = torch.randn(64, len(tok), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(5)
    sampled, after = gen._sample(logits), torch.rand(1)
    torch.manual_seed(5)
    plain, plain_after = sample_categorical(torch.softmax(logits.float() / 0.7, -1)), torch.rand(1)
    assert torch.equal(sampled, plain) and torch.equal(after, plain_after)
    contexts = contexts_for(tok, 6)
    torch.manual_seed(3)
    default = HFGenerator(model, tok, temperature=0.7).generate(contexts, 8, keys=list(range(6)))
    torch.manual_seed(3)
    assert gen.generate(contexts, 8, keys=list(range(6))) == default


def test_top_p_samples_only_inside_the_nucleus(tok, model):
    # probs [0.5, 0.3, 0.15, 0.05]: the nucleus of 0.75 is {0, 1} (0.5 < 0.75 <= 0.8), drawn as 5 : 3
    gen = HFGenerator(model, tok, top_p=0.75)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(20000, 4)
    torch.manual_seed(0)
    freq = torch.bincount(gen._sample(logits), minlength=4).float() / 20000
    torch.testing.assert_close(freq, torch.tensor([0.625, 0.375, 0.0, 0.0]), atol=0.015, rtol=0)
    assert freq[2] == 0 and freq[3] == 0

    # through the decode loop: one token holding 97% > top_p 0.95 is the only one ever written;
    # without the filter the other 3% show up
    chosen = tok.convert_tokens_to_ids(tok.tokenize(" Velora")[0])
    assert chosen not in HFGenerator(model, tok).stop_ids
    runs = {}
    for top_p in (0.95, 1.0):
        g = HFGenerator(model, tok, top_p=top_p)
        step = g.step

        def dominated(ids, positions, valid, kv, step=step):
            logits = step(ids, positions, valid, kv).float()
            others = torch.cat([logits[:, :chosen], logits[:, chosen + 1:]], -1).logsumexp(-1)
            logits[:, chosen] = others + math.log(0.97 / 0.03)  # softmax: 0.97 on `chosen`
            return logits

        g.step = dominated
        torch.manual_seed(0)
        runs[top_p] = [t for row in g.generate(contexts_for(tok, 8), 24) for t in row]
    assert set(runs[0.95]) == {chosen} and len(runs[0.95]) == 8 * 24
    assert any(t != chosen for t in runs[1.0])


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


QWEN = FIXTURES / "qwen2.5"


class CountingTokenizer:
    """A tokenizer whose ``decode`` calls are recorded (everything else passes through)."""

    def __init__(self, tokenizer):
        self._tokenizer, self.decoded = tokenizer, []

    def decode(self, ids, **kwargs):
        self.decoded.append(list(ids))
        return self._tokenizer.decode(ids, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def _adversarial_pieces(qwen) -> list[list[int]]:
    """Token id runs around the stop strings: whole, split into pieces or single characters,
    truncated, doubled, after multi-byte characters, glued to other text."""
    def enc(text):
        return qwen(text, add_special_tokens=False)["input_ids"]

    pieces = []
    for tag in ("</search>", "</answer>"):
        pieces += [enc(tag), enc(" " + tag), enc(tag[:-1]), enc(tag[1:]), enc(tag + ">"), enc("x" + tag + "y"),
                   [i for c in tag for i in enc(c)],  # one token per character
                   enc(tag[:2]) + enc(tag[2:-1]) + enc(tag[-1]), enc(tag[:4]) + enc(tag[4:])]
    pieces += [enc(t) for t in ("<", "</", "/", ">", "></", ">\n", "\">", "search", "answer", " search>",
                                "é", "日本", "😀", "<search>", "<answer>", "</ search>", "</Search>")]
    pieces += [enc("😀")[:1], enc("日本")[-1:]]  # lone bytes of a multi-byte character
    return [p for p in pieces if p]


def test_stop_strings_are_found_in_the_tail_as_by_decoding_the_whole_text():
    """A tokenizer without single-token tags (the real Qwen2.5 one: ``</search>`` is ``</``
    ``search`` ``>``): the decoded-tail rule stops every sequence where decoding the whole new
    text each step would, over random and adversarial sequences, stop strings split across
    tokens; and it decodes only short tails ending in a token that can close a stop string."""
    if not QWEN.is_dir():
        pytest.skip(f"the Qwen2.5 tokenizer fixture is not at {QWEN} (../shared/fixtures, see its README)")
    from transformers import AutoTokenizer

    qwen = AutoTokenizer.from_pretrained(str(QWEN))
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(qwen), hidden_size=8, num_hidden_layers=1,
                                         num_attention_heads=1, num_key_value_heads=1, intermediate_size=8))
    gen = HFGenerator(model, qwen)
    assert gen.stop_strings == ["</search>", "</answer>"] and gen.stop_ids == [qwen.eos_token_id]
    counting = gen.tokenizer = CountingTokenizer(qwen)
    max_new = 10_000

    def full_rule(ids):
        text = qwen.decode(ids)
        return ids[-1] in gen.stop_ids or len(ids) >= max_new or any(s in text for s in gen.stop_strings)

    pieces = _adversarial_pieces(qwen)
    rng = random.Random(0)
    stopped_on_string = split_across = 0
    for _ in range(400):
        ids = []
        while len(ids) < 60:
            if rng.random() < 0.4:
                ids += rng.choice(pieces)
            else:
                ids += [rng.randrange(qwen.vocab_size)]  # any ordinary token, byte pieces included
        for t in range(1, len(ids) + 1):
            expected = full_rule(ids[:t])
            assert gen._stops(ids[:t], max_new) == expected, (ids[:t], qwen.decode(ids[:t]))
            if expected:
                if ids[t - 1] not in gen.stop_ids:
                    stopped_on_string += 1
                    last = qwen.decode(ids[t - 1:t])
                    split_across += not any(s in last for s in gen.stop_strings)
                break
    assert stopped_on_string > 150 and split_across > 100  # the comparison saw both kinds of stops
    tails = [d for d in counting.decoded if len(d) > 1]
    assert tails and all(len(d) <= len("</answer>") and ">" in qwen.decode(d[-1:]) for d in tails)


def test_single_token_tags_stop_on_ids_without_decoding(tok, model):
    """The tiny pipeline's tokenizer has the tags as tokens: stops are ids, nothing is decoded."""
    gen = HFGenerator(model, tok, do_sample=False)
    assert gen.stop_strings == []
    counting = gen.tokenizer = CountingTokenizer(tok)
    search_end = tok.convert_tokens_to_ids("</search>")
    assert not gen._stops([5, 6], 10) and gen._stops([5, search_end], 10) and gen._stops([5, 6], 2)
    gen.generate([tok("Where was Kadmir born?")["input_ids"]] * 2, 12)
    assert counting.decoded == []
