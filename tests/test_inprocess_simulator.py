"""The in-process simulator (``simulator.backend: inprocess``): seeded per search call with an
RNG of its own, so two runs of one seed train identically and a run killed and resumed gives
the uninterrupted run's curve; the served path keeps its per-request seeds."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from tests.conftest import REPO, micro_config, micro_overrides, untimed
from zerosearch.data.schema import read_qa_parquet
from zerosearch.lm.generation import HFGenerator, sample_categorical
from zerosearch.lm.models import train_tokenizer
from zerosearch.search.factory import (
    needs_server,
    open_engine,
    server_spec,
    simulator_urls,
)
from zerosearch.search.local import InProcessCompleter
from zerosearch.search.probe import probe_from_config
from zerosearch.search.simulated import SimulatedEngine
from zerosearch.search.templates import named_template

# the micro world's training with the simulated engine: the simulator is the base stage's
# (simulator_sft off), the probe off (an untrained simulator has no useful/noisy switch)
SIM = ["train.engine=simulated", "simulator.backend=inprocess", "simulator_sft.enabled=false",
       "simulator.probe.enabled=false", "simulator.max_tokens=24", "train.batch_prompts=2", "train.group_size=2",
       "train.mini_batch_size=2", "train.micro_batch_size=1", "train.total_steps=3", "train.save_every=1",
       "train.lr=0.001", "train.warmup_ratio=0.0", "train.gradient_checkpointing=false", "train.val_every=0",
       "train.max_turns=2", "train.max_response_tokens=16"]


@pytest.fixture(scope="module")
def tok():
    texts = ["Where was Kadmir born? <search> Kadmir </search> <answer> Velora </answer> Velora is a city.",
             "Doc 1: Kadmir Ostavel was born in Velora. Doc 2: Zandoria country capital."] * 30
    return train_tokenizer(texts, vocab_size=400)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    m = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, intermediate_size=128, pad_token_id=tok.pad_token_id,
                                     eos_token_id=tok.eos_token_id))
    m.generation_config.do_sample, m.generation_config.top_k = True, 0  # as the committed tiny simulator's
    with torch.no_grad():  # make the tags likely: the simulator must write through them
        for t in ("</search>", "</answer>"):
            m.lm_head.weight[tok.convert_tokens_to_ids(t)] *= 4
    return m.eval()


def test_sampling_without_a_generator_is_the_global_rng_draw_and_with_one_leaves_it_alone():
    probs = torch.softmax(torch.randn(6, 50), -1)
    torch.manual_seed(3)
    default = sample_categorical(probs)
    torch.manual_seed(3)
    total = probs.cumsum(-1)[:, -1:]
    by_hand = torch.searchsorted(probs.cumsum(-1), torch.minimum(torch.rand_like(total) * total,
                                 torch.nextafter(total, torch.zeros_like(total))), right=True).squeeze(-1)
    assert torch.equal(default, by_hand)
    state = torch.get_rng_state()
    a = sample_categorical(probs, torch.Generator().manual_seed(7))
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(a, sample_categorical(probs, torch.Generator().manual_seed(7)))


def test_without_tag_stops_rows_run_through_search_and_answer_tags(tok, model):
    contexts = [tok("Where was Kadmir", add_special_tokens=False)["input_ids"]] * 4
    tags = {tok.convert_tokens_to_ids(t) for t in ("</search>", "</answer>")}
    turn = HFGenerator(model, tok, do_sample=False).generate(contexts, 40)
    assert any(r[-1] in tags for r in turn)  # the policy's turn stops at a tag
    docs = HFGenerator(model, tok, do_sample=False, stop_at_tags=False).generate(contexts, 40)
    assert all(len(r) == 40 or r[-1] == tok.eos_token_id for r in docs)
    assert any(t in tags for r in docs for t in r[:-1])


def test_a_call_seed_fixes_the_documents_and_the_global_rng_is_untouched(tok, model):
    completer = InProcessCompleter(model, tok)
    prompts = ["Where was Kadmir", "Velora is", "Zandoria"]
    state = torch.get_rng_state()
    a = completer.complete(prompts, max_tokens=20, temperature=1.0, seed=5)
    assert torch.equal(state, torch.get_rng_state())
    assert completer.complete(prompts, max_tokens=20, temperature=1.0, seed=5) == a
    assert completer.complete(prompts, max_tokens=20, temperature=1.0, seed=6) != a
    other_rank = InProcessCompleter(model, tok, rank=1)
    assert other_rank.complete(prompts, max_tokens=20, temperature=1.0, seed=5) != a
    greedy = completer.complete(prompts, max_tokens=20, temperature=0.0, seed=5)
    assert greedy == completer.complete(prompts, max_tokens=20, temperature=0.0, seed=9)


def test_chat_api_uses_the_chat_template_or_is_refused(tok, model):
    import copy

    bare = copy.deepcopy(tok)
    bare.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        InProcessCompleter(model, bare, api="chat")
    with pytest.raises(ValueError, match="system message needs api='chat'"):
        InProcessCompleter(model, tok, system_message="")
    chat = InProcessCompleter(model, tok, api="chat", system_message="")
    text = tok.decode(chat.encode("hi velora"))
    assert text == tok.apply_chat_template([{"role": "system", "content": ""}, {"role": "user", "content": "hi velora"}],
                                           tokenize=False, add_generation_prompt=True)
    assert "hi velora" in text and text != "hi velora"
    assert tok.decode(InProcessCompleter(model, tok).encode("hi velora")) == "hi velora"


def test_engine_documents_repeat_per_step_and_call_and_differ_across_steps(tok, model):
    def run(step, calls=2):
        engine = SimulatedEngine(InProcessCompleter(model, tok), template=named_template("ours-sft"), top_k=3,
                                 max_tokens=24, total_steps=10, seed=1)
        out = []
        for _ in range(calls):
            docs = engine.search(["velora"] * 4, questions=["Q?"] * 4, answers=[["Velora"]] * 4, step=step)
            out.append([[d.text for d in row] for row in docs])
        return out

    first = run(2)
    assert run(2) == first  # the same (seed, step, call): the same documents
    assert first[0] != first[1]  # two calls of one step differ
    assert run(3)[0] != first[0]


def test_served_client_sends_one_derived_seed_per_request(monkeypatch):
    from zerosearch.search.client import SimulatorClient, request_seed

    sent = []
    client = SimulatorClient("http://127.0.0.1:9/v1", "m")
    monkeypatch.setattr(client, "_post_with_retries", lambda path, body, abort=None: sent.append(body) or "x")
    client.complete(["a", "b", "c"], max_tokens=4, temperature=1.0, seed=11)
    assert [b["seed"] for b in sent] == [request_seed(11, i) for i in range(3)]
    assert len({b["seed"] for b in sent}) == 3 and all(0 <= b["seed"] < 2**31 for b in sent)
    sent.clear()
    client.complete(["a"], max_tokens=4, temperature=1.0)
    assert "seed" not in sent[0]


def test_inprocess_needs_no_server_and_serving_it_is_refused(micro_world, tmp_path):
    cfg = micro_config(micro_world, "simulator.backend=inprocess", "simulator_sft.enabled=false",
                       f"base.paths.models={tmp_path}")
    assert not needs_server(cfg, "simulated") and not needs_server(cfg, "bm25")
    assert needs_server(micro_config(micro_world, "simulator.backend=transformers"), "hybrid")
    with pytest.raises(ValueError, match="nothing|no server"):
        server_spec(cfg)
    with pytest.raises(ValueError, match="no server"), simulator_urls(cfg):
        pass
    with open_engine(cfg, "simulated") as engine:
        assert isinstance(engine.completer, InProcessCompleter)
        docs = engine.search(["velora"], questions=["Q?"], answers=[["A"]], step=0)
        assert len(docs) == 1
    rows = read_qa_parquet(cfg.path("data") / "train.parquet")
    result = probe_from_config(cfg, None, rows, n_questions=3)  # loads the simulator here, no URL
    assert result.n_questions == 3 and result.model == cfg.served_simulator()
    assert probe_from_config(cfg, None, rows, n_questions=3) == result  # seeded from base.seed


def test_serve_command_says_inprocess_has_nothing_to_serve(micro_world):
    from typer.testing import CliRunner

    from zerosearch.cli import app

    result = CliRunner().invoke(app, ["serve", *[a for o in micro_overrides(micro_world, "simulator.backend=inprocess")
                                                 for a in ("--set", o)]])
    assert result.exit_code == 2 and "nothing to serve" in result.output


@pytest.fixture(scope="module")
def searcher(micro_world, tmp_path_factory) -> str:
    """The micro world's base policy made to search: embedding column 0 (tied with the output
    layer) holds a large constant, a bit larger for ``<search>`` and ``</search>``, so the
    logits favour them whatever the context (a 2-step pretrained policy never searches)."""
    from zerosearch.lm.models import load_model, save_model

    model, tok = load_model(str(micro_world / "models" / "base" / "policy"))
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 20.0
        for tag, value in (("<search>", 21.0), ("</search>", 20.7)):
            model.model.embed_tokens.weight[tok.convert_tokens_to_ids(tag), 0] = value
    return str(save_model(model, tok, tmp_path_factory.mktemp("searcher") / "policy"))


def _sim_cfg(root: Path, out: Path, policy: str, *extra: str):
    return micro_config(root, *SIM, f"base.paths.models={out}/models", f"base.paths.metrics={out}/metrics",
                        f"base.policy_model={policy}", *extra)


def _curve(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8") as f:
        return [untimed(row) for row in csv.DictReader(f)]


def test_two_runs_of_one_seed_train_identically(micro_world, searcher, tmp_path):
    from safetensors.torch import load_file

    from zerosearch.stages import train as train_stage

    summaries = [train_stage.run(_sim_cfg(micro_world, tmp_path / r, searcher)) for r in ("a", "b")]
    assert summaries[0]["stats"] == summaries[1]["stats"] and summaries[0]["stats"]["queries"] > 0
    a, b = (_curve(tmp_path / r / "metrics" / "train_curve.csv") for r in ("a", "b"))
    assert len(a) == 3 and a == b and all(float(row["searches_per_trajectory"]) > 0 for row in a)
    wa, wb = (load_file(tmp_path / r / "models" / "policy" / "model.safetensors") for r in ("a", "b"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


DRIVER = ("import sys; from zerosearch.config import load_config; from zerosearch.stages import train; "
          "train.run(load_config(sys.argv[1], sys.argv[3:]), resume=sys.argv[2] == 'resume')")


def _train_command(root: Path, out: Path, policy: str, mode: str = "fresh") -> list[str]:
    """The train stage in a process of its own (what ``zerosearch train [--resume]`` runs,
    without the Prefect flow around it)."""
    overrides = [*micro_overrides(root, *SIM), f"base.paths.models={out}/models", f"base.paths.metrics={out}/metrics",
                 f"base.policy_model={policy}"]
    return [sys.executable, "-c", DRIVER, str(REPO / "params.yaml"), mode, *overrides]


@pytest.mark.slow
def test_a_run_killed_after_a_checkpoint_and_resumed_gives_the_uninterrupted_curve(micro_world, searcher, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "ZEROSEARCH_TRACKING": "off", "HF_HUB_OFFLINE": "1"}
    full = subprocess.run(_train_command(micro_world, tmp_path / "full", searcher), cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert full.returncode == 0, full.stdout[-2000:] + full.stderr[-2000:]
    out = tmp_path / "killed"
    proc = subprocess.Popen(_train_command(micro_world, out, searcher), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    first = out / "models" / "train_checkpoints" / "step_000001"
    deadline = time.monotonic() + 600
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer and anything it started, mid-run
    proc.wait()
    assert first.exists() and not (out / "models" / "policy").exists(), "the run ended before it was killed"
    resumed = subprocess.run(_train_command(micro_world, out, searcher, "resume"), cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert _curve(out / "metrics" / "train_curve.csv") == _curve(tmp_path / "full" / "metrics" / "train_curve.csv")


class EchoEngine:
    """A real-engine stand-in that returns one document naming the query (every search is a pair)."""

    def search(self, queries, *, questions=None, answers=None, step=0):
        from zerosearch.protocol import Doc

        return [[Doc("", f"about {q}")] for q in queries]


def test_sft_pair_collection_is_seeded_from_base_seed(micro_world, searcher):
    from zerosearch.stages.simulator_sft import collect_policy_pairs

    def pairs(global_seed: int, *extra: str) -> list[dict]:
        cfg = micro_config(micro_world, f"base.policy_model={searcher}", *extra)
        torch.manual_seed(global_seed)  # whatever the global RNG holds, the same pairs
        return collect_policy_pairs(cfg, EchoEngine(), read_qa_parquet(cfg.path("data") / "train.parquet")[:16])

    first = pairs(1)
    assert len(first) >= 3 and pairs(2) == first
    assert pairs(1, "base.seed=7") != first


@pytest.mark.slow
def test_training_through_the_served_simulator_still_works(micro_world, searcher, tmp_path):
    """simulator.backend: transformers (the served path GPUs take with sglang / vLLM): the
    train stage serves the simulator with `transformers serve`, searches go over HTTP."""
    from zerosearch.stages import train as train_stage

    cfg = _sim_cfg(micro_world, tmp_path, searcher, "simulator.backend=transformers", "train.total_steps=2",
                   "simulator.startup_timeout=240")
    summary = train_stage.run(cfg)
    assert summary["engine"] == "simulated" and summary["stats"]["queries"] > 0
    assert len(_curve(tmp_path / "metrics" / "train_curve.csv")) == 2
    assert (tmp_path / "models" / "simulator_server.log").exists()
