"""Stage flows under Prefect's test harness, and MLflow run nesting."""

import json
import os

import pytest
import yaml

from tests.conftest import FIXTURES, REPO, micro_config, micro_overrides
from zerosearch.atomic import write_csv, write_json
from zerosearch.config import flatten
from zerosearch.mlops.tracking import stage_run
from zerosearch.tracker import MemoryTracker


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield


def test_stage_flows_run_under_prefect_and_write_metrics(tmp_path, prefect_harness, monkeypatch):
    from flows.base import base_flow
    from flows.data import data_flow
    from zerosearch.mlops.headline import headline

    monkeypatch.setenv("ZEROSEARCH_TRACKING", "off")
    overrides = micro_overrides(tmp_path)
    stats = data_flow(str(REPO / "params.yaml"), overrides)
    assert stats["rows_train"] == 150
    assert json.loads((tmp_path / "metrics" / "data.json").read_text()) == stats
    # and its headline, the numbers dvc.yaml declares as metrics (dvc metrics show)
    assert json.loads((tmp_path / "metrics" / "headline" / "data.json").read_text()) == headline("data", stats)
    base = base_flow(str(REPO / "params.yaml"), overrides)
    assert json.loads((tmp_path / "metrics" / "base.json").read_text()) == base
    assert (tmp_path / "models" / "base" / "policy" / "model.safetensors").exists()

    from flows.train import train_flow

    train = ["train.engine=bm25", "train.total_steps=2", "train.save_every=1", "train.batch_prompts=2",
             "train.group_size=2", "train.mini_batch_size=4", "train.micro_batch_size=2"]
    summary = train_flow(str(REPO / "params.yaml"), overrides + train)
    assert json.loads((tmp_path / "metrics" / "train.json").read_text()) == summary
    assert summary["steps"] == 2 and summary["resumed_from_step"] == 0
    # --resume with nothing left to do: starts at the last checkpoint, trains no more steps
    resumed = train_flow(str(REPO / "params.yaml"), overrides + train, resume=True)
    assert resumed["resumed_from_step"] == 2
    assert (tmp_path / "models" / "policy" / "model.safetensors").exists()

    from prefect.client.orchestration import get_client

    from flows.evaluate import evaluate_flow

    evaluation = ["eval.max_samples=3", f"eval.policy={tmp_path}/models/policy", "eval.registered_model=''"]
    result = evaluate_flow(str(REPO / "params.yaml"), overrides + train + evaluation)
    assert json.loads((tmp_path / "metrics" / "evaluate.json").read_text()) == result["metrics"]
    assert json.loads((tmp_path / "metrics" / "headline" / "evaluate.json").read_text()) == {
        f"{m}_em": result["metrics"]["headline"][m] for m in ("agent", "base_agent", "direct", "rag")}
    assert set(result["table"]) == {"direct", "rag", "base_agent", "agent"}

    async def latest_artifact():
        async with get_client() as client:
            return await client.read_latest_artifacts()

    import asyncio

    artifacts = [a for a in asyncio.run(latest_artifact()) if a.key == "evaluate-table"]
    assert artifacts and "| agent |" in artifacts[0].data


def test_stage_runs_nest_under_one_pipeline_run(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.delenv("ZEROSEARCH_TRACKING", raising=False)
    monkeypatch.delenv("ZEROSEARCH_PARENT_RUN_ID", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    cfg = micro_config(tmp_path)
    for stage in ("data", "base"):
        with stage_run(stage, cfg, params) as tracker:
            tracker.log_metrics({f"{stage}_loss": 1.5}, step=0)
            tracker.log_metrics({f"{stage}_loss": 0.5}, step=1)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(cfg.base.mlflow_experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and sorted(r.data.tags["stage"] for r in children) == ["base", "data"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert all(r.data.tags["git_revision"] for r in children)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's training view
    import torch

    assert all(r.data.tags["version.torch"] == torch.__version__ and r.data.tags["env.python"] for r in children)
    data_run = next(r for r in children if r.data.tags["stage"] == "data")
    history = client.get_metric_history(data_run.info.run_id, "data_loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.5), (1, 0.5)]
    assert data_run.data.params["train.algorithm"] == cfg.train.algorithm
    # editing the params file starts a new pipeline run
    params.write_text(params.read_text() + "\n# changed\n")
    with stage_run("data", cfg, params):
        pass
    runs = client.search_runs([exp.experiment_id])
    assert len([r for r in runs if "mlflow.parentRunId" not in r.data.tags]) == 2


def test_tracking_off_and_memory_tracker(monkeypatch, micro_cfg):
    monkeypatch.setenv("ZEROSEARCH_TRACKING", "off")
    with stage_run("data", micro_cfg) as tracker:
        tracker.log_metrics({"x": 1.0})  # accepted, recorded nowhere
    mem = MemoryTracker()
    mem.log_metrics({"loss": 2.0}, step=3)
    mem.log_params({"a": 1})
    assert mem.metrics == [(3, {"loss": 2.0})] and mem.params == {"a": 1}


def test_metric_files(tmp_path):
    write_json({"b": 1, "a": 2.5}, tmp_path / "m" / "x.json")
    assert (tmp_path / "m" / "x.json").read_text() == '{\n  "a": 2.5,\n  "b": 1\n}\n'
    write_csv([{"step": 0, "loss": 1.0}, {"step": 1, "loss": 0.5}], tmp_path / "c.csv")
    assert (tmp_path / "c.csv").read_text().splitlines() == ["step,loss", "0,1.0", "1,0.5"]
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}


def test_dvc_yaml_declares_stages_with_existing_params():
    """Every params key a stage declares exists in params.yaml; outs are the configured paths."""
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert list(dvc["stages"]) == ["data", "base", "simulator_sft", "train", "evaluate"]
    for name, stage in dvc["stages"].items():
        assert stage["cmd"] == f"python -m flows.{name}"  # the stage's own flow, the run dir's code
        for key in stage["params"]:
            node = params
            for part in key.split("."):
                assert part in node, f"{name}: params key {key} not in params.yaml"
                node = node[part]


def test_disabled_simulator_sft_stage_records_what_is_served(tmp_path, prefect_harness, monkeypatch):
    from flows.simulator_sft import simulator_sft_flow

    monkeypatch.setenv("ZEROSEARCH_TRACKING", "off")
    overrides = micro_overrides(tmp_path, "simulator_sft.enabled=false", "base.simulator_model=org/sim")
    stats = simulator_sft_flow(str(REPO / "params.yaml"), overrides)
    assert stats == {"enabled": 0, "simulator_model": "org/sim"}
    assert "org/sim" in (tmp_path / "models" / "simulator_sft" / "SKIPPED.txt").read_text()
    assert json.loads((tmp_path / "metrics" / "simulator_sft.json").read_text()) == stats


def test_a_stage_command_with_a_bad_params_file_fails_in_one_line_naming_the_key(tmp_path):
    """What `dvc repro` runs (`python -m flows.<stage>`) validates params.yaml before any flow."""
    import os
    import subprocess
    import sys

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["train"]["total_stepz"] = 3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONPATH": str(REPO), "ZEROSEARCH_TRACKING": "off"}
    out = subprocess.run([sys.executable, "-m", "flows.train"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 2
    assert "train.total_stepz: unknown key" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "models").exists()


def test_train_flow_opens_a_run_and_writes_metrics_only_in_the_main_process(tmp_path, monkeypatch):
    """Under accelerate launch / torchrun every process runs the flow; RANK 0 alone tracks and writes."""
    import contextlib

    from flows import train as module

    written, runs = [], []
    monkeypatch.setattr(module, "load_config_task", lambda params, overrides: micro_config(tmp_path))
    monkeypatch.setattr(module, "train_task", lambda cfg, tracker, resume: {"tracker": type(tracker).__name__})
    monkeypatch.setattr(module, "write_metrics_task", lambda summary, path: written.append(path))
    monkeypatch.setattr(module, "stage_run", lambda *a: runs.append(a) or contextlib.nullcontext(MemoryTracker()))
    monkeypatch.setenv("RANK", "1")
    assert module.train_flow.fn("params.yaml") == {"tracker": "NullTracker"} and written == runs == []
    monkeypatch.setenv("RANK", "0")
    assert module.train_flow.fn("params.yaml") == {"tracker": "MemoryTracker"}
    assert written == [tmp_path / "metrics" / "train.json"] and len(runs) == 1


def test_a_stage_failing_on_bad_input_prints_one_line_not_a_traceback(tmp_path):
    """A corpus line that is not UTF-8: `zerosearch data` exits 2 with the file and line named,
    and neither Prefect's log nor the CLI prints a traceback (it printed ~350 lines before)."""
    import subprocess
    import sys

    parquet = FIXTURES / "data" / "searchr1_nq_search_sample.parquet"
    if not parquet.is_file():
        pytest.skip("../shared/fixtures/data is absent")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(b'{"id": "1", "text": "ok"}\n\xff\xfe bad\n')
    sets = ["data.source=hub", f"data.train_source={tmp_path}", f"data.benchmarks_source={tmp_path}",
            "data.benchmarks=[]", "data.in_domain=[]", f"data.corpus={corpus}", f"base.paths.data={tmp_path}/data",
            f"base.paths.metrics={tmp_path}/metrics"]
    (tmp_path / "train.parquet").write_bytes(parquet.read_bytes())
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(tmp_path / ".prefect"),
           "ZEROSEARCH_TRACKING": "off", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}
    proc = subprocess.run([sys.executable, "-m", "zerosearch.cli", "data", *[a for s in sets for a in ("--set", s)]],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert f"error: {corpus}, line 2: not valid UTF-8" in out
    assert "Traceback" not in out and "│" not in out and len(out.splitlines()) < 20
