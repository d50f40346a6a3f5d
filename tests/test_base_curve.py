"""bench/base_curve.py pretrains the base policy as the base stage does, saves it every N steps and
scores each saved policy as a base agent."""

import json
import sys

from rich.console import Console
from safetensors.torch import load_file

from tests.conftest import MICRO, REPO, micro_config
from zerosearch.stages import base as base_stage
from zerosearch.stages import data as data_stage

sys.path.insert(0, str(REPO / "bench"))
import base_curve


def test_a_curve_scores_a_policy_every_n_steps_and_its_last_is_the_base_stages_policy(tmp_path):
    cfg = micro_config(tmp_path, "tiny_models.policy_pretrain.steps=5", "base.seed=3")
    data_stage.run(cfg)
    base_stage.run(cfg)
    out = tmp_path / "curve"
    overrides = [*MICRO, f"base.paths.data={tmp_path}/data", "tiny_models.policy_pretrain.steps=5", "base.seed=3"]
    summary = base_curve.curve(REPO / "params.yaml", out, 2, overrides)

    assert [p["step"] for p in summary["points"]] == [2, 4, 5]  # every 2 steps, and the last
    assert all(0.0 <= p["em"] <= 1.0 and 0.0 <= p["gold_in_docs"] <= 1.0 for p in summary["points"])
    assert summary["points"][0]["loss"] > summary["points"][-1]["loss"] > 0
    ours = load_file(out / "step_5" / "model.safetensors")
    stage = load_file(cfg.path("models") / "base" / "policy" / "model.safetensors")
    assert ours.keys() == stage.keys() and all((ours[k] == stage[k]).all() for k in ours)
    assert json.loads((out / "curve.json").read_text())["points"] == summary["points"]
    console = Console(width=120, record=True)
    console.print(base_curve.curve_table(summary))
    rows = [line for line in console.export_text().splitlines() if line.strip("│ ").startswith(("2 ", "4 ", "5 "))]
    assert len(rows) == 3 and f"{summary['points'][-1]['em']:.3f}" in rows[-1]


def test_score_only_scores_the_checkpoints_already_there_without_pretraining(tmp_path, monkeypatch):
    cfg = micro_config(tmp_path, "tiny_models.policy_pretrain.steps=3")
    data_stage.run(cfg)
    out = tmp_path / "curve"
    overrides = [*MICRO, f"base.paths.data={tmp_path}/data", "tiny_models.policy_pretrain.steps=3"]
    first = base_curve.curve(REPO / "params.yaml", out, 2, overrides)

    def no_pretraining(*args):
        raise AssertionError("score_only must not pretrain")

    monkeypatch.setattr(base_curve, "pretrain_with_checkpoints", no_pretraining)
    again = base_curve.curve(REPO / "params.yaml", out, 2, overrides, score_only=True)
    assert again["points"] == first["points"] and again["pretrain_seconds"] is None
    console = Console(width=120, record=True)
    console.print(base_curve.curve_table(again))
    assert "scored only" in console.export_text()
