"""bench/base_probe.py builds a base stage with overrides into its own directory and scores the
base agent alone, with the answer breakdown."""

import json
import sys

from tests.conftest import MICRO, REPO, micro_config
from zerosearch.stages import data as data_stage

sys.path.insert(0, str(REPO / "bench"))
import base_probe


def test_a_probe_builds_the_base_policy_and_scores_the_base_agent_alone(tmp_path):
    data_stage.run(micro_config(tmp_path))
    out = tmp_path / "probe"
    summary = base_probe.probe(REPO / "params.yaml", out, [*MICRO, f"base.paths.data={tmp_path}/data", "base.seed=3"])
    assert (out / "models" / "base" / "policy" / "config.json").exists()
    assert set(summary["table"]) == {"base_agent"} and 0.0 <= summary["table"]["base_agent"]["average"]["em"] <= 1.0
    records = [json.loads(line) for line in (out / "metrics" / "evaluate_predictions.jsonl").read_text().splitlines()]
    assert {r["method"] for r in records} == {"base_agent"} and len(records) == summary["breakdown"]["questions"]
    assert json.loads((out / "probe.json").read_text())["overrides"][-1] == "base.seed=3"
