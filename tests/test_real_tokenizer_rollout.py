"""Rollouts with real parts on CPU: the real Qwen2.5 tokenizers (../shared/fixtures), a random-init
model of the real Qwen2.5 architecture (a few layers, the real 151k vocabulary) under the real
``HFGenerator``, the real Search-R1 parquet and FlashRAG files through the hub loaders.

The random model cannot write the protocol by itself, so its next-token logits get a large bias
toward a scripted token (``ScriptedHF``): everything else -- the decode loop, KV caches kept
between turns, stop strings (every tag is several Qwen tokens), the rollout's masks -- is the
code that trains.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import FIXTURES
from zerosearch.agent.rollout import RolloutSettings, run_rollouts
from zerosearch.data.hub import load_benchmark, load_zerosearch_split
from zerosearch.data.schema import read_corpus, read_qa_parquet, write_qa_parquet
from zerosearch.lm.generation import HFGenerator
from zerosearch.protocol import (
    CORRECTIVE_MESSAGES,
    INFORMATION_LAYOUTS,
    encode_prompt,
    information_block,
    policy_prompt,
    prompt_messages,
    stop_markers,
    uses_chat_template,
)
from zerosearch.search.bm25 import BM25Engine

QWEN, QWEN_BASE = FIXTURES / "qwen2.5", FIXTURES / "qwen2.5-base"
PARQUET = FIXTURES / "data" / "searchr1_nq_search_sample.parquet"
FLASHRAG_NQ = FIXTURES / "data" / "flashrag_quickstart_nq_test.jsonl"
FLASHRAG_CORPUS = FIXTURES / "data" / "flashrag_sample_data.jsonl"


def need(*paths: Path) -> None:
    for p in paths:
        if not p.exists():
            pytest.skip(f"real fixture {p} is absent (../shared/fixtures, see its README)")


def load_tokenizer(path: Path):
    need(path)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))  # tokenizer.json / vocab+merges need tokenizers >= 0.20


@pytest.fixture(scope="module")
def qwen():
    return load_tokenizer(QWEN)


@pytest.fixture(scope="module")
def qwen_base():
    return load_tokenizer(QWEN_BASE)


@pytest.fixture(scope="module")
def model():
    """Random init from a scaled-down copy of the real Qwen2.5-0.5B config: same architecture
    (qwen2, tied embeddings, GQA), 2 layers, hidden 64, the real vocabulary."""
    need(QWEN)
    from transformers import Qwen2Config, Qwen2ForCausalLM

    raw = json.loads((QWEN / "config.json").read_text())
    raw = {k: v for k, v in raw.items() if k not in ("_name_or_path", "architectures", "torch_dtype",
                                                     "transformers_version")}
    raw.update(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
               num_key_value_heads=2, max_window_layers=2)
    config = Qwen2Config(**raw)
    assert config.vocab_size == 151936 and config.model_type == "qwen2" and config.tie_word_embeddings
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).eval()


@pytest.fixture(scope="module")
def engine():
    """BM25 over 1000 real wiki passages (FlashRAG format: ``contents`` = '"Title"\\ntext')."""
    need(FLASHRAG_CORPUS)
    docs = []
    for rec in read_corpus_contents(FLASHRAG_CORPUS):
        title, _, text = rec["contents"].partition("\n")
        docs.append({"id": rec["id"], "title": title.strip('"'), "text": text})
    return BM25Engine.build(docs, top_k=3)


def read_corpus_contents(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class ScriptedHF(HFGenerator):
    """The real ``HFGenerator`` whose model's logits get +1e4 on the script's next token. Every
    context of a call follows the same turn text (then EOS), so the bias needs no row bookkeeping;
    the generator must stop on its own stop strings, wherever the script goes on past them."""

    def __init__(self, model, tokenizer, turns: list[str]):
        super().__init__(model, tokenizer, do_sample=True)
        self.turns, self.outputs, self.contexts = list(turns), [], []
        real_step = self.step

        def step(ids, positions, valid, kv):
            logits = real_step(ids, positions, valid, kv)
            k = self._k
            self._k += 1
            forced = self._target[k] if k < len(self._target) else tokenizer.eos_token_id
            logits[:, forced] += 1e4
            return logits

        self.step = step

    def generate(self, contexts, max_new_tokens, keys=None):
        turn = self.turns.pop(0)
        self._target, self._k = self.tokenizer(turn, add_special_tokens=False)["input_ids"], 0
        self.contexts.append([list(c) for c in contexts])
        out = super().generate(contexts, max_new_tokens, keys=keys)
        self.outputs.append(out)
        return out


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


# turn 1 goes on past </search> (the stop must cut it), turn 2 has no action (ends with EOS),
# turn 3 answers and goes on past </answer>
TURNS = [("<think> I need who won the first physics prize. </think>\n<search> first nobel prize in physics "
          "</search> and then <answer> never </answer>"),
         "Hmm, let me think about it without any tag",
         "<think> Doc 1 says it. </think>\n<answer> Wilhelm Conrad Röntgen </answer> Extra words."]


def test_protocol_tags_are_several_qwen_tokens(qwen, qwen_base):
    for tok in (qwen, qwen_base):
        assert ids(tok, "</search>") == [522, 1836, 29] and len(ids(tok, "<answer>")) == 3
        assert stop_markers(tok) == ([tok.eos_token_id], ["</search>", "</answer>"])  # stop strings


@pytest.mark.parametrize("which,layout", [("instruct", "ours"), ("base", "reference")])
def test_multi_turn_rollout_stops_masks_and_chat_template(which, layout, qwen, qwen_base, model, engine):
    need(PARQUET)
    import pyarrow.parquet as pq

    tok = qwen if which == "instruct" else qwen_base
    rows = pq.read_table(PARQUET).slice(0, 2).to_pylist()
    prompts = [[{"role": m["role"], "content": m["content"]} for m in r["prompt"]] for r in rows]
    questions = [r["question"] for r in rows for _ in range(2)]  # two prompts, two rollouts each
    group_prompts = [p for p in prompts for _ in range(2)]
    settings = RolloutSettings(max_search_turns=2, max_response_tokens=64, max_obs_tokens=2048,
                               max_context_tokens=4096, chat="auto", corrective_message=layout,
                               information_layout=layout)
    gen = ScriptedHF(model, tok, TURNS)
    batch = run_rollouts(gen, tok, engine, questions, [r["golden_answers"] for r in rows for _ in range(2)],
                         settings, prompts=group_prompts)

    # the prompt: the row's own messages through the tokenizer's chat template, as the reference
    assert uses_chat_template(tok, "auto")  # the base tokenizer ships a template too
    for t, messages in zip(batch.trajectories, group_prompts, strict=True):
        rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert t.prompt_ids == ids(tok, rendered)  # Qwen adds no BOS: the template's text, nothing else
        text = tok.decode(t.prompt_ids)
        assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
        assert f"<|im_start|>user\n{messages[0]['content']}<|im_end|>" in text
        assert text.count("Question: ") == 1 and messages[0]["content"].rstrip().endswith("?")
    assert gen.contexts[0] == [t.prompt_ids for t in batch.trajectories]  # what the model was fed

    # stops land right after the closing tag; the scripted text beyond it is never generated
    first, second, third = gen.outputs
    for out in first:
        assert tok.decode(out).endswith("</search>") and "and then" not in tok.decode(out)
    for out in second:
        assert out[-1] == tok.eos_token_id
    for out in third:
        assert tok.decode(out).endswith("</answer>") and "Extra" not in tok.decode(out)

    before, after = INFORMATION_LAYOUTS[layout]
    corrective = ids(tok, CORRECTIVE_MESSAGES[layout])
    query = "first nobel prize in physics"
    docs = engine.search([query])[0]
    block = ids(tok, information_block(docs, layout))
    for i, t in enumerate(batch.trajectories):
        assert (t.turns, t.searches, t.invalid_actions) == (3, 1, 1)
        assert t.answer == "Wilhelm Conrad Röntgen"
        # response = sampled turn, documents, sampled turn, corrective message, sampled turn
        assert t.response_ids == first[i] + block + second[i] + corrective + third[i]
        assert t.loss_mask == ([1] * len(first[i]) + [0] * len(block) + [1] * len(second[i])
                               + [0] * len(corrective) + [1] * len(third[i]))
        info = tok.decode(block)
        assert info.startswith(before) and info.endswith(after) and "Doc 1: " in info
        # the padded batch: 1 exactly on sampled tokens, never on the prompt
        row_mask = batch.loss_mask[i]
        p = int(batch.prompt_lengths[i])
        assert row_mask[:p].sum() == 0 and int(row_mask.sum()) == len(first[i] + second[i] + third[i])
        assert batch.input_ids[i, p:p + len(t.response_ids)].tolist() == t.response_ids
    # turn 2 was fed the trajectory so far: the KV cache of turn 1 plus the documents
    assert gen.contexts[1][0] == batch.trajectories[0].prompt_ids + first[0] + block


def test_observations_cut_to_budget_keep_the_layouts_closing(qwen, model, engine):
    settings = RolloutSettings(max_search_turns=1, max_response_tokens=64, max_obs_tokens=40,
                               information_layout="reference")
    gen = ScriptedHF(model, qwen, TURNS[:1] + TURNS[2:])
    batch = run_rollouts(gen, qwen, engine, ["who got the first nobel prize in physics?"], [["x"]], settings)
    t = batch.trajectories[0]
    closing = ids(qwen, INFORMATION_LAYOUTS["reference"][1])
    obs = t.response_ids[len(gen.outputs[0][0]):len(t.response_ids) - len(gen.outputs[1][0])]
    assert t.truncated_observations == 1 and len(obs) == 40 and obs[-len(closing):] == closing
    assert t.answer == "Wilhelm Conrad Röntgen"


@pytest.fixture(scope="module")
def bos_toks(qwen_base):
    return {template: bos_tokenizer(qwen_base, template) for template in (False, True)}


def bos_tokenizer(qwen_base, template: bool):
    """A Llama-3-style tokenizer: the Qwen2.5 base vocabulary plus ``<|begin_of_text|>``, which
    ``add_special_tokens=True`` puts first (TemplateProcessing); optionally a chat template that
    renders BOS itself, as Llama 3.2's does."""
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast

    backend = copy.deepcopy(qwen_base.backend_tokenizer)
    backend.add_special_tokens([AddedToken("<|begin_of_text|>", special=True, normalized=False)])
    bos = backend.token_to_id("<|begin_of_text|>")
    backend.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                           special_tokens=[("<|begin_of_text|>", bos)])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|begin_of_text|>",
                                  eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    if template:
        tok.chat_template = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}"
                             "<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>{% endfor %}"
                             "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
                             "{% endif %}")
    assert tok("hi", add_special_tokens=True)["input_ids"][0] == bos == tok.bos_token_id
    return tok


def test_a_bos_tokenizer_gets_its_bos_exactly_once(bos_toks, model, engine):
    """The prompt starts as the tokenizer expects: plain text gets BOS; a chat template that
    renders BOS gets no second one; documents and corrective messages never get one."""
    for template in (False, True):
        tok = bos_toks[template]
        bos = tok.bos_token_id
        assert uses_chat_template(tok, "auto") is template
        text = policy_prompt("who got the first nobel prize in physics?", tok, chat="auto")
        assert text.startswith("<|begin_of_text|>") is template
        prompt = encode_prompt(text, tok)
        assert prompt[0] == bos and prompt.count(bos) == 1 and prompt[1:] == ids(tok, text.removeprefix(
            "<|begin_of_text|>"))
        settings = RolloutSettings(max_search_turns=2, max_response_tokens=64, max_obs_tokens=2048, chat="auto")
        gen = ScriptedHF(model, tok, TURNS)
        batch = run_rollouts(gen, tok, engine, ["who got the first nobel prize in physics?"], [["x"]], settings)
        t = batch.trajectories[0]
        assert gen.contexts[0][0] == prompt == t.prompt_ids
        assert t.context.count(bos) == 1 and t.searches == 1 and t.invalid_actions == 1


def test_the_direct_method_prompts_with_one_bos_and_the_rows_prompt(bos_toks, model, monkeypatch):
    from zerosearch.agent.evaluation import predict_direct

    seen = []
    real = HFGenerator.generate
    monkeypatch.setattr(HFGenerator, "generate", lambda self, c, n, keys=None: seen.extend(c) or real(self, c, n))
    tok = bos_toks[False]
    messages = [{"role": "user", "content": "Answer briefly. Question: who wrote hamlet?\n"}]
    rows = [{"question": "who wrote hamlet?", "golden_answers": ["Shakespeare"], "prompt": messages},
            {"question": "who wrote hamlet?", "golden_answers": ["Shakespeare"]}]
    settings = RolloutSettings(max_search_turns=1, max_response_tokens=3, max_obs_tokens=64, chat="auto")
    predict_direct(model, tok, rows, settings)
    assert seen[0] == [tok.bos_token_id] + ids(tok, messages[0]["content"] + "<answer>")
    ours = prompt_messages("who wrote hamlet?")[0]["content"]
    assert seen[1] == [tok.bos_token_id] + ids(tok, ours + "<answer>")  # no row prompt: our template


def test_chat_prompt_modes(qwen_base, bos_toks):
    plain = bos_toks[False]
    assert uses_chat_template(qwen_base, "auto") and uses_chat_template(qwen_base, True)
    assert not uses_chat_template(qwen_base, False) and not uses_chat_template(plain, "auto")
    with pytest.raises(ValueError, match="no chat template"):
        uses_chat_template(plain, True)
    # without a template several messages render as their contents, a blank line apart
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U?"}]
    assert policy_prompt("ignored", plain, chat="auto", messages=msgs) == "S\n\nU?"


@pytest.fixture
def hub_dir(tmp_path):
    """A local directory laid out like the hub repos: the real Search-R1 parquet as the ZeroSearch
    train split, the real FlashRAG NQ questions as the nq benchmark."""
    need(PARQUET, FLASHRAG_NQ)
    d = tmp_path / "hub"
    (d / "nq").mkdir(parents=True)
    shutil.copyfile(PARQUET, d / "train.parquet")
    shutil.copyfile(FLASHRAG_NQ, d / "nq" / "test.jsonl")
    return d


def test_hub_loaders_keep_the_prompt_and_the_question_as_written(hub_dir, tmp_path):
    import pyarrow.parquet as pq

    raw = pq.read_table(PARQUET).to_pylist()
    rows, skipped = load_zerosearch_split("train", source=str(hub_dir))
    assert skipped == 0 and len(rows) == len(raw) == 500
    for row, r in zip(rows, raw, strict=True):
        assert row["question"] == r["question"].strip() and row["question"].endswith("?")
        assert row["prompt"] == [{"role": m["role"], "content": m["content"]} for m in r["prompt"]]
        assert f"Question: {row['question']}" in row["prompt"][0]["content"]
    bench, _ = load_benchmark("nq", source=str(hub_dir))
    assert len(bench) == 17 and all("prompt" not in b for b in bench)  # FlashRAG: our template
    assert bench[0]["question"] == "who got the first nobel prize in physics"  # as in the file: no "?"
    # the QA file keeps the prompt column; a file of rows without one has no such column
    write_qa_parquet(rows, tmp_path / "train.parquet")
    assert read_qa_parquet(tmp_path / "train.parquet") == rows
    write_qa_parquet(bench, tmp_path / "nq.parquet")
    assert "prompt" not in pq.read_schema(tmp_path / "nq.parquet").names
    assert read_qa_parquet(tmp_path / "nq.parquet") == bench


def test_the_data_stage_and_the_trainer_feed_the_policy_the_rows_prompt(hub_dir, tmp_path, monkeypatch,
                                                                       qwen_base, model, engine):
    """hub data from a local dir -> the data stage's train.parquet -> the trainer's rollout call:
    the prompts that reach the rollout are the rows' own, and the policy's first context is the
    chat-templated row prompt."""
    import types

    from tests.conftest import micro_config
    from zerosearch.rl import trainer as trainer_module
    from zerosearch.stages import data as data_stage

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"id": "0", "title": "Nobel", "text": "Röntgen won it."}) + "\n")
    cfg = micro_config(tmp_path, "data.source=hub", f"data.train_source={hub_dir}",
                       f"data.benchmarks_source={hub_dir}", "data.benchmarks=[nq]", "data.in_domain=[nq]",
                       f"data.corpus={corpus}", "base.chat_prompt=auto", "train.batch_prompts=3",
                       "train.group_size=2", "train.mini_batch_size=6", "train.micro_batch_size=6")
    data_stage.run(cfg)
    train = read_qa_parquet(cfg.path("data") / "train.parquet")
    assert len(train) == 500 and all(r["prompt"] for r in train)
    assert read_corpus(cfg.path("data") / "corpus.jsonl")[0]["title"] == "Nobel"

    seen = {}
    real = trainer_module.run_rollouts

    def recording(gen, tok, eng, questions, answers, settings, **kw):
        seen.update(questions=questions, prompts=kw["prompts"])
        return real(ScriptedHF(model, qwen_base, ["<answer> x </answer>"]), qwen_base, engine, questions, answers,
                    settings, **kw)

    monkeypatch.setattr(trainer_module, "run_rollouts", recording)
    acc = types.SimpleNamespace(process_index=0, num_processes=1, unwrap_model=lambda m: m,
                                state=types.SimpleNamespace(deepspeed_plugin=None))
    trainer = trainer_module.RLTrainer(cfg, None, train, checkpoint_dir=tmp_path / "ckpt", accelerator=acc)
    trainer.m = types.SimpleNamespace(policy=torch.nn.Linear(1, 1), tokenizer=qwen_base)
    monkeypatch.setattr(trainer, "generator", lambda policy: None)
    batch, group = trainer.rollout(0)
    sampled = trainer.sample_rows(0)
    assert seen["prompts"] == [sampled[i]["prompt"] for i in group] and len(group) == 6
    assert seen["questions"] == [sampled[i]["question"] for i in group]
    for t, i in zip(batch.trajectories, group, strict=True):
        rendered = qwen_base.apply_chat_template(sampled[i]["prompt"], tokenize=False, add_generation_prompt=True)
        assert t.prompt_ids == ids(qwen_base, rendered) and t.answer == "x"
