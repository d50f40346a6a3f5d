"""The evaluate stage as a Prefect flow (what ``zerosearch evaluate`` / ``dvc repro evaluate`` run).

Scores every method on every benchmark (strict EM, substring EM, F1; ``eval.headline_metric``
first), writes ``metrics/evaluate.json``, the predictions and
the plots, logs them to the pipeline's MLflow run, registers the agent (policy, BM25 index and
rollout settings) in the model registry, and publishes the table as a Prefect markdown
artifact (key ``evaluate-table``).
"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.entry import main
from tasks.common import load_config_task, write_environment_task, write_metrics_task
from tasks.evaluate import evaluate_task, register_agent_task
from zerosearch.mlops.tracking import stage_run


@flow(name="evaluate")
def evaluate_flow(params: str = "params.yaml", overrides: list[str] | None = None) -> dict:
    cfg = load_config_task(params, overrides)
    with stage_run("evaluate", cfg, params) as tracker:
        result = evaluate_task(cfg, tracker)
        result["registered_model"] = register_agent_task(cfg, result["table"], tracker)
    write_metrics_task(result["metrics"], cfg.path("metrics") / "evaluate.json")
    write_environment_task("evaluate", cfg.path("metrics"))
    registered = f"\n\nPolicy registered in MLflow as `{result['registered_model']}`." if result["registered_model"] else ""
    create_markdown_artifact(
        key="evaluate-table",
        markdown=f"# Evaluation (engine `{cfg.eval.engine}`, greedy)\n\n{result['markdown']}{registered}",
        description="strict EM, substring EM and F1 per benchmark and method")
    return result


if __name__ == "__main__":
    main(evaluate_flow)
