"""The data stage as a Prefect flow: ``python -m flows.data`` (what ``dvc repro data`` runs).

Writes the QA files, the corpus and the BM25 index under ``base.paths.data`` and the stage's
metrics to ``metrics/data.json``; logs to the pipeline's MLflow run (nested run ``data``).
"""

from __future__ import annotations

from prefect import flow

from flows.entry import main
from tasks.common import load_config_task, write_environment_task, write_metrics_task
from tasks.data import data_task
from zerosearch.mlops.tracking import stage_run


@flow(name="data")
def data_flow(params: str = "params.yaml", overrides: list[str] | None = None) -> dict:
    cfg = load_config_task(params, overrides)
    with stage_run("data", cfg, params) as tracker:
        stats = data_task(cfg, tracker)
    write_metrics_task(stats, cfg.path("metrics") / "data.json")
    write_environment_task("data", cfg.path("metrics"))
    return stats


if __name__ == "__main__":
    main(data_flow)
