"""``dvc metrics show`` stays readable: dvc.yaml declares as ``metrics`` only each stage's
headline file (a few flat numbers, zerosearch/mlops/headline.py); the full nested files are
plain outputs, written as before."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO
from zerosearch.atomic import write_json
from zerosearch.mlops.headline import MAX_KEYS, STAGES, headline, write_metrics

MAX_ROW = 300  # characters of the longest `dvc metrics show` line (4,241 with the full files declared)


def _declared() -> dict[str, tuple[list[str], list[str]]]:
    """stage -> (its metrics paths, its outs paths), ${base.paths.metrics} resolved."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    metrics_dir = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))["base"]["paths"]["metrics"]

    def paths(entries):
        return [(e if isinstance(e, str) else next(iter(e))).replace("${base.paths.metrics}", metrics_dir)
                for e in entries]

    return {name: (paths(s.get("metrics", [])), paths(s.get("outs", []))) for name, s in stages.items()}


def test_every_declared_dvc_metric_is_a_compact_headline_of_its_stages_full_file():
    """The headline files are in git; the full files of base, simulator_sft and train are in the
    DVC cache (dvc.yaml), so a fresh clone compares those once a run has written them."""
    declared = _declared()
    assert list(declared) == list(STAGES)
    compared = []
    for stage, (metrics, outs) in declared.items():
        assert metrics == [f"metrics/headline/{stage}.json"], stage
        assert f"metrics/{stage}.json" in outs, f"{stage}: the full file is no longer an output"
        shown = json.loads((REPO / metrics[0]).read_text(encoding="utf-8"))
        assert 0 < len(shown) <= MAX_KEYS, (stage, shown)
        assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in shown.values()), shown
        if (REPO / f"metrics/{stage}.json").exists():
            full = json.loads((REPO / f"metrics/{stage}.json").read_text(encoding="utf-8"))
            assert shown == headline(stage, full), f"{metrics[0]} is not the headline of metrics/{stage}.json"
            compared.append(stage)
    assert {"data", "evaluate"} <= set(compared)  # in git: compared on every checkout


@pytest.mark.skipif(shutil.which("dvc", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
                    is None, reason="dvc is not installed")
def test_dvc_metrics_show_prints_short_rows():
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    out = subprocess.run(["dvc", "metrics", "show"], cwd=REPO, env={**os.environ, "PATH": path},
                         capture_output=True, text=True, timeout=300, check=True).stdout
    lines = out.splitlines()
    assert len(lines) == 1 + len(STAGES), out
    assert max(map(len, lines)) <= MAX_ROW, out


def test_write_metrics_keeps_the_full_file_and_adds_its_headline(tmp_path):
    full = {"headline": {"metric": "substring_em", "agent": 0.5, "rag": 0.25},
            "agent": {"average": {"em": 0.4, "substring_em": 0.5}}, "rag": {"average": {"em": 0.2}}}
    write_metrics(full, tmp_path / "evaluate.json")
    write_json(full, tmp_path / "expected.json")
    assert (tmp_path / "evaluate.json").read_bytes() == (tmp_path / "expected.json").read_bytes()
    assert json.loads((tmp_path / "headline" / "evaluate.json").read_text()) == {
        "agent_substring_em": 0.5, "rag_substring_em": 0.25}
    # the one-off command writes the same headline from the full file, without rerunning a stage
    (tmp_path / "headline" / "evaluate.json").unlink()
    subprocess.run([sys.executable, "-m", "zerosearch.mlops.headline", str(tmp_path)], cwd=REPO, check=True,
                   env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True)
    assert json.loads((tmp_path / "headline" / "evaluate.json").read_text()) == {
        "agent_substring_em": 0.5, "rag_substring_em": 0.25}


def test_headlines_of_the_other_stage_variants():
    # paper presets: base resolves hub models (no numbers), simulator SFT may be disabled
    assert headline("base", {"policy_model": "/m/p", "simulator_model": "/m/s"}) == {}
    assert headline("simulator_sft", {"enabled": 0, "simulator_model": "/m/s"}) == {"enabled": 0}
    # train without validation (train.val_every 0): no val column
    assert headline("train", {"steps": 3, "first_reward_mean": 0.1, "final_reward_mean": 0.2}) == {
        "steps": 3, "reward_first": 0.1, "reward_final": 0.2}
    assert headline("data", {"rows_train": 9, "rows_val": 2, "rows_nq": 3, "rows_hotpotqa": 4}) == {
        "train_questions": 9, "test_questions": 7}
    with pytest.raises(ValueError, match="no headline for stage 'deploy'"):
        headline("deploy", {})
