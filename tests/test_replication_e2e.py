"""End to end: `zerosearch replicate` on a fresh copy of the repository (the real tiny world,
training shortened as in tests/test_pipeline_e2e.py) with a study of one claim, two variants
and three real DVC experiments (`dvc exp run --temp`):

1. `--report-only` before any experiment: nothing finished, the claim not run yet;
2. a run stopped (SIGTERM) while the second experiment trains: it leaves no process behind and
   no ref for the interrupted experiment; the next run skips the finished one and runs the
   other two;
3. the report: per-seed EM per benchmark equal to each experiment's own metrics/evaluate.json,
   means and CIs, docs/REPLICATION.md and the chart;
4. a second run has nothing to do (no experiment, no stage); after `dvc exp remove` of one
   experiment the next run reruns that one only.

Marked slow: `make test-slow` / `pytest -m slow`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import copy_repository
from tests.conftest import run_checked as run
from zerosearch.mlops.experiments import experiment_metrics
from zerosearch.mlops.replication import DvcStore

pytestmark = pytest.mark.slow

BENCHMARKS = {"tiny_single", "tiny_multi", "tiny_ood"}
PER_BENCHMARK = 8  # eval.max_samples of the study's experiments
STUDY = {
    "metric": "substring_em",
    "seeds": {"rl": 2, "base": 1},
    "bootstrap": {"resamples": 300, "seed": 0, "confidence": 0.95},
    # only the trained agent, 8 questions per benchmark, no validation during training
    "common": {"eval.methods": ["agent"], "eval.max_samples": PER_BENCHMARK, "train.val_every": 0},
    "variants": {"default": {"label": "simulator (default)", "overrides": {}},
                 "bm25": {"label": "BM25", "overrides": {"train.engine": "bm25"}, "rl_seeds": 1}},
    "claims": [{"id": 1, "title": "Simulator vs real engine", "paper_table": "simulator type",
                "question": "Does the simulator train as well as BM25?", "vary": ["rl"], "simulator_quality": True,
                "rows": [{"id": "bm25", "variant": "bm25", "paper": 32.81, "paper_label": "real engine"},
                         {"id": "default", "variant": "default", "paper": 30.47, "paper_label": "SFT 3B"}],
                "compare": [{"better": "default", "worse": "bm25"}]}],
}
# the plan: the claim's rows in order, bm25 pinned to RL seed 0
PLANNED = ["rep-bm25-b0-s0", "rep-default-b0-s0", "rep-default-b0-s1"]


def refs(repo: Path) -> dict[str, str]:
    """Experiment name -> the commit its DVC ref points at."""
    out = subprocess.run(["git", "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps"], cwd=repo,
                         capture_output=True, text=True, check=True).stdout.split("\n")
    return {line.split()[1].rsplit("/", 1)[-1]: line.split()[0] for line in out if line.strip()}


def processes_in(repo: Path) -> list[str]:
    """Command lines of the live processes whose working directory is in ``repo``."""
    root, found = str(repo.resolve()), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
            cmdline = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
        except OSError:
            continue
        if cwd == root or cwd.startswith(root + os.sep):
            found.append(f"{pid}: {cmdline}")
    return found


@pytest.fixture(scope="module")
def study_copy(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    env = copy_repository(repo)
    study = tmp_path_factory.mktemp("study") / "study.yaml"  # outside the repo: not in the experiments
    study.write_text(yaml.safe_dump(STUDY, sort_keys=False))
    # unbuffered: the log lines arrive while the command runs; wide: rich wraps no line
    return repo, {**env, "PYTHONUNBUFFERED": "1", "COLUMNS": "400"}, ["zerosearch", "replicate", "--study", str(study)]


@pytest.fixture(scope="module")
def resumed(study_copy):
    """The report-only run before any experiment, the run stopped during the second experiment's
    training, then the run that finishes the study: their outputs and the refs after each."""
    repo, env, replicate = study_copy
    before = run([*replicate, "--report-only"], repo, env)
    proc = subprocess.Popen(replicate, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, second_started, stopped = [], False, False
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        second_started |= f"{PLANNED[1]}: running" in line
        if second_started and "Running stage 'train'" in line:
            time.sleep(5)  # well inside the train stage
            proc.send_signal(signal.SIGTERM)
            stopped = True
            break
    rest, _ = proc.communicate(timeout=300)
    interrupted = "".join(lines) + rest
    assert stopped, f"the second experiment never reached its train stage:\n{interrupted[-4000:]}"
    code = proc.returncode
    for _ in range(60):  # the tether stops DVC's process group when its parent is gone
        if not (left := processes_in(repo)):
            break
        time.sleep(0.5)
    refs_interrupted = refs(repo)
    finished = run(replicate, repo, env)
    return {"before": before, "interrupted": interrupted, "code": code, "left": left,
            "refs_interrupted": refs_interrupted, "finished": finished, "refs": refs(repo)}


def test_report_only_before_any_experiment_says_nothing_is_finished(resumed, study_copy):
    text = " ".join(resumed["before"].split())
    assert "0 of 3 experiments finished" in text and "claim 1 (Simulator vs real engine): not run yet" in text


def test_a_stopped_study_leaves_nothing_running_and_resumes_where_it_stopped(resumed):
    assert resumed["code"] != 0
    assert resumed["left"] == [], f"processes outlived the stopped command: {resumed['left']}"
    assert list(resumed["refs_interrupted"]) == [PLANNED[0]]  # the interrupted experiment has no ref
    out = resumed["finished"]
    assert f"[1/3] {PLANNED[0]}: finished before, skipped" in out
    assert f"[2/3] {PLANNED[1]}: running" in out and f"[3/3] {PLANNED[2]}: running" in out
    assert "ran 2, skipped 1 finished, failed 0" in " ".join(out.split())
    assert out.count("Reproducing experiment") == 2
    # the finished experiment kept its ref: it was not rerun
    assert resumed["refs"][PLANNED[0]] == resumed["refs_interrupted"][PLANNED[0]]


def test_every_planned_experiment_is_a_dvc_experiment_with_its_predictions_cached(resumed, study_copy, monkeypatch):
    repo, env, _ = study_copy
    monkeypatch.setenv("PATH", env["PATH"])  # the store asks `dvc cache dir`
    listed = run(["dvc", "exp", "list", "--name-only"], repo, env).split()
    assert set(PLANNED) <= set(listed) and set(resumed["refs"]) == set(PLANNED)
    store = DvcStore(repo)
    for name in PLANNED:
        assert store.finished(name)
        predictions = store.predictions(name)  # read back from the DVC cache
        assert len(predictions) == len(BENCHMARKS) * PER_BENCHMARK
        assert {p["method"] for p in predictions} == {"agent"} and {p["benchmark"] for p in predictions} == BENCHMARKS
    bm25 = store.metrics(PLANNED[0], "train.json")
    assert bm25["engine"] == "bm25" and store.metrics(PLANNED[1], "train.json")["engine"] == "simulated"


def test_the_report_holds_each_experiments_own_scores_means_and_cis(resumed, study_copy):
    repo, _, _ = study_copy
    report = json.loads((repo / "metrics" / "replication.json").read_text())
    assert report["experiments"] == {"planned": 3, "finished": 3, "missing": []}
    (claim,) = report["claims"]
    rows = {r["id"]: r for r in claim["rows"]}
    assert {r: rows[r]["n_runs"] for r in rows} == {"bm25": 1, "default": 2}
    for row in rows.values():
        assert set(row["benchmarks"]) == BENCHMARKS and row["missing"] == []
        assert [f"rep-{row['variant']}-b{p['base_seed']}-s{p['rl_seed']}" for p in row["per_seed"]] == row["experiments"]
        for p, name in zip(row["per_seed"], row["experiments"], strict=True):
            table = experiment_metrics(name, "metrics/evaluate.json", repo)  # the experiment's own numbers
            for bench in BENCHMARKS:
                assert table["agent"][bench]["n"] == PER_BENCHMARK
                assert p["em"][bench] == pytest.approx(100 * table["agent"][bench]["substring_em"], abs=0.01), (name, bench)
        for key in (*BENCHMARKS, "average"):
            seeds = [p["em"][key] for p in row["per_seed"]]
            assert row["mean"][key] == pytest.approx(sum(seeds) / len(seeds), abs=0.02)
            lo, hi = row["ci"][key]
            assert lo <= row["mean"][key] <= hi and 0 <= lo and hi <= 100
    assert rows["default"]["simulator_quality"]["noisy_share"] is not None  # from the experiments' train.json
    (comparison,) = claim["comparisons"]
    assert comparison["diff"] == pytest.approx(rows["default"]["mean"]["average"] - rows["bm25"]["mean"]["average"], abs=0.02)
    assert comparison["paired_questions"] == len(BENCHMARKS) * PER_BENCHMARK
    assert claim["verdict"] in ("holds", "the opposite", "inconclusive")
    md = (repo / "docs" / "REPLICATION.md").read_text()
    assert "Experiments finished: 3 of 3." in md and "## Claim 1: Simulator vs real engine" in md
    assert f"**Verdict: {claim['verdict']}" in md and f"{rows['default']['mean']['average']:.2f}" in md
    assert (repo / "metrics" / "replication_plots" / "claim1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_second_run_runs_nothing_and_a_removed_experiment_alone_reruns(resumed, study_copy):
    repo, env, replicate = study_copy
    again = run(replicate, repo, env)
    assert "ran 0, skipped 3 finished, failed 0" in " ".join(again.split())
    assert "Reproducing experiment" not in again and "Running stage" not in again
    assert refs(repo) == resumed["refs"]
    removed = PLANNED[2]
    run(["dvc", "exp", "remove", removed], repo, env)
    assert removed not in refs(repo)
    third = run(replicate, repo, env)
    assert "ran 1, skipped 2 finished, failed 0" in " ".join(third.split())
    assert third.count("Reproducing experiment") == 1 and f"Reproducing experiment '{removed}'" in third
    now = refs(repo)
    assert set(now) == set(PLANNED) and all(now[n] == resumed["refs"][n] for n in PLANNED[:2])
    report = json.loads((repo / "metrics" / "replication.json").read_text())
    assert report["experiments"]["finished"] == 3


def test_the_report_is_an_mlflow_run_with_the_claims_numbers(resumed, study_copy):
    import mlflow

    from zerosearch.config import load_config

    repo, env, _ = study_copy
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(load_config(repo / "params.yaml").base.mlflow_experiment)
    runs = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("stage") == "replication"]
    report = json.loads((repo / "metrics" / "replication.json").read_text())
    default = next(r for r in report["claims"][0]["rows"] if r["id"] == "default")
    latest = max(runs, key=lambda r: r.info.start_time)
    assert latest.data.metrics["claim1.default.average"] == pytest.approx(default["mean"]["average"])
