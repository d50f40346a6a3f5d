"""The replication study as a Prefect flow: what ``zerosearch replicate`` runs and what a person
starts from the Prefect UI (deployment ``replicate/zerosearch-replicate``, ``zerosearch deploy``).

Parameters: ``claims`` (ids; empty: all), ``seeds`` / ``base_seeds`` (how many RL / base seeds;
empty: ``configs/studies/replication.yaml``'s), ``report_only``. Steps, each a task in the UI:

1. ``plan-replication``: the study's experiments (``zerosearch.mlops.study.plan``), every
   variant's overrides validated through the config schema (a bad key fails here, naming it).
2. ``replication-experiment``, once per experiment not finished yet: ``dvc exp run --temp``
   (``zerosearch.mlops.replication``: finished ones are skipped, an interrupted one reruns,
   a failed one is recorded and the study goes on).
3. ``replication-report``: ``metrics/replication.json``, ``docs/REPLICATION.md``, the charts,
   the MLflow ``replication`` run, and a Prefect markdown artifact with the verdicts.

    python -m flows.replicate --help
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.session import flow_session
from zerosearch.config import ConfigError, load_config
from zerosearch.mlops.replication import DvcStore, check_plan, dvc_runner, run_study
from zerosearch.mlops.replication_report import build_report, publish
from zerosearch.mlops.study import STUDY_FILE, Experiment, load_study, plan


@task(name="plan-replication", cache_policy=NO_CACHE)
def plan_task(repo: str, study_file: str, claims: list[int] | None, seeds: int | None,
              base_seeds: int | None) -> list[Experiment]:
    study = load_study(Path(repo) / study_file).select(claims, seeds, base_seeds)
    experiments = plan(study)
    if errors := check_plan(experiments, repo):
        raise ConfigError("; ".join(f"variant {v}: {e}" for v, e in errors.items()))
    get_run_logger().info("%d experiments for claims %s", len(experiments), [c.id for c in study.claims])
    return experiments


@task(name="replication-experiment", cache_policy=NO_CACHE, task_run_name="{experiment.name}")
def experiment_task(repo: str, experiment: Experiment) -> None:
    dvc_runner(repo, on_line=get_run_logger().info)(experiment)


@task(name="replication-report", cache_policy=NO_CACHE)
def report_task(repo: str, study_file: str, claims: list[int] | None, seeds: int | None, base_seeds: int | None,
                experiments: list[Experiment]) -> dict:
    study = load_study(Path(repo) / study_file).select(claims, seeds, base_seeds)
    cfg = load_config(Path(repo) / "params.yaml")
    report, paths = build_report(study, experiments, DvcStore(repo, cfg.base.paths.metrics), repo)
    publish(report, paths, cfg, Path(repo) / "params.yaml")
    verdicts = "\n".join(f"- claim {c['id']} ({c['title']}): **{c['verdict']}**" for c in report["claims"])
    create_markdown_artifact(key="replication", description="replication study: verdicts per claim",
                             markdown=f"# Replication study\n\n{verdicts}\n\nFull report: `docs/REPLICATION.md`.\n")
    return report


@flow(name="replicate")
def replicate_flow(claims: list[int] | None = None, seeds: int | None = None, base_seeds: int | None = None,
                   report_only: bool = False, repo: str = ".", study_file: str = str(STUDY_FILE)) -> dict:
    """Run the replication study's unfinished experiments (unless ``report_only``), then write its report."""
    experiments = plan_task(repo, study_file, claims, seeds, base_seeds)
    run = None
    if not report_only:
        logger = get_run_logger()
        run = run_study(experiments, DvcStore(repo), lambda e: experiment_task(repo, e), on_event=logger.info)
        logger.info("ran %d, skipped %d (finished before), failed %d", len(run.ran), len(run.skipped), len(run.failed))
    report = report_task(repo, study_file, claims, seeds, base_seeds, experiments)
    return {"report": report, "ran": run.ran if run else [], "skipped": run.skipped if run else [],
            "failed": run.failed if run else {}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--claims", type=lambda s: [int(x) for x in s.split(",")], default=None, help="e.g. 1,2")
    ap.add_argument("--seeds", type=int, default=None, help="RL seeds per variant")
    ap.add_argument("--base-seeds", type=int, default=None, help="base seeds of the claims that vary them")
    ap.add_argument("--report-only", action="store_true", help="only write the report from finished experiments")
    args = ap.parse_args()
    with flow_session():
        out = replicate_flow(args.claims, args.seeds, args.base_seeds, args.report_only)
    raise SystemExit(1 if out["failed"] else 0)


if __name__ == "__main__":
    main()
