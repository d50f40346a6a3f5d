"""The train stage as a Prefect flow (what ``zerosearch train`` / ``dvc repro train`` run).

RL (``train.algorithm``) against ``train.engine``; the simulator is served for the run when
the engine needs it. Writes ``models/policy``, checkpoints under
``models/train_checkpoints``, ``metrics/train.json``, the curve ``metrics/train_curve.csv`` and
the validations ``metrics/train_validation.csv`` (``train.val_every``).
"""

from __future__ import annotations

import contextlib

from prefect import flow

from flows.entry import main
from tasks.common import load_config_task, write_environment_task, write_metrics_task
from tasks.train import train_task
from zerosearch.mlops.tracking import stage_run
from zerosearch.stages.train import launched_as_main
from zerosearch.tracker import NullTracker


@flow(name="train")
def train_flow(params: str = "params.yaml", overrides: list[str] | None = None, resume: bool = False) -> dict:
    cfg = load_config_task(params, overrides)
    writer = launched_as_main()  # under accelerate launch / torchrun: one MLflow run, one metrics file
    with (stage_run("train", cfg, params) if writer else contextlib.nullcontext(NullTracker())) as tracker:
        summary = train_task(cfg, tracker, resume=resume)
    if writer:
        write_metrics_task(summary, cfg.path("metrics") / "train.json")
        write_environment_task("train", cfg.path("metrics"))
    return summary


if __name__ == "__main__":
    main(train_flow)
