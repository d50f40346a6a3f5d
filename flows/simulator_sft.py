"""The simulator SFT stage as a Prefect flow (what ``zerosearch sft`` / ``dvc repro simulator_sft`` run).

Collects (query, documents) pairs from base-policy rollouts against BM25, labels them
useful/noisy, fine-tunes the simulator; writes ``metrics/simulator_sft.json`` and the loss
curve ``metrics/simulator_sft_loss.csv``. With ``simulator_sft.enabled: false`` it records
that the configured simulator is served as is.
"""

from __future__ import annotations

from prefect import flow

from flows.entry import main
from tasks.common import load_config_task, write_environment_task, write_metrics_task
from tasks.simulator_sft import simulator_sft_task
from zerosearch.mlops.tracking import stage_run


@flow(name="simulator_sft")
def simulator_sft_flow(params: str = "params.yaml", overrides: list[str] | None = None) -> dict:
    cfg = load_config_task(params, overrides)
    with stage_run("simulator_sft", cfg, params) as tracker:
        stats = simulator_sft_task(cfg, tracker)
    write_metrics_task(stats, cfg.path("metrics") / "simulator_sft.json")
    write_environment_task("simulator_sft", cfg.path("metrics"))
    return stats


if __name__ == "__main__":
    main(simulator_sft_flow)
