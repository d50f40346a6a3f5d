"""End to end: `dvc repro` on a fresh copy of the repository (the real tiny world; model
training shortened in the copy's params.yaml so the whole pipeline, the in-process simulator
included, runs in a few minutes on 2 cores), then a second `dvc repro` that has nothing to do,
and a search answered by the SFT simulator served by `transformers serve`. Marked slow:
`make test-slow` / `pytest -m slow`.
The full-length defaults are what `make run` runs."""

import json
import os

import pytest
from transformers import AutoModelForCausalLM

from tests.conftest import REPO, copy_repository
from tests.conftest import run_checked as run
from zerosearch.mlops.replication import DvcStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory):
    dst = tmp_path_factory.mktemp("repo")
    return dst, copy_repository(dst)


@pytest.fixture(scope="module")
def reproduced(repo_copy):
    """The copy after one `dvc repro`: every test that reads what the pipeline built uses this,
    so each of them also runs alone (`-k`)."""
    repo, env = repo_copy
    run(["dvc", "repro"], repo, env)
    return repo, env


def test_dvc_repro_builds_everything_then_has_nothing_to_do(reproduced):
    repo, env = reproduced
    data = json.loads((repo / "metrics" / "data.json").read_text())
    assert data["rows_train"] == 1500 and data["bm25_documents"] == data["documents"]
    for split in ("tiny_single", "tiny_multi", "tiny_ood"):
        assert (repo / "data" / "test" / f"{split}.parquet").exists()
    base = json.loads((repo / "metrics" / "base.json").read_text())
    assert base["policy_final_loss"] < 2.5  # well below ln(1024) = 6.9: it learned the text
    for name in ("policy", "simulator"):
        model = AutoModelForCausalLM.from_pretrained(repo / "models" / "base" / name)
        assert model.config.model_type == "qwen2"
    sft = json.loads((repo / "metrics" / "simulator_sft.json").read_text())
    assert sft["pairs_train"] > 0 and (repo / "models" / "simulator_sft" / "sft_heldout.jsonl").exists()
    # train: against the in-process simulator (the default engine and backend), checkpointed
    train = json.loads((repo / "metrics" / "train.json").read_text())
    assert train["engine"] == "simulated" and train["steps"] == 3 and train["stats"]["queries"] > 0
    assert AutoModelForCausalLM.from_pretrained(repo / "models" / "policy").config.model_type == "qwen2"
    assert (repo / "models" / "train_checkpoints" / "step_000003" / "state.json").exists()
    curve = (repo / "metrics" / "train_curve.csv").read_text().splitlines()
    assert curve[0].startswith("step,reward_mean") and len(curve) == 4
    # validation: before training and after the last of the 3 steps (val_every 20)
    validation = (repo / "metrics" / "train_validation.csv").read_text().splitlines()
    assert validation[0].startswith("step,val_em,val_substring_em,val_f1") and len(validation) == 3
    assert train["val"]["step"] == 3 and train["val"]["headline_metric"] == "em"
    # evaluate: the table for every method and benchmark, predictions, plots
    table = json.loads((repo / "metrics" / "evaluate.json").read_text())
    methods = {"direct", "rag", "base_agent", "agent"}
    assert set(table) == methods | {"headline"} and table["headline"]["metric"] == "em"
    assert all(0.0 <= table[m]["average"][k] <= 1.0 for m in methods for k in ("em", "substring_em", "f1"))
    assert len((repo / "metrics" / "evaluate_predictions.jsonl").read_text().splitlines()) == 4 * 3 * 20
    assert (repo / "metrics" / "evaluate_plots" / "train_curves.png").exists()
    second = run(["dvc", "repro"], repo, env)
    assert "didn't change" in second and "Running stage" not in second
    # the headline numbers are DVC's metrics: one short row per stage
    out = run(["dvc", "metrics", "show", "--json"], repo, env)  # stdout, then any stderr warning
    shown = json.JSONDecoder().raw_decode(out[out.index("{"):])[0][""]["data"]
    assert shown["metrics/headline/data.json"]["data"]["train_questions"] == data["rows_train"]
    assert set(shown["metrics/headline/evaluate.json"]["data"]) == {f"{m}_em" for m in methods}


def test_stage_runs_are_in_mlflow_under_one_parent(reproduced):
    import mlflow

    repo, env = reproduced
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("zerosearch")
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.data.tags["stage"] for r in children) == ["base", "data", "evaluate", "simulator_sft", "train"]
    assert len({r.data.tags["mlflow.parentRunId"] for r in children}) == 1
    base_run = next(r for r in children if r.data.tags["stage"] == "base")
    assert len(client.get_metric_history(base_run.info.run_id, "policy_loss")) == 300
    train_run = next(r for r in children if r.data.tags["stage"] == "train")
    assert len(client.get_metric_history(train_run.info.run_id, "noisy_fraction")) == 3
    assert client.search_model_versions("name='zerosearch-policy'")  # the evaluate stage registered it


def test_served_simulator_answers_searches(reproduced):
    """`zerosearch serve --check`: transformers serve with the SFT simulator, one search."""
    repo, env = reproduced
    out = run(["zerosearch", "serve", "--check", "--set", "simulator.backend=transformers"], repo, env)
    assert "/v1" in out
    n_docs = int(out.split("check: ")[1].split(" documents")[0])
    assert n_docs >= 1


def test_a_deployment_run_with_overrides_is_a_dvc_experiment_and_an_mlflow_run(reproduced, monkeypatch):
    """The pipeline deployment (schedule from params) started with overrides, executed by a
    Prefect runner as a UI-triggered run would be: a `dvc exp run --temp` that reruns only what
    the overrides touch, an MLflow run tagged with the experiment, a registered policy."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.testing.utilities import prefect_test_harness

    from flows.deploy import pipeline_deployment
    from zerosearch.config import load_config
    from zerosearch.mlops.experiments import experiment_metrics
    from zerosearch.mlops.tracking import experiment_runs

    repo, env = reproduced
    run(["git", "add", "-A"], repo, env)  # what a user commits after `dvc repro`: dvc.lock, metrics
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "reproduced"], repo, env)
    params_before = (repo / "params.yaml").read_text()
    for key in ("PATH", "HF_HUB_OFFLINE", "MLFLOW_TRACKING_URI"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.delenv("ZEROSEARCH_TRACKING", raising=False)
    cfg = load_config(repo / "params.yaml")
    with prefect_test_harness():
        deployment_id = pipeline_deployment(cfg, repo=str(repo)).apply()
        flow_run = run_deployment(f"pipeline/{cfg.orchestration.deployment}", timeout=0,
                                  parameters={"overrides": ["eval.max_samples=10"], "experiment": "e2e-exp"})

        from prefect.settings import PREFECT_API_URL

        # what a worker does with a run started from the UI: execute it by id
        run(["prefect", "flow-run", "execute", str(flow_run.id)], REPO,
            {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()})

        async def read():
            async with get_client() as client:
                return await client.read_deployment(deployment_id), await client.read_flow_run(flow_run.id)

        deployment, finished = asyncio.run(read())
    assert [s.schedule.cron for s in deployment.schedules] == [cfg.orchestration.cron]
    assert finished.state.is_completed(), finished.state.message
    shown = run(["dvc", "exp", "show", "--json"], repo, env)
    assert "e2e-exp" in shown
    table = experiment_metrics("e2e-exp", "metrics/evaluate.json", repo)
    assert table["agent"]["tiny_single"]["n"] == 10  # the override reached the evaluate stage
    assert (repo / "params.yaml").read_text() == params_before  # --temp: the workspace is untouched
    runs = experiment_runs("e2e-exp", "zerosearch")
    assert [r["stage"] for r in runs] == ["pipeline", "evaluate"]  # only the stale stage ran
    assert runs[1]["registered_model"].startswith("models:/zerosearch-policy/")


def test_experiments_of_one_base_seed_share_base_and_simulator_through_dvcs_run_cache(reproduced, monkeypatch):
    """What the replication study counts on: the first experiment with a new ``base.seed`` builds
    its base models and simulator; the next one with that base seed (another ``train.seed``)
    restores both from DVC's run cache and trains only; the same params again restore train too."""
    repo, env = reproduced
    exp = ["dvc", "exp", "run", "--temp", "-S", "base.seed=1", "-S", "eval.max_samples=4"]
    first = run([*exp, "-n", "cache-b1-s0"], repo, env)
    assert "Running stage 'base'" in first and "Running stage 'simulator_sft'" in first
    second = run([*exp, "-S", "train.seed=1", "-n", "cache-b1-s1"], repo, env)
    for stage in ("base", "simulator_sft"):
        assert f"Running stage '{stage}'" not in second and f"Stage '{stage}' is cached" in second
    assert "Running stage 'train'" in second
    again = run([*exp, "-S", "train.seed=1", "-n", "cache-b1-s1-again"], repo, env)
    assert "Running stage 'train'" not in again and "Stage 'train' is cached" in again
    # each experiment reads back its own train.json (cached, not in git); the restored one is
    # the same bytes as the run it was restored from, and another train.seed trained otherwise
    monkeypatch.setenv("PATH", env["PATH"])  # the store asks `dvc cache dir`
    store = DvcStore(repo)
    trained = {name: store.metrics(name, "train.json") for name in ("cache-b1-s0", "cache-b1-s1", "cache-b1-s1-again")}
    assert trained["cache-b1-s1-again"] == trained["cache-b1-s1"] != trained["cache-b1-s0"]
