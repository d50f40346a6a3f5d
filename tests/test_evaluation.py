"""Evaluation: the stage's numbers match the predictions file, baselines, ask, bad benchmark rows."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from tests.conftest import REPO, micro_config, micro_overrides
from zerosearch.agent.ask import Agent, parse_steps
from zerosearch.agent.evaluation import (
    by_source,
    headline,
    markdown_table,
    markdown_tables,
    predict_direct,
    predict_rag,
    table,
)
from zerosearch.agent.rollout import RolloutSettings
from zerosearch.data.schema import MalformedRowError, read_jsonl
from zerosearch.lm.generation import HFGenerator
from zerosearch.lm.models import load_model
from zerosearch.mlops.registry import (
    LEGACY_SETTINGS,
    AgentPyfunc,
    read_settings,
    register_agent,
)
from zerosearch.rewards import exact_match, f1_score, substring_exact_match
from zerosearch.search.factory import make_engine
from zerosearch.stages import evaluate as evaluate_stage
from zerosearch.tracker import MemoryTracker

EVAL = ["eval.max_samples=6", "eval.batch_size=4"]


def _cfg(root: Path, *extra: str):
    # the base policy stands in for a trained one
    return micro_config(root, *EVAL, f"eval.policy={root}/models/base/policy", *extra)


def test_stage_numbers_match_a_hand_computation_over_the_predictions(micro_world):
    cfg = _cfg(micro_world)
    tracker = MemoryTracker()
    result = evaluate_stage.run(cfg, tracker)
    records = read_jsonl(micro_world / "metrics" / "evaluate_predictions.jsonl")
    methods = ["direct", "rag", "base_agent", "agent"]
    assert {r["method"] for r in records} == set(methods)
    assert len(records) == 4 * 3 * 6  # methods x benchmarks x max_samples
    tab = result["table"]
    for method in methods:
        for bench in cfg.data.benchmarks:
            rows = [r for r in records if r["method"] == method and r["benchmark"] == bench]
            em = sum(exact_match(r["prediction"], r["golden_answers"]) for r in rows) / len(rows)
            sub = sum(substring_exact_match(r["prediction"], r["golden_answers"]) for r in rows) / len(rows)
            f1 = sum(f1_score(r["prediction"], r["golden_answers"]) for r in rows) / len(rows)
            assert tab[method][bench]["em"] == pytest.approx(em, abs=1e-4)
            assert tab[method][bench]["substring_em"] == pytest.approx(sub, abs=1e-4)
            assert tab[method][bench]["f1"] == pytest.approx(f1, abs=1e-4)
            assert tab[method][bench]["substring_em"] >= tab[method][bench]["em"]  # equal strings contain each other
        for metric in ("em", "substring_em", "f1"):
            in_d = [tab[method][b][metric] for b in cfg.data.in_domain]
            assert tab[method]["in_domain"][metric] == pytest.approx(sum(in_d) / len(in_d), abs=1e-4)
            assert tab[method]["out_of_domain"][metric] == tab[method]["tiny_ood"][metric]
            every = [tab[method][b][metric] for b in cfg.data.benchmarks]
            assert tab[method]["average"][metric] == pytest.approx(sum(every) / len(every), abs=1e-4)
    # the tiny world's headline is strict EM; evaluate.json is the table plus the headline
    assert result["metrics"] == {**tab, "headline": {"metric": "em", **{m: tab[m]["average"]["em"] for m in methods}}}
    assert result["markdown"].startswith("**strict EM** (headline)")
    assert "**substring EM**" in result["markdown"] and "**F1**" in result["markdown"]
    assert {r["searches"] for r in records if r["method"] == "direct"} == {0}
    assert {r["searches"] for r in records if r["method"] == "rag"} == {1}
    for bench in [*cfg.data.benchmarks, "average"]:
        assert (micro_world / "metrics" / "evaluate_plots" / f"{bench}.png").stat().st_size > 1000
    # the stage scores and logs; registering is the flow's next task (register_agent)
    assert tracker.models == []
    logged = {k: v for _, m in tracker.metrics for k, v in m.items()}
    assert logged["evaluate.agent.tiny_single.em"] == pytest.approx(tab["agent"]["tiny_single"]["em"])
    assert logged["evaluate.agent.average.substring_em"] == pytest.approx(tab["agent"]["average"]["substring_em"])
    assert logged["evaluate.headline.agent"] == pytest.approx(tab["agent"]["average"]["em"])
    assert not any(k.startswith("eval.") for k in logged)
    assert "| agent |" in result["markdown"] and set(result) == {"table", "metrics", "markdown", "seconds"}
    assert str(micro_world / "metrics" / "evaluate_predictions.jsonl") in tracker.artifacts


def test_table_and_markdown_on_hand_values():
    results = {"agent": {"a": {"em": 0.5, "substring_em": 0.75, "f1": 0.6}, "b": {"em": 0.0, "substring_em": 0.5, "f1": 0.2},
                         "c": {"em": 1.0, "substring_em": 1.0, "f1": 1.0}}}
    tab = table(results, in_domain=["a", "b"])
    assert tab["agent"]["in_domain"] == {"em": 0.25, "substring_em": 0.625, "f1": 0.4}
    assert tab["agent"]["out_of_domain"] == {"em": 1.0, "substring_em": 1.0, "f1": 1.0}
    assert tab["agent"]["average"]["em"] == pytest.approx(0.5)
    assert tab["agent"]["average"]["substring_em"] == pytest.approx(0.75)
    md = markdown_table(tab, ["a", "b", "c"])
    assert md.splitlines()[0] == "| method | a | b | c | in_domain | out_of_domain | average |"
    assert md.splitlines()[2] == "| agent | 0.500 | 0.000 | 1.000 | 0.250 | 1.000 | 0.500 |"
    # evaluate.json's headline entry is not a method row; each table says its metric
    with_headline = {**tab, "headline": headline(tab, "substring_em")}
    assert with_headline["headline"] == {"metric": "substring_em", "agent": 0.75}
    assert markdown_table(with_headline, ["a", "b", "c"], "substring_em").splitlines()[2:] == [
        "| agent | 0.750 | 0.500 | 1.000 | 0.625 | 1.000 | 0.750 |"]
    tables = markdown_tables(with_headline, ["a", "b", "c"], "substring_em").split("\n\n")
    assert [tables[0], tables[2], tables[4]] == ["**substring EM** (headline)", "**strict EM**", "**F1**"]
    assert tables[3].splitlines()[2] == md.splitlines()[2]


def test_by_source_averages_over_data_sources():
    recs = [{"data_source": "nq", "em": 1.0, "substring_em": 1.0, "f1": 1.0},
            {"data_source": "nq", "em": 0.0, "substring_em": 1.0, "f1": 0.5},
            {"data_source": "hotpotqa", "em": 0.0, "substring_em": 0.0, "f1": 0.0}]
    out = by_source(recs)
    assert out["nq"] == {"n": 2, "em": 0.5, "substring_em": 1.0, "f1": 0.75}
    assert out["hotpotqa"] == {"n": 1, "em": 0.0, "substring_em": 0.0, "f1": 0.0}
    # unweighted over sources, as the benchmark table's average
    assert out["average"] == {"n": 3, "em": 0.25, "substring_em": 0.5, "f1": 0.375}
    assert by_source([]) == {}


def test_the_paper_headline_is_substring_em_and_labels_say_so(micro_world, tmp_path):
    cfg = _cfg(micro_world, "eval.methods=[rag]", "eval.headline_metric=substring_em",
               f"base.paths.metrics={tmp_path}/metrics")
    result = evaluate_stage.run(cfg)
    tab = result["table"]
    assert result["metrics"]["headline"] == {"metric": "substring_em", "rag": tab["rag"]["average"]["substring_em"]}
    assert result["markdown"].startswith("**substring EM** (headline)")
    assert all({"em", "substring_em", "f1"} <= set(tab["rag"][b]) for b in [*cfg.data.benchmarks, "average"])
    assert (tmp_path / "metrics" / "evaluate_plots" / "average.png").stat().st_size > 1000


def test_baselines_force_an_answer_and_rag_retrieves_once(micro_world):
    cfg = _cfg(micro_world)
    model, tok = load_model(cfg.base.policy_model)
    rows = [{"id": "q1", "question": "Where was X born?", "golden_answers": ["Y"]}]
    settings = RolloutSettings(max_search_turns=1, max_response_tokens=8, max_obs_tokens=64)
    direct = predict_direct(model, tok, rows, settings)
    assert direct[0]["trajectory"].startswith("<answer>") and direct[0]["searches"] == 0
    rag = predict_rag(model, tok, make_engine(cfg, "bm25"), rows, settings)
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
        evaluate_stage.run(cfg, engine=object())


def test_ask_round_trips_on_the_tiny_model(micro_world):
    from zerosearch.cli import app

    cfg = _cfg(micro_world)
    agent = Agent.load(cfg.base.policy_model, make_engine(cfg, "bm25"),
                       RolloutSettings(max_search_turns=1, max_response_tokens=12, max_obs_tokens=128))
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


def _agent_table(cfg) -> dict:
    """A hand-made evaluate table: the agent's EM/F1 per benchmark and the average."""
    benches = {b: {"em": 0.125 * (i + 1), "f1": 0.5} for i, b in enumerate(cfg.data.benchmarks)}
    return {"agent": {**benches, "average": {"em": 0.25, "f1": 0.5}}}


def test_policy_registers_in_mlflow_and_ask_loads_it_back(micro_world, tmp_path, monkeypatch):
    import mlflow

    from zerosearch.mlops.registry import resolve_policy
    from zerosearch.mlops.tracking import MlflowTracker

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("t", artifact_location=str(tmp_path / "art")))
    cfg = _cfg(micro_world, "eval.registered_model=zs-test")
    with mlflow.start_run():
        uri = register_agent(cfg, _agent_table(cfg), MlflowTracker(mlflow))
    assert uri == "models:/zs-test/1"
    tags = mlflow.MlflowClient().get_model_version("zs-test", "1").tags
    assert tags["evaluate.average.em"] == "0.25" and tags["evaluate.tiny_single.em"] == "0.125"
    assert not any(k.endswith(".f1") for k in tags)  # EM only
    local = resolve_policy(uri)
    assert (Path(local) / "config.json").exists() and load_model(local)[0].config.model_type == "qwen2"
    loaded = mlflow.pyfunc.load_model(uri)
    # the registered model answers with the registering run's settings, not the legacy defaults
    assert loaded.unwrap_python_model().settings == RolloutSettings.from_config(cfg) != LEGACY_SETTINGS
    answers = loaded.predict(["Where was X born?"])
    assert len(answers) == 1 and (answers[0] is None or isinstance(answers[0], str))


def _ask_args(micro_world: Path, params: Path, policy: str) -> list[str]:
    sets = [f"base.paths.data={micro_world}/data", f"base.paths.models={micro_world}/models",
            "train.max_turns=1", "train.max_response_tokens=12", "train.max_obs_tokens=128"]
    return ["ask", "Where was X born?", "--policy", policy, "--engine", "bm25", "--params", str(params), "--json",
            *[a for o in sets for a in ("--set", o)]]


def test_ask_applies_the_chat_template_when_the_preset_says_so(micro_world, monkeypatch):
    """A paper preset (base.chat_prompt: auto, the tiny tokenizer has a template) prompts through
    the tokenizer's chat template; params.yaml (chat_prompt false) prompts with plain text."""
    from zerosearch.cli import app
    from zerosearch.config import load_config
    from zerosearch.protocol import policy_prompt

    policy = str(micro_world / "models" / "base" / "policy")
    _, tok = load_model(policy)
    first_contexts: list[list[int]] = []
    real_generate = HFGenerator.generate

    def recording_generate(self, contexts, max_new_tokens, keys=None):
        if not first_contexts:  # the first turn's context is exactly the prompt
            first_contexts.append(list(contexts[0]))
        return real_generate(self, contexts, max_new_tokens, keys=keys)

    monkeypatch.setattr(HFGenerator, "generate", recording_generate)
    preset = REPO / "configs" / "paper" / "grpo-qwen2.5-3b-instruct-sft.yaml"
    prompts = {}
    for params in (preset, REPO / "params.yaml"):
        first_contexts.clear()
        args = _ask_args(micro_world, params, policy)
        out = CliRunner().invoke(app, args)
        assert out.exit_code == 0, out.output
        payload = json.loads(out.output[out.output.index("{"):])
        assert payload["question"] == "Where was X born?"
        chat = load_config(params, []).base.chat_prompt
        assert len(first_contexts) == 1
        prompts[chat] = tok.decode(first_contexts[0], skip_special_tokens=False)
        assert first_contexts[0] == tok(policy_prompt("Where was X born?", tok, chat=chat),
                                        add_special_tokens=False)["input_ids"]
    assert set(prompts) == {"auto", False}  # the preset applies the template, params.yaml does not
    prompts[True] = prompts.pop("auto")
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    assert prompts[True].startswith("<|im_start|>user\n") and prompts[True].endswith("<|im_start|>assistant\n")
    assert "Question: Where was X born?" in prompts[True]
    assert "<|im_start|>" not in prompts[False] and prompts[False].endswith("Question: Where was X born?\n")
    assert im_start != tok.unk_token_id


def test_the_registered_pyfunc_carries_the_run_settings_and_answers_with_them(micro_world, tmp_path, monkeypatch):
    import shutil
    from types import SimpleNamespace

    import zerosearch.agent.ask as ask_module

    cfg = _cfg(micro_world, "train.max_turns=2", "train.max_response_tokens=10", "train.max_obs_tokens=96",
               "eval.registered_model=zs-settings")
    settings = RolloutSettings.from_config(cfg)
    assert (settings.max_search_turns, settings.max_response_tokens) != (LEGACY_SETTINGS.max_search_turns,
                                                                 LEGACY_SETTINGS.max_response_tokens)

    class CopyingTracker(MemoryTracker):
        """Copies the artifact files while they exist: register_agent writes the settings file
        into a temporary directory that is gone once it returns (an MLflow tracker copies the
        artifacts during log_model)."""

        def log_model(self, python_model, artifacts, registered_name="", metrics=None):
            kept = dict(artifacts)
            settings_file = Path(artifacts["rollout_settings"])
            kept["rollout_settings"] = str(shutil.copy(settings_file, tmp_path / settings_file.name))
            return super().log_model(python_model, kept, registered_name, metrics)

    tracker = CopyingTracker()
    ref = register_agent(cfg, _agent_table(cfg), tracker)
    assert ref == "memory:/zs-settings"
    (logged,) = tracker.models
    arts = logged["artifacts"]
    assert set(arts) == {"policy", "rollout_settings", "bm25"}
    assert arts["policy"] == str(cfg.eval.policy) and arts["bm25"] == str(cfg.path("data") / "bm25")
    assert json.loads(Path(arts["rollout_settings"]).read_text()) == settings.to_dict()
    assert logged["registered_name"] == "zs-settings"
    assert logged["metrics"] == {f"evaluate.{b}.em": v["em"] for b, v in _agent_table(cfg)["agent"].items()}

    model = logged["python_model"]
    assert isinstance(model, AgentPyfunc)
    model.load_context(SimpleNamespace(artifacts=arts))
    assert model.settings == settings and model.agent.settings == settings
    used = []
    real = ask_module.run_rollouts
    monkeypatch.setattr(ask_module, "run_rollouts", lambda *a, **k: used.append(a[5]) or real(*a, **k))
    answers = model.predict(None, ["Where was X born?"])
    assert len(answers) == 1 and (answers[0] is None or isinstance(answers[0], str))
    assert used == [settings]
    # a DataFrame with a question column answers row by row
    assert len(model.predict(None, pd.DataFrame({"question": ["Q1?", "Q2?"]}))) == 2

    # without an index the pyfunc answers directly, under the same settings
    direct = AgentPyfunc()
    direct.load_context(SimpleNamespace(artifacts={k: v for k, v in arts.items() if k != "bm25"}))
    assert direct.agent is None and direct.settings == settings
    answers = direct.predict(None, ["Where was X born?"])
    assert len(answers) == 1 and (answers[0] is None or isinstance(answers[0], str))


def test_register_agent_skips_an_evaluation_without_the_agent_method(micro_world):
    cfg = _cfg(micro_world, "eval.methods=[direct,rag]")
    tracker = MemoryTracker()
    assert register_agent(cfg, {"direct": {}}, tracker) is None and tracker.models == []


def test_models_registered_without_settings_answer_with_the_legacy_ones():
    assert read_settings({}) == LEGACY_SETTINGS
    assert read_settings({"policy": "/x"}) == RolloutSettings(max_search_turns=3, max_response_tokens=96, max_obs_tokens=512)


def test_a_model_pickled_by_zerosearch_0_1_fails_saying_to_register_it_again():
    """0.1 pickled the registered model as an instance of ``zerosearch.agent.AgentPyfunc``."""
    import pickle

    old_instance = b"\x80\x02czerosearch.agent\nAgentPyfunc\n)\x81."  # GLOBAL, (), NEWOBJ: cls.__new__(cls)
    with pytest.raises(RuntimeError, match=r"registered with zerosearch 0\.1.*`zerosearch evaluate`"):
        pickle.loads(old_instance)


def test_bar_charts_label_each_bar_and_fit_the_axis_to_the_scores(tmp_path):
    from zerosearch.stages.evaluate import bar_chart_top, plot_benchmarks

    assert bar_chart_top([0.14, 0.067]) == 0.2 and bar_chart_top([0.0, 0.0]) == 0.1 and bar_chart_top([1.0]) == 1.05
    tab = {"direct": {"b": {"em": 0.0}, "average": {"em": 0.0}}, "agent": {"b": {"em": 0.36}, "average": {"em": 0.36}}}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    captured = {}
    real = plt.Axes.bar_label

    def spy(self, container, labels=None, **kw):
        captured.setdefault("labels", []).append(list(labels))
        return real(self, container, labels=labels, **kw)

    plt.Axes.bar_label = spy
    try:
        paths = plot_benchmarks(tab, ["b"], tmp_path)
    finally:
        plt.Axes.bar_label = real
    assert [p.name for p in paths] == ["b.png", "average.png"] and all(p.stat().st_size > 0 for p in paths)
    assert captured["labels"] == [["0.000", "0.360"], ["0.000", "0.360"]]
