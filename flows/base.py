"""The base stage as a Prefect flow: ``python -m flows.base`` (what ``dvc repro base`` runs).

Builds the tiny tokenizer, policy and simulator (or, for paper presets, checks the hub
models resolve); writes ``metrics/base.json`` and the loss curves ``metrics/base_loss.csv``.
"""

from __future__ import annotations

from prefect import flow

from flows.entry import main
from tasks.base import base_task
from tasks.common import load_config_task, write_environment_task, write_metrics_task
from zerosearch.mlops.tracking import stage_run


@flow(name="base")
def base_flow(params: str = "params.yaml", overrides: list[str] | None = None) -> dict:
    cfg = load_config_task(params, overrides)
    with stage_run("base", cfg, params) as tracker:
        stats = base_task(cfg, tracker)
    write_metrics_task(stats, cfg.path("metrics") / "base.json")
    write_environment_task("base", cfg.path("metrics"))
    return stats


if __name__ == "__main__":
    main(base_flow)
