"""The evaluate stage as a Prefect flow (what ``zerosearch eval`` / ``dvc repro evaluate`` run).

Scores every method on every benchmark, writes ``metrics/eval.json``, the predictions and the
plots, logs them to the pipeline's MLflow run, registers the policy, and publishes the table
as a Prefect markdown artifact (key ``eval-table``).
"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from tasks.common import load_config_task, write_metrics_task
from tasks.evaluate import evaluate_task
from zerosearch.tracking import stage_run


@flow(name="evaluate")
def evaluate_flow(params: str = "params.yaml", overrides: list[str] | None = None) -> dict:
    cfg = load_config_task(params, overrides)
    with stage_run("evaluate", cfg, params) as tracker:
        result = evaluate_task(cfg, tracker)
    write_metrics_task(result["table"], cfg.path("metrics") / "eval.json")
    registered = f"\n\nPolicy registered in MLflow as `{result['registered_model']}`." if result["registered_model"] else ""
    create_markdown_artifact(
        key="eval-table",
        markdown=f"# Evaluation (EM, engine `{cfg.eval.engine}`)\n\n{result['markdown']}{registered}",
        description="EM per benchmark and method")
    return result


if __name__ == "__main__":
    evaluate_flow()
