"""The paper path end to end on CPU, with stand-in models (marked slow: minutes).

A paper preset (`configs/paper/<algorithm>-qwen2.5-3b-prompt.yaml`) overridden only where a
laptop must: the policy is a random-init model of the real Qwen2.5 architecture (2 layers, the
real 151k vocabulary, the real base tokenizer), the simulator a random-init model with the real
instruct tokenizer in prompt mode on the chat endpoint of a real `transformers serve`, the
real Search-R1 parquet as the training and validation sets, the real FlashRAG NQ file as the
benchmark and the real wiki-18 sample as the BM25 corpus. `zerosearch data`, `zerosearch
train` (2 steps, with validation) for each of grpo / ppo / reinforce, then `zerosearch
evaluate` on 10 questions. It proves the non-tiny route runs: the preset's prompts, templates,
turn budget, layouts, metrics and validation are the ones the paper presets use. Its numbers
mean nothing (random models), and nothing here asserts them.

The simulator probe is off: a random model has no useful/noisy switch to find.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import FIXTURES, REPO

pytestmark = pytest.mark.slow

DATA = FIXTURES / "data"


def _random_qwen(tokenizer_dir: Path, out: Path, seed: int) -> Path:
    import torch
    from transformers import (
        AutoTokenizer,
        GenerationConfig,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    raw = json.loads((FIXTURES / "qwen2.5" / "config.json").read_text())
    raw = {k: v for k, v in raw.items() if k not in ("_name_or_path", "architectures", "torch_dtype",
                                                     "transformers_version")}
    raw.update(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
               num_key_value_heads=2, max_window_layers=2)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(**raw))
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    model.generation_config = GenerationConfig(do_sample=True, eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _cli(args: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run([sys.executable, "-m", "zerosearch.cli", *args], check=False, cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"zerosearch {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    if not (FIXTURES / "qwen2.5").is_dir() or not DATA.is_dir():
        pytest.skip("../shared/fixtures is absent (see its README)")
    root = tmp_path_factory.mktemp("paper")
    policy = _random_qwen(FIXTURES / "qwen2.5-base", root / "stand_in" / "policy", seed=0)
    simulator = _random_qwen(FIXTURES / "qwen2.5", root / "stand_in" / "simulator", seed=1)
    train_src, bench = root / "zerosearch_dataset", root / "flashrag" / "nq"
    train_src.mkdir()
    bench.mkdir(parents=True)
    shutil.copyfile(DATA / "searchr1_nq_search_sample.parquet", train_src / "train.parquet")
    shutil.copyfile(DATA / "searchr1_nq_search_sample.parquet", train_src / "test.parquet")
    shutil.copyfile(DATA / "flashrag_quickstart_nq_test.jsonl", bench / "test.jsonl")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "ZEROSEARCH_TRACKING": "off",
           "PREFECT_HOME": str(root / ".prefect")}
    return root, policy, simulator, train_src, env


def _overlay(root: Path, algorithm: str, policy: Path, simulator: Path, train_src: Path) -> Path:
    """The preset, overridden where CPU and stand-in models need it: nothing about the method."""
    out = root / algorithm
    overlay = {
        "extends": str(REPO / "configs" / "paper" / f"{algorithm}-qwen2.5-3b-prompt.yaml"),
        "base": {"policy_model": str(policy), "simulator_model": str(simulator),
                 "paths": {"data": str(root / "data"), "models": str(out / "models"), "metrics": str(out / "metrics")}},
        "data": {"train_source": str(train_src), "benchmarks_source": str(root / "flashrag"),
                 "benchmarks": ["nq"], "in_domain": ["nq"], "corpus": str(DATA / "flashrag_sample_data.jsonl")},
        "simulator": {"backend": "transformers", "tp": 1, "dp": 1, "port": 0, "concurrency": 4, "max_tokens": 24,
                      "probe": {"enabled": False}},
        "train": {"total_steps": 2, "batch_prompts": 2, "group_size": 2, "mini_batch_size": 4,
                  "micro_batch_size": 2, "max_response_tokens": 12, "max_turns": 2, "save_every": 1,
                  "val_every": 1, "val_max_samples": 3, "rollout_backend": "hf", "mixed_precision": "no",
                  "gradient_checkpointing": False},
        "eval": {"engine": "bm25", "max_samples": 10, "batch_size": 10, "policy": str(out / "models" / "policy")},
    }
    path = root / f"{algorithm}.yaml"
    path.write_text(yaml.safe_dump(overlay, sort_keys=False))
    return path


@pytest.mark.parametrize("algorithm", ["grpo", "ppo", "reinforce"])
def test_paper_preset_trains_validates_and_evaluates(paper_run, algorithm):
    root, policy, simulator, train_src, env = paper_run
    params = _overlay(root, algorithm, policy, simulator, train_src)
    shown = yaml.safe_load(_cli(["config", "show", "-p", str(params)], REPO, env))
    assert shown["train"]["algorithm"] == algorithm and shown["simulator"]["prompt"] == "zerosearch-prompt"
    assert shown["train"]["information_layout"] == "reference" and shown["eval"]["headline_metric"] == "substring_em"

    if not (root / "data" / "train.parquet").exists():  # one data stage serves the three runs
        _cli(["data", "-p", str(params)], REPO, env)
        corpus = [json.loads(x) for x in (root / "data" / "corpus.jsonl").read_text().splitlines()]
        assert len(corpus) == 1000 and set(corpus[0]) == {"id", "title", "text"}
        train_rows = pd.read_parquet(root / "data" / "train.parquet")
        assert len(train_rows) == 500 and "prompt" in train_rows.columns  # the row's chat messages kept
        assert len(pd.read_parquet(root / "data" / "val.parquet")) == 500

    _cli(["train", "-p", str(params)], REPO, env)
    out = root / algorithm
    summary = json.loads((out / "metrics" / "train.json").read_text())
    curve = pd.read_csv(out / "metrics" / "train_curve.csv")
    assert list(curve["step"]) == [0, 1]
    validation = pd.read_csv(out / "metrics" / "train_validation.csv")
    assert list(validation["step"]) == [0, 1, 2]  # before training and after each update
    assert {"val_em", "val_substring_em", "val_f1"} <= set(validation.columns)
    assert summary["val"]["step"] == 2 and summary["val"]["headline_metric"] == "substring_em"
    assert (out / "models" / "policy" / "config.json").exists()
    if algorithm == "ppo":
        assert (out / "models" / "train_checkpoints" / "step_000002" / "critic").is_dir()

    _cli(["evaluate", "-p", str(params)], REPO, env)
    table = json.loads((out / "metrics" / "evaluate.json").read_text())
    assert table["headline"]["metric"] == "substring_em"
    for method in ("direct", "rag", "base_agent", "agent"):
        nq = table[method]["nq"]
        assert {"em", "substring_em", "f1"} <= set(nq)
        assert 0.0 <= nq["em"] <= nq["substring_em"] <= 1.0  # strict EM never exceeds containment
    predictions = [json.loads(x) for x in (out / "metrics" / "evaluate_predictions.jsonl").read_text().splitlines()]
    assert len({(p["method"], p["id"]) for p in predictions if p["benchmark"] == "nq"}) == 40  # 4 methods x 10
