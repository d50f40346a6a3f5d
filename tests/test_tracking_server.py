"""Several processes logging at once through one MLflow tracking server lose no metric."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from zerosearch.mlops.server import mlflow_server, mlflow_server_command

STEPS = 150

LOGGER = """
import sys
from tests.conftest import micro_config
from zerosearch.mlops.tracking import stage_run
stage, root = sys.argv[1], sys.argv[2]
cfg = micro_config(__import__("pathlib").Path(root))
with stage_run(stage, cfg, root + "/params.yaml") as tracker:
    for step in range({steps}):
        tracker.log_metrics({{f"{{stage}}_loss": 1.0 / (step + 1), "shared_name": step}}, step=step)
"""


def test_mlflow_server_command_serves_the_repo_database(tmp_path):
    cmd = mlflow_server_command(tmp_path, "127.0.0.1", 5123)
    assert cmd[1] == "server" and cmd[cmd.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path}/mlflow.db"
    assert cmd[cmd.index("--port") + 1] == "5123" and cmd[cmd.index("--workers") + 1] == "1"


@pytest.mark.slow
def test_two_stages_logging_concurrently_lose_no_metric(tmp_path):
    import mlflow

    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    with mlflow_server(tmp_path) as url:
        env = {**os.environ, "MLFLOW_TRACKING_URI": url}
        env["ZEROSEARCH_TRACKING"] = "on"  # tests.conftest turns it off unless set
        # one parent for both, as dvc repro's stages share one; created before they start
        mlflow.set_tracking_uri(url)
        experiment = mlflow.set_experiment("zerosearch")
        parent = mlflow.MlflowClient().create_run(experiment.experiment_id).info.run_id
        env["ZEROSEARCH_PARENT_RUN_ID"] = parent
        procs = [subprocess.Popen([sys.executable, "-c", LOGGER.format(steps=STEPS), stage, str(tmp_path)],
                                  cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
                 for stage in ("train", "evaluate")]
        for p in procs:
            _, stderr = p.communicate(timeout=300)
            assert p.returncode == 0, stderr[-3000:]
        client = mlflow.MlflowClient(tracking_uri=url)
        runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
        assert sorted(r.data.tags["stage"] for r in runs) == ["evaluate", "train"]
        for run in runs:
            stage = run.data.tags["stage"]
            history = client.get_metric_history(run.info.run_id, f"{stage}_loss")
            assert sorted(m.step for m in history) == list(range(STEPS))
            assert {m.step: m.value for m in history}[9] == pytest.approx(0.1)
            assert len(client.get_metric_history(run.info.run_id, "shared_name")) == STEPS
