"""The pipeline flow as a Prefect deployment: scheduled retraining plus ad-hoc runs from the UI.

``pipeline_deployment(cfg)`` builds the deployment from the ``orchestration`` section of the
params (name, cron schedule and its time zone, the preset and experiment-name prefix scheduled
runs use). ``serve(cfg)`` registers it with the Prefect API (``PREFECT_API_URL``) and serves it:
this process is the worker that runs scheduled runs and runs started from the UI ("Run" /
"Custom run" on the deployment page, where preset, overrides and experiment name are
parameters), and the replication study's deployment (``replicate_deployment``: no schedule; a
UI run takes ``claims``, ``seeds``, ``base_seeds`` and ``report_only``). ``zerosearch deploy``
calls it.

    prefect server start                                        # UI and API on 127.0.0.1:4200
    PREFECT_API_URL=http://127.0.0.1:4200/api zerosearch deploy # serve the deployment
"""

from __future__ import annotations

from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from flows.pipeline import pipeline_flow
from flows.replicate import replicate_flow
from zerosearch.config import Config


def pipeline_deployment(cfg: Config, repo: str = ".") -> RunnerDeployment:
    o = cfg.orchestration
    schedules = [Cron(o.cron, timezone=o.timezone)] if o.cron else []
    return pipeline_flow.to_deployment(
        name=o.deployment,
        schedules=schedules,
        parameters={"preset": o.preset, "overrides": [], "experiment": None,
                    "experiment_prefix": o.experiment_prefix, "repo": repo},
        description="zerosearch pipeline as a DVC experiment: "
                    + (f"scheduled '{o.cron}' ({o.timezone})" if o.cron else "no schedule (UI runs only)"),
        tags=["zerosearch"],
    )


REPLICATE_DEPLOYMENT = "zerosearch-replicate"


def replicate_deployment(repo: str = ".") -> RunnerDeployment:
    """The replication study (flows/replicate.py), started from the UI only: resumable, so a
    second run after an interruption runs only the unfinished experiments."""
    return replicate_flow.to_deployment(
        name=REPLICATE_DEPLOYMENT,
        parameters={"claims": None, "seeds": None, "base_seeds": None, "report_only": False, "repo": repo},
        description="zerosearch replication study (configs/studies/replication.yaml): every variant x seed a DVC "
                    "experiment, then docs/REPLICATION.md; UI runs only",
        tags=["zerosearch", "replication"],
    )


def serve(cfg: Config, repo: str = ".") -> None:
    from prefect import serve as prefect_serve

    prefect_serve(pipeline_deployment(cfg, repo), replicate_deployment(repo))
