"""Evaluation: the stage's numbers match the predictions file, baselines, ask, bad benchmark rows."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from tests.conftest import REPO, micro_config, micro_overrides
from zerosearch.agent import Agent, parse_steps
from zerosearch.data.schema import MalformedRowError, read_jsonl
from zerosearch.evaluate import evaluate
from zerosearch.evaluation import markdown_table, predict_direct, predict_rag, table
from zerosearch.models import load_model
from zerosearch.rewards import exact_match, f1_score
from zerosearch.search.factory import make_engine
from zerosearch.tracking import MemoryTracker

EVAL = ["eval.max_samples=6", "eval.batch_size=4"]


def _cfg(root: Path, *extra: str):
    # the base policy stands in for a trained one
    return micro_config(root, *EVAL, f"eval.policy={root}/models/base/policy", *extra)


def test_stage_numbers_match_a_hand_computation_over_the_predictions(micro_world):
    cfg = _cfg(micro_world)
    tracker = MemoryTracker()
    result = evaluate(cfg, tracker)
    records = read_jsonl(micro_world / "metrics" / "eval_predictions.jsonl")
    methods = ["direct", "rag", "base_agent", "agent"]
    assert {r["method"] for r in records} == set(methods)
    assert len(records) == 4 * 3 * 6  # methods x benchmarks x max_samples
    tab = result["table"]
    for method in methods:
        for bench in cfg.data.benchmarks:
            rows = [r for r in records if r["method"] == method and r["benchmark"] == bench]
            em = sum(exact_match(r["prediction"], r["golden_answers"]) for r in rows) / len(rows)
            f1 = sum(f1_score(r["prediction"], r["golden_answers"]) for r in rows) / len(rows)
            assert tab[method][bench]["em"] == pytest.approx(em, abs=1e-4)
            assert tab[method][bench]["f1"] == pytest.approx(f1, abs=1e-4)
        in_d = [tab[method][b]["em"] for b in cfg.data.in_domain]
        assert tab[method]["in_domain"]["em"] == pytest.approx(sum(in_d) / len(in_d), abs=1e-4)
        assert tab[method]["out_of_domain"]["em"] == tab[method]["tiny_ood"]["em"]
    assert {r["searches"] for r in records if r["method"] == "direct"} == {0}
    assert {r["searches"] for r in records if r["method"] == "rag"} == {1}
    for bench in [*cfg.data.benchmarks, "average"]:
        assert (micro_world / "metrics" / "eval_plots" / f"{bench}.png").stat().st_size > 1000
    assert tracker.models == [(cfg.eval.policy, "zerosearch-policy")]
    assert any(k == "eval.agent.tiny_single.em" for _, m in tracker.metrics for k in m)
    assert "| agent |" in result["markdown"]


def test_table_and_markdown_on_hand_values():
    results = {"agent": {"a": {"em": 0.5, "f1": 0.6}, "b": {"em": 0.0, "f1": 0.2}, "c": {"em": 1.0, "f1": 1.0}}}
    tab = table(results, in_domain=["a", "b"])
    assert tab["agent"]["in_domain"] == {"em": 0.25, "f1": 0.4}
    assert tab["agent"]["out_of_domain"] == {"em": 1.0, "f1": 1.0}
    assert tab["agent"]["average"]["em"] == pytest.approx(0.5)
    md = markdown_table(tab, ["a", "b", "c"])
    assert md.splitlines()[0] == "| method | a | b | c | in_domain | out_of_domain | average |"
    assert md.splitlines()[2] == "| agent | 0.500 | 0.000 | 1.000 | 0.250 | 1.000 | 0.500 |"


def test_baselines_force_an_answer_and_rag_retrieves_once(micro_world):
    cfg = _cfg(micro_world)
    model, tok = load_model(cfg.base.policy_model)
    rows = [{"id": "q1", "question": "Where was X born?", "golden_answers": ["Y"]}]
    direct = predict_direct(model, tok, rows, max_response_tokens=8)
    assert direct[0]["trajectory"].startswith("<answer>") and direct[0]["searches"] == 0
    rag = predict_rag(model, tok, make_engine(cfg, "bm25"), rows, max_response_tokens=8, max_obs_tokens=64)
    assert rag[0]["trajectory"].lstrip().startswith("<information>") and rag[0]["searches"] == 1
    assert rag[0]["turns"] == 1


def test_a_malformed_benchmark_row_is_an_error_naming_file_and_row(micro_world, tmp_path):
    data = tmp_path / "data"
    (data / "test").mkdir(parents=True)
    for f in ("train.parquet", "corpus.jsonl"):
        (data / f).write_bytes((micro_world / "data" / f).read_bytes())
    good = pd.read_parquet(micro_world / "data" / "test" / "tiny_single.parquet")
    for bench in ("tiny_multi", "tiny_ood"):
        good.to_parquet(data / "test" / f"{bench}.parquet")
    bad = good.copy()
    bad.loc[3, "question"] = None
    bad.to_parquet(data / "test" / "tiny_single.parquet")
    cfg = _cfg(micro_world, f"base.paths.data={data}")
    with pytest.raises(MalformedRowError, match=r"tiny_single\.parquet.*row 3"):
        evaluate(cfg, engine=object())


def test_ask_round_trips_on_the_tiny_model(micro_world):
    from zerosearch.cli import app

    cfg = _cfg(micro_world)
    agent = Agent.load(cfg.base.policy_model, make_engine(cfg, "bm25"), max_turns=2, max_response_tokens=12)
    answer = agent.ask("Where was X born?")
    assert answer.question == "Where was X born?" and answer.steps == parse_steps(answer.trajectory)
    args = ["ask", "Where was X born?", "--json", "--policy", cfg.base.policy_model, "--engine", "bm25",
            "--params", str(REPO / "params.yaml"), *[a for o in micro_overrides(micro_world) for a in ("--set", o)]]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    payload = json.loads(out.output[out.output.index("{"):])
    assert payload["question"] == "Where was X born?" and "steps" in payload and "searches" in payload
    missing = CliRunner().invoke(app, ["ask", "Q?", "--policy", str(micro_world / "nope"), "--engine", "bm25",
                                       "--params", str(REPO / "params.yaml"),
                                       *[a for o in micro_overrides(micro_world) for a in ("--set", o)]])
    assert missing.exit_code == 2 and "cannot load policy" in missing.output


def test_parse_steps_reads_tagged_blocks_in_order():
    text = "<think> a </think>\n<search> q </search>\n<information>\nDoc 1: x\n</information>\n<answer> y </answer>"
    assert [s["kind"] for s in parse_steps(text)] == ["think", "search", "information", "answer"]
    assert parse_steps(text)[-1]["text"] == "y"


def test_policy_registers_in_mlflow_and_ask_loads_it_back(micro_world, tmp_path, monkeypatch):
    import mlflow

    from zerosearch.agent import resolve_policy
    from zerosearch.tracking import MlflowTracker

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("t", artifact_location=str(tmp_path / "art")))
    with mlflow.start_run():
        uri = MlflowTracker(mlflow).log_model(micro_world / "models" / "base" / "policy", "zs-test",
                                              index=micro_world / "data" / "bm25", metrics={"eval.average.em": 0.25})
    assert uri == "models:/zs-test/1"
    assert mlflow.MlflowClient().get_model_version("zs-test", "1").tags["eval.average.em"] == "0.25"
    local = resolve_policy(uri)
    assert (Path(local) / "config.json").exists() and load_model(local)[0].config.model_type == "qwen2"
    answers = mlflow.pyfunc.load_model(uri).predict(["Where was X born?"])
    assert len(answers) == 1
