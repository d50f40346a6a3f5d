"""The whole pipeline as one Prefect flow: what a person starts from the Prefect UI or a schedule.

Parameters: a preset (``params.yaml``, ``tiny``, ``paper/grpo-qwen2.5-3b-sft``, or a path),
``section.key=value`` overrides (``train.algorithm=ppo``, ``train.total_steps=50``) and an
experiment name. Steps:

1. ``plan-experiment``: the preset and overrides are validated through the config schema and
   turned into ``-S`` changes to ``params.yaml`` (a bad key fails the run here, naming it).
2. ``dvc-exp-run``: ``dvc exp run --temp --name <experiment> -S ...``. Every run is a versioned
   DVC experiment; DVC alone decides which stages are stale (no Prefect caching of stages).
   Its output streams into the flow-run logs; a failure names the stage that failed. No
   retries here: the transient parts (simulator server start, simulator requests) retry
   inside the stages, and a failed stage should be looked at, not rerun blindly.
3. ``publish-results`` (retried: it talks to the MLflow server): reads the experiment's
   ``metrics/evaluate.json`` from its git ref, finds the MLflow runs tagged with the experiment
   name and the policy version the evaluate stage registered, and publishes a markdown
   artifact with the EM table and the links.

    python -m flows.pipeline --help
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.session import flow_session
from zerosearch.agent.evaluation import markdown_tables
from zerosearch.config import load_config
from zerosearch.mlops.experiments import (
    ExperimentFailed,
    ExperimentResult,
    check_name,
    experiment_changes,
    experiment_metrics,
    experiment_name,
    resolve_preset,
    run_experiment,
)
from zerosearch.mlops.tracking import experiment_runs, tracking_uri


def artifact_key(name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "experiment-" + re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")


@task(name="plan-experiment", cache_policy=NO_CACHE)
def plan_experiment(repo: str, preset: str, overrides: list[str]) -> list[str]:
    path = resolve_preset(preset, repo)
    changes = experiment_changes(path, overrides, Path(repo) / "params.yaml")
    get_run_logger().info("preset %s, %d change(s) to params.yaml: %s", path, len(changes), changes or "none")
    return changes


@task(name="dvc-exp-run", cache_policy=NO_CACHE)
def dvc_exp_run(repo: str, changes: list[str], name: str, temp: bool) -> ExperimentResult:
    logger = get_run_logger()
    try:
        result = run_experiment(changes, name, repo, temp=temp, on_line=logger.info)
    except ExperimentFailed as e:
        create_markdown_artifact(
            key=artifact_key(name), description=f"experiment {name}: failed",
            markdown=f"# Experiment `{name}` failed\n\nFailing stage: **{e.stage or '(none started)'}** "
                     f"(dvc exit code {e.returncode}).\n\nChanges: `{changes}`\n\n```\n{e.tail}\n```\n")
        raise
    logger.info("stages run: %s; up to date: %s", result.ran or "none", result.skipped or "none")
    return result


@task(name="publish-results", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[2, 10, 30])
def publish_results(repo: str, result: ExperimentResult, preset: str, overrides: list[str]) -> dict:
    cfg = load_config(resolve_preset(preset, repo), overrides)
    table = experiment_metrics(result.name, f"{cfg.base.paths.metrics}/evaluate.json", repo)
    runs = experiment_runs(result.name, cfg.base.mlflow_experiment, root=repo)
    registered = next((r["registered_model"] for r in runs if r.get("registered_model")), None)
    links = "\n".join(f"- `{r['stage']}`: [{r['run_id']}]({r['url']})" for r in runs) or "- (no MLflow runs found)"
    markdown = (
        f"# Experiment `{result.name}`\n\n"
        f"Preset `{preset}`, overrides `{overrides}`.\n\n"
        f"Stages run: {', '.join(result.ran) or 'none'}; up to date: {', '.join(result.skipped) or 'none'}.\n\n"
        f"## Evaluation (engine `{cfg.eval.engine}`)\n\n"
        f"{markdown_tables(table, cfg.data.benchmarks, cfg.eval.headline_metric)}\n\n"
        f"## MLflow ({tracking_uri(repo)})\n\n{links}\n\n"
        f"Registered policy: `{registered or 'not registered'}`\n\n"
        f"Compare: `dvc exp show`, `dvc metrics diff`, or the MLflow UI's compare view.\n")
    create_markdown_artifact(key=artifact_key(result.name), markdown=markdown,
                             description=f"experiment {result.name}: results tables and MLflow links")
    return {"experiment": result.name, "table": table, "mlflow_runs": runs, "registered_model": registered,
            "ran": result.ran, "skipped": result.skipped}


@flow(name="pipeline")
def pipeline_flow(preset: str = "params.yaml", overrides: list[str] | None = None, experiment: str | None = None,
                  experiment_prefix: str = "run", repo: str = ".", temp: bool = True) -> dict:
    """Run the pipeline as a DVC experiment: ``preset`` plus ``overrides`` (``section.key=value``),
    named ``experiment`` (default ``<experiment_prefix>-<UTC time>``)."""
    overrides = list(overrides or [])
    name = check_name(experiment or experiment_name(experiment_prefix))
    changes = plan_experiment(repo, preset, overrides)
    result = dvc_exp_run(repo, changes, name, temp)
    return publish_results(repo, result, preset, overrides)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="params.yaml", help="params.yaml, a name under configs/, or a path")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--name", default=None, help="experiment name (default run-<UTC time>)")
    ap.add_argument("--workspace", action="store_true", help="run in the workspace instead of a temp copy")
    args = ap.parse_args()
    with flow_session():
        pipeline_flow(args.preset, args.overrides, args.name, temp=not args.workspace)


if __name__ == "__main__":
    main()
