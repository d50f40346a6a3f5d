"""DVC experiments from presets and overrides, the pipeline flow and its deployment.

``dvc`` is replaced by a fake on PATH here (it records its arguments and stores an experiment
ref with a metrics file, as ``dvc exp run`` does); tests/test_pipeline_e2e.py runs the real one."""

import json
import os
import shutil
import stat
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from tests.conftest import REPO, params_presets
from zerosearch.config import ConfigError, load_config, read_params
from zerosearch.mlops.experiments import (
    ExperimentFailed,
    dvc_exp_command,
    experiment_changes,
    experiment_metrics,
    experiment_name,
    resolve_preset,
    run_experiment,
)

TABLE = {"agent": {"tiny_single": {"em": 0.5, "f1": 0.6}, "average": {"em": 0.5, "f1": 0.6}}}

FAKE_DVC = r'''#!PYTHON
"""Fake dvc: records argv, prints stage lines like dvc, stores an experiment ref."""
import json, os, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_DVC_LOG"], "a") as f:
    f.write(json.dumps({"args": args, "cwd": os.getcwd()}) + "\n")
name = args[args.index("--name") + 1]
print("Stage 'data' didn't change, skipping")
print("Running stage 'train':", flush=True)
if os.environ.get("FAKE_DVC_FAIL"):
    print("RuntimeError: simulator did not come up", flush=True)
    sys.exit(3)
print("Running stage 'evaluate':")
git = lambda *a, input=None: subprocess.run(["git", *a], input=input, capture_output=True, text=True, check=True).stdout.strip()
blob = git("hash-object", "-w", "--stdin", input=os.environ["FAKE_DVC_TABLE"])
metrics = git("mktree", input=f"100644 blob {blob}\tevaluate.json\n")
root = git("mktree", input=f"040000 tree {metrics}\tmetrics\n")
commit = git("commit-tree", root, "-m", "exp " + name)
git("update-ref", f"refs/exps/ab/cdef0123/{name}", commit)
'''


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A git repo with the project's params and presets, and a fake dvc first on PATH."""
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    shutil.copytree(REPO / "configs", root / "configs")
    for cmd in (["init", "-q"], ["add", "."], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        subprocess.run(["git", *cmd], cwd=root, check=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "dvc"
    fake.write_text(FAKE_DVC.replace("#!PYTHON", f"#!{sys.executable}"))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DVC_LOG", str(tmp_path / "dvc_calls.jsonl"))
    monkeypatch.setenv("FAKE_DVC_TABLE", json.dumps(TABLE))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    return root


def dvc_calls(repo):
    return [json.loads(line) for line in (repo.parent / "dvc_calls.jsonl").read_text().splitlines()]


def test_changes_are_the_difference_to_params_yaml_and_reproduce_the_preset():
    assert experiment_changes(REPO / "configs/tiny.yaml", [], REPO / "params.yaml") == []
    assert experiment_changes(REPO / "params.yaml", ["train.algorithm=ppo", "train.total_steps=50"],
                              REPO / "params.yaml") == ['train.algorithm="ppo"', "train.total_steps=50"]
    paper = REPO / "configs/paper/grpo-qwen2.5-3b-sft.yaml"
    changes = experiment_changes(paper, ["train.lr=2e-6"], REPO / "params.yaml")
    assert 'base.policy_model="Qwen/Qwen2.5-3B"' in changes and "train.lr=2e-06" in changes
    # params.yaml with the changes applied, the way dvc -S applies them, is the preset + overrides
    assert load_config(REPO / "params.yaml", changes) == load_config(paper, ["train.lr=2e-6"])



def test_the_params_file_dvc_runs_must_be_complete_not_an_overlay(tmp_path):
    overlay = tmp_path / "params.yaml"
    overlay.write_text(f"extends: {REPO / 'params.yaml'}\n")
    with pytest.raises(ConfigError, match=r"params\.yaml: the params file DVC runs must be complete"):
        experiment_changes(REPO / "configs/paper/grpo-qwen2.5-3b-sft.yaml", [], overlay)


def test_bad_overrides_fail_before_dvc_runs_naming_the_key():
    with pytest.raises(ConfigError, match="train.algoritm"):
        experiment_changes(REPO / "params.yaml", ["train.algoritm=ppo"], REPO / "params.yaml")
    with pytest.raises(ConfigError, match="train.algorithm"):
        experiment_changes(REPO / "params.yaml", ["train.algorithm=sarsa"], REPO / "params.yaml")
    with pytest.raises(ConfigError, match="unknown preset 'nope'.*paper/grpo-qwen2.5-3b-sft") as unknown:
        resolve_preset("nope", REPO)
    assert "studies/" not in str(unknown.value)  # the replication study is not a preset
    assert resolve_preset("tiny", REPO) == REPO / "configs/tiny.yaml"
    assert resolve_preset("paper/ppo-qwen2.5-3b-prompt", REPO) == REPO / "configs/paper/ppo-qwen2.5-3b-prompt.yaml"


def test_dvc_command_and_experiment_names():
    assert dvc_exp_command(['train.algorithm="ppo"'], "ppo-1") == [
        "dvc", "exp", "run", "--name", "ppo-1", "--temp", "--set-param", 'train.algorithm="ppo"']
    assert "--temp" not in dvc_exp_command([], "x", temp=False)
    assert experiment_name("scheduled", datetime(2026, 11, 27, 3, 0, 5, tzinfo=timezone.utc)) == \
        "scheduled-20261127-030005"
    with pytest.raises(ConfigError, match="experiment name"):
        dvc_exp_command([], "bad name/with slash")


def test_run_experiment_streams_lines_and_reads_the_experiment_metrics(repo):
    lines = []
    result = run_experiment(['train.algorithm="ppo"'], "exp-a", repo, on_line=lines.append)
    assert result.ran == ["train", "evaluate"] and result.skipped == ["data"]
    assert "Running stage 'train':" in lines
    assert dvc_calls(repo)[0]["args"][-2:] == ["--set-param", 'train.algorithm="ppo"']
    assert experiment_metrics("exp-a", "metrics/evaluate.json", repo) == TABLE
    with pytest.raises(LookupError, match="no DVC experiment named 'other'"):
        experiment_metrics("other", "metrics/evaluate.json", repo)


def test_a_failing_stage_is_named(repo, monkeypatch):
    monkeypatch.setenv("FAKE_DVC_FAIL", "1")
    with pytest.raises(ExperimentFailed, match="stage 'train'") as info:
        run_experiment([], "exp-b", repo)
    assert info.value.returncode == 3 and "simulator did not come up" in info.value.tail


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield


def test_pipeline_flow_runs_an_experiment_and_publishes_its_table(repo, prefect_harness):
    import asyncio

    from prefect.client.orchestration import get_client

    from flows.pipeline import artifact_key, pipeline_flow

    out = pipeline_flow(preset="params.yaml", overrides=["train.algorithm=ppo", "train.group_size=1",
                                                         "train.mini_batch_size=12", "train.micro_batch_size=12"],
                        experiment="ui-ppo", repo=str(repo))
    assert out["experiment"] == "ui-ppo" and out["table"] == TABLE and out["ran"] == ["train", "evaluate"]
    args = dvc_calls(repo)[-1]["args"]
    assert args[:6] == ["exp", "run", "--name", "ui-ppo", "--temp", "--set-param"]
    assert 'train.algorithm="ppo"' in args and "train.group_size=1" in args

    async def artifact():
        async with get_client() as client:
            return [a for a in await client.read_latest_artifacts() if a.key == artifact_key("ui-ppo")]

    found = asyncio.run(artifact())
    assert found and "| agent | 0.500" in found[0].data and "ui-ppo" in found[0].data


def test_pipeline_flow_fails_visibly_with_the_stage(repo, prefect_harness, monkeypatch):
    from prefect.states import State

    from flows.pipeline import pipeline_flow

    monkeypatch.setenv("FAKE_DVC_FAIL", "1")
    state = pipeline_flow(experiment="broken", repo=str(repo), return_state=True)
    assert isinstance(state, State) and state.is_failed()
    assert "stage 'train'" in state.message or "stage 'train'" in str(state.result(raise_on_failure=False))
    # a bad override fails in planning: dvc never runs
    calls_before = len(dvc_calls(repo))
    state = pipeline_flow(overrides=["train.nope=1"], experiment="bad", repo=str(repo), return_state=True)
    assert state.is_failed() and len(dvc_calls(repo)) == calls_before


def test_deployment_carries_the_schedule_and_parameters_from_params(prefect_harness):
    import asyncio

    from prefect.client.orchestration import get_client

    from flows.deploy import pipeline_deployment

    cfg = load_config(REPO / "params.yaml", ["orchestration.cron=0 4 * * 1", "orchestration.deployment=nightly-test"])
    deployment_id = pipeline_deployment(cfg).apply()

    async def read():
        async with get_client() as client:
            return await client.read_deployment(deployment_id)

    d = asyncio.run(read())
    assert d.name == "nightly-test"
    assert [s.schedule.cron for s in d.schedules] == ["0 4 * * 1"]
    assert d.schedules[0].schedule.timezone == cfg.orchestration.timezone
    assert d.parameters["experiment_prefix"] == cfg.orchestration.experiment_prefix
    assert d.parameters["preset"] == cfg.orchestration.preset
    unscheduled = pipeline_deployment(load_config(REPO / "params.yaml", ["orchestration.cron=''"]))
    assert unscheduled.schedules == []


def test_every_preset_has_an_orchestration_section():
    # presets are overlays: the section may come from the file they extend
    for path in [REPO / "params.yaml", *params_presets()]:
        raw = read_params(path)
        assert set(raw["orchestration"]) == {"deployment", "cron", "timezone", "preset", "experiment_prefix"}, path


def test_systemd_units_run_existing_make_targets_against_one_server():
    import configparser
    import re

    makefile = (REPO / "Makefile").read_text()
    units = {}
    for name in ("zerosearch-prefect", "zerosearch-deploy"):
        unit = configparser.ConfigParser(interpolation=None)
        unit.optionxform = str
        unit.read(REPO / "configs/systemd" / f"{name}.service")
        units[name] = unit
        target = unit["Service"]["ExecStart"].split()[-1]
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), f"{name}: no make target {target!r}"
        assert unit["Install"]["WantedBy"] == "default.target"
    deploy = units["zerosearch-deploy"]
    assert deploy["Unit"]["After"] == "zerosearch-prefect.service"
    port = re.search(r"prefect server start .*--port (\d+)", makefile).group(1)
    assert deploy["Service"]["Environment"] == f"PREFECT_API_URL=http://127.0.0.1:{port}/api"
