"""The replication study: plan, resumability, bootstrap statistics and the report.

No DVC runs here: a fake store and runner stand in for the experiments (the real ones are
``dvc exp run --temp`` through ``zerosearch.mlops.experiments``, tested in test_experiments.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from zerosearch.mlops import bootstrap
from zerosearch.mlops.experiments import ExperimentFailed, locked_out_md5
from zerosearch.mlops.replication import Collected, estimate, run_study
from zerosearch.mlops.replication_report import (
    GENERATED_BY,
    render_markdown,
    results,
    write_report,
)
from zerosearch.mlops.study import counts, load_study, parse_study, plan

REPO = Path(__file__).resolve().parents[1]
BENCHES = ("tiny_single", "tiny_multi")


def study(**select):
    return load_study(REPO / "configs" / "studies" / "replication.yaml").select(**select)


# ----------------------------------------------------------------------------- plan

def test_default_plan_counts_shared_variants_once_with_deterministic_names():
    experiments = plan(study())
    names = [e.name for e in experiments]
    assert len(names) == len(set(names)) == 69
    per = counts(experiments)
    # claims 1, 2 and 5 vary 3 base x 3 RL seeds; 3 and 4 only the RL seed; baselines pin RL seed 0
    assert per["default"] == 9 and per["bm25"] == 9 and per["fixed-p05"] == 9
    assert per["unmasked"] == 3 and per["ppo"] == 3 and per["baselines"] == 3
    assert "rep-default-b2-s1" in names and "rep-unmasked-b0-s2" in names and "rep-unmasked-b1-s0" not in names
    assert {e.name for e in experiments if e.variant == "baselines"} == {f"rep-baselines-b{b}-s0" for b in range(3)}
    assert plan(study()) == experiments  # deterministic order


def test_plan_overrides_carry_the_seeds_the_variant_and_the_common_ones():
    by_name = {e.name: e for e in plan(study())}
    ppo = by_name["rep-ppo-b0-s2"].overrides
    assert 'train.algorithm="ppo"' in ppo and "train.seed=2" in ppo and "base.seed=0" in ppo
    assert 'eval.methods=["agent"]' in ppo
    base = by_name["rep-baselines-b1-s0"].overrides
    assert 'eval.methods=["direct", "rag", "base_agent"]' in base and 'eval.methods=["agent"]' not in base


def test_selecting_claims_and_seeds():
    two = plan(study(claims=[2], rl_seeds=2, base_seeds=1))
    assert sorted(e.name for e in two) == sorted(f"rep-{v}-b0-s{s}" for v in ("default", "fixed-p05", "fixed-p00")
                                                 for s in (0, 1))
    assert len(plan(study(claims=[3, 4], rl_seeds=5))) == 5 * 5  # default + unmasked + 3 algorithms
    with pytest.raises(Exception, match="unknown claim"):
        study(claims=[9])


def test_a_study_naming_an_unknown_row_or_variant_is_refused():
    raw = {"metric": "em", "seeds": {"rl": 1, "base": 1}, "variants": {"a": {"overrides": {}}},
           "claims": [{"id": 1, "title": "t", "rows": [{"id": "a", "variant": "b"}]}]}
    with pytest.raises(Exception, match="unknown variant"):
        parse_study(raw)
    raw["claims"][0]["rows"][0]["variant"] = "a"
    raw["claims"][0]["compare"] = [{"better": "a", "worse": "zz"}]
    with pytest.raises(Exception, match="not in the claim"):
        parse_study(raw)


def test_estimate_counts_train_and_evaluate_per_experiment_and_each_new_base_and_simulator():
    experiments = plan(study())
    measured = {"train": 400.0, "evaluate_per_question": 0.02, "questions": 600, "data": 5.0, "base": 900.0,
                "simulator_sft": 1000.0, "hardware": "2 CPU cores"}
    est = estimate(experiments, measured, workspace_base_seed=0)
    assert est["new_base_seeds"] == 2
    # SFT per base seed: the policy-size simulator and the large one (the untuned one has none), minus the built one
    assert est["simulator_sft_runs"] == 3 * 2 - 1
    assert est["parts"]["train"] == 69 * 400.0
    evaluate_methods = 66 * 1 + 3 * 3
    assert est["parts"]["evaluate"] == pytest.approx(0.02 * 600 * evaluate_methods)
    assert est["seconds"] == pytest.approx(sum(est["parts"].values()))
    # the large simulator is pretrained from scratch once per base seed, on top of its SFT
    est = estimate(experiments, {**measured, "scratch_pretrain": 2500.0}, workspace_base_seed=0)
    assert est["parts"]["scratch simulator pretraining"] == 3 * 2500.0


def test_the_scratch_simulators_pretraining_is_scaled_by_parameters_and_tokens():
    from zerosearch.config import load_config
    from zerosearch.lm.models import shape_parameter_count
    from zerosearch.mlops.replication import scratch_pretrain_seconds

    cfg = load_config(REPO / "params.yaml")
    ratio = (shape_parameter_count(cfg.simulator_sft.scratch.shape, cfg.tiny_models.vocab_size)
             / shape_parameter_count(cfg.tiny_models.policy, cfg.tiny_models.vocab_size))
    assert 3 < ratio < 5  # "several times larger than the policy"
    assert scratch_pretrain_seconds(cfg, 100.0) == pytest.approx(100.0 * ratio)  # same tokens as the policy's


# ----------------------------------------------------------------------------- resumability

class FakeStore:
    def __init__(self, finished=(), partial=()):
        self.done, self.partial, self.discarded = set(finished), set(partial), []

    def finished(self, name):
        return name in self.done

    def discard(self, name):
        if name in self.partial:
            self.partial.discard(name)
            self.discarded.append(name)

    def predictions(self, name):
        return []

    def metrics(self, name, file):
        return {}


def test_finished_experiments_are_skipped_and_interrupted_or_failed_ones_rerun():
    experiments = plan(study(claims=[3], rl_seeds=2))  # default s0, s1; unmasked s0, s1
    names = [e.name for e in experiments]
    store = FakeStore(finished={names[0]}, partial={names[2]})  # names[2]: a ref left without outputs
    calls = []

    def runner(e):
        calls.append(e.name)
        if e.name == names[3]:
            raise ExperimentFailed(e.name, "train", 1, "boom")
        store.done.add(e.name)

    first = run_study(experiments, store, runner)
    assert first.skipped == [names[0]] and first.ran == [names[1], names[2]]
    assert list(first.failed) == [names[3]] and "train" in first.failed[names[3]]
    assert store.discarded == [names[2]]  # removed before its rerun
    calls.clear()
    second = run_study(experiments, store, runner)  # resumed: only the failed one runs again
    assert calls == [names[3]] and second.skipped == names[:3]


def test_the_predictions_output_is_found_in_an_experiments_dvc_lock():
    lock = {"stages": {"evaluate": {"outs": [{"path": "metrics/evaluate.json", "md5": "a"},
                                             {"path": "metrics/evaluate_predictions.jsonl", "md5": "0123abcd"}]}}}
    assert locked_out_md5(lock, "metrics/evaluate_predictions.jsonl") == "0123abcd"
    assert locked_out_md5(lock, "metrics/other.jsonl") is None


SLEEPING_DVC = """#!PYTHON
import os, time
open(os.environ["FAKE_DVC_PID"], "w").write(str(os.getpid()))
print("Running stage 'train':", flush=True)
time.sleep(120)
"""
STUDY_PROCESS = """
import sys
from zerosearch.mlops.experiments import run_experiment
from zerosearch.tether import exit_on_termination_signals
exit_on_termination_signals()
run_experiment([], "rep-default-b0-s0", sys.argv[1])
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_stopped_or_killed_study_leaves_no_experiment_running(tmp_path, sig):
    """The command running an experiment is stopped (SIGTERM) or killed: `dvc exp run` (a fake
    one that trains for two minutes) stops with it instead of training on as an orphan next
    to the rerun."""
    from tests.test_serving import read_pid, wait_gone

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "dvc"
    fake.write_text(SLEEPING_DVC.replace("#!PYTHON", f"#!{sys.executable}"))
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(REPO),
           "FAKE_DVC_PID": str(tmp_path / "dvc.pid")}
    study = subprocess.Popen([sys.executable, "-c", STUDY_PROCESS, str(tmp_path)], env=env, stdout=subprocess.DEVNULL)
    dvc = read_pid(tmp_path / "dvc.pid", timeout=30)
    study.send_signal(sig)
    code = study.wait(timeout=30)
    if sig == signal.SIGTERM:
        assert code == 128 + sig  # it left through its cleanup
    assert wait_gone(dvc, timeout=15), "dvc exp run outlived the command that started it"


def test_the_dvc_cache_is_found_without_dvc_on_path(tmp_path, monkeypatch):
    from zerosearch.mlops.experiments import cache_dir

    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert cache_dir(tmp_path) == tmp_path / ".dvc" / "cache"


def test_the_stages_the_study_shares_can_be_restored_from_dvcs_run_cache():
    """The study relies on DVC's run cache to run base and simulator_sft once per base seed and
    train once per (variant, seeds) (the baselines variant reuses the default run's policy).
    DVC saves a stage to it only when every output is cached or is a metric or plot
    (dvc/stage/__init__.py, Stage.run: ``run_cache=not no_cache_outs``)."""
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        stages = {s.name: s for s in repo.index.stages}
    blocking = {name: [str(o) for o in stages[name].outs if not o.use_cache and not (o.is_metric or o.is_plot)]
                for name in ("base", "simulator_sft", "train")}
    assert blocking == {"base": [], "simulator_sft": [], "train": []}


# ----------------------------------------------------------------------------- statistics

def synthetic(p: float, bases=(0,), rls=(0, 1, 2), n=400, seed=0, benches=BENCHES) -> dict:
    """scores[base][rl][benchmark][question] drawn Bernoulli(p), questions named per world."""
    rng = np.random.default_rng(seed)
    return {b: {s: {bench: {f"w{b}-{bench}-{q}": float(rng.random() < p) for q in range(n)} for bench in benches}
                for s in rls} for b in bases}


def test_correctness_and_per_seed_em_from_prediction_records():
    records = [{"method": "agent", "benchmark": "tiny_single", "id": "1", "question": "q1", "em": 1.0, "substring_em": 1.0},
               {"method": "agent", "benchmark": "tiny_single", "id": "2", "question": "q2", "em": 0.0, "substring_em": 1.0},
               {"method": "agent", "benchmark": "tiny_multi", "id": None, "question": "q3", "em": 0.0, "substring_em": 0.0},
               {"method": "rag", "benchmark": "tiny_single", "id": "1", "question": "q1", "em": 0.0, "substring_em": 0.0}]
    got = bootstrap.correctness(records, "agent", "substring_em")
    assert got == {"tiny_single": {"1": 1.0, "2": 1.0}, "tiny_multi": {"q3": 0.0}}
    assert bootstrap.run_em(got) == {"tiny_single": 1.0, "tiny_multi": 0.0, "average": 0.5}


def test_the_confidence_interval_contains_the_true_mean_and_narrows_with_more_data():
    scores = synthetic(0.4, bases=(0, 1), n=300)
    lo, hi = bootstrap.confidence_interval(scores, resamples=1000, seed=1)
    assert lo < 0.4 < hi and lo < bootstrap.point_estimate(scores) < hi
    small = bootstrap.confidence_interval(synthetic(0.4, n=40), resamples=1000, seed=1)
    assert (small[1] - small[0]) > (hi - lo)


def test_base_seeds_that_answered_the_same_questions_share_one_draw_of_them():
    # the world has its own seed (data.world.seed): every base seed answers the same questions,
    # so two bases that score them alike are no more evidence about the questions than one
    rng = np.random.default_rng(0)
    one_run = {"b": {f"q{q}": float(rng.random() < 0.4) for q in range(300)}}
    one, copies = {0: {0: one_run}}, {0: {0: one_run}, 1: {0: one_run}}
    draws = bootstrap.draw({0: {"b": list(one_run["b"])}, 1: {"b": list(one_run["b"])}}, 50, rng)
    assert draws.questions[(0, "b")][1] is draws.questions[(1, "b")][1]
    apart = bootstrap.draw({0: {"b": ["x", "y"]}, 1: {"b": ["u", "v"]}}, 50, rng)
    assert apart.questions[(0, "b")][1] is not apart.questions[(1, "b")][1]
    width = {name: np.subtract(*bootstrap.confidence_interval(s, resamples=2000, seed=3)[::-1])
             for name, s in (("one", one), ("copies", copies))}
    assert width["copies"] == pytest.approx(width["one"], rel=0.1)  # independent draws: ~0.71x


def test_verdicts_clear_difference_holds_reversed_is_the_opposite_equal_is_inconclusive():
    good, bad = synthetic(0.6, seed=1), synthetic(0.3, seed=2)
    assert bootstrap.difference(good, bad, resamples=500)["verdict"] == bootstrap.HOLDS
    reversed_ = bootstrap.difference(bad, good, resamples=500)
    assert reversed_["verdict"] == bootstrap.OPPOSITE and reversed_["ci"][1] < 0
    same = bootstrap.difference(good, good, resamples=500)
    assert same["verdict"] == bootstrap.INCONCLUSIVE and same["diff"] == 0
    close = bootstrap.difference(synthetic(0.5, seed=3, n=100), synthetic(0.5, seed=4, n=100), resamples=500)
    assert close["verdict"] == bootstrap.INCONCLUSIVE and close["ci"][0] < 0 < close["ci"][1]
    assert bootstrap.verdict(0.1, 0.2) == "holds" and bootstrap.verdict(-0.2, -0.1) == "the opposite"


def test_the_difference_is_paired_by_question_within_a_world():
    # two rows with a large per-question spread but a constant +0.1 edge on the same questions:
    # pairing removes the question spread, so the CI is tight around 0.1
    rng = np.random.default_rng(0)
    difficulty = rng.random(200)
    worse = {0: {s: {"b": {str(q): float(difficulty[q] > 0.5) for q in range(200)}} for s in range(3)}}
    better = {0: {s: {"b": {str(q): float(difficulty[q] > 0.4) for q in range(200)}} for s in range(3)}}
    d = bootstrap.difference(better, worse, resamples=500)
    true = float(np.mean(difficulty > 0.4) - np.mean(difficulty > 0.5))
    assert d["diff"] == pytest.approx(true) and d["ci"][0] > 0 and d["ci"][1] - d["ci"][0] < 0.08
    assert d["questions"] == 200 and d["bases"] == [0]


def test_bootstrap_is_seeded():
    s = synthetic(0.4)
    assert bootstrap.confidence_interval(s, seed=3, resamples=300) == bootstrap.confidence_interval(s, seed=3, resamples=300)


# ----------------------------------------------------------------------------- report

def fake_collected(st, experiments, effect=0.25) -> Collected:
    """Prediction records per experiment: the default variant answers better than the others."""
    preds, train = {}, {}
    for i, e in enumerate(experiments):
        rng = np.random.default_rng(i)
        methods = ["direct", "rag", "base_agent"] if e.variant == "baselines" else ["agent"]
        recs = []
        for m in methods:
            p = 0.2 + (effect if (e.variant == "default" and m == "agent") else 0.0)
            for bench in BENCHES:
                for q in range(60):
                    hit = float(rng.random() < p)
                    recs.append({"method": m, "benchmark": bench, "id": f"{e.base_seed}-{q}", "question": f"q{q}",
                                 "em": hit, "substring_em": hit, "f1": hit})
        preds[e.name] = recs
        train[e.name] = {"stats": {"queries": 100, "noisy": 30, "malformed": 1, "repaired": 5}}
    return Collected(preds, train)


def test_report_from_synthetic_results_has_tables_verdicts_and_charts(tmp_path):
    st = study(rl_seeds=2, base_seeds=1)
    experiments = plan(st)
    missing = "rep-ppo-b0-s1"
    collected = fake_collected(st, [e for e in experiments if e.name != missing])
    report = results(st, experiments, collected)
    assert report["experiments"] == {"planned": len(experiments), "finished": len(experiments) - 1, "missing": [missing]}
    claims = {c["id"]: c for c in report["claims"]}
    assert claims[2]["verdict"] == "holds"  # default (curriculum) clearly above fixed p = 0.5
    assert claims[4]["comparisons"][0]["verdict"] == "the opposite"  # reinforce expected better, default is
    default = next(r for r in claims[2]["rows"] if r["id"] == "default")
    assert default["n_runs"] == 2 and len(default["per_seed"]) == 2 and set(default["mean"]) == {*BENCHES, "average"}
    assert default["ci"]["average"][0] < default["mean"]["average"] < default["ci"]["average"][1]
    assert 30 < default["mean"]["average"] < 60  # percent
    ppo = next(r for r in claims[4]["rows"] if r["id"] == "ppo")
    assert ppo["missing"] == [missing] and ppo["n_runs"] == 1
    assert claims[1]["rows"][2]["simulator_quality"]["noisy_share"] == 30.0
    assert claims[1]["comparisons"][0]["paper_diff"] == pytest.approx(34.47 - 32.81)

    paths = write_report(report, tmp_path)
    data = json.loads((tmp_path / "metrics" / "replication.json").read_text())
    assert data["claims"][1]["verdict"] == "holds"
    md = (tmp_path / "docs" / "REPLICATION.md").read_text()
    assert f"Generated by `{GENERATED_BY}`, do not edit" in md
    assert md.count("## Claim ") == 5 and "**Verdict: holds**" in md and "**Verdict: the opposite**" in md
    assert "| `fixed-p05`: fixed noise p = 0.5 |" in md and "32.59" in md
    assert "Seeds that vary: RL seeds (`train.seed`) 0-1; fixed: `base.seed` 0" in md
    for k in range(1, 6):
        png = tmp_path / "metrics" / "replication_plots" / f"claim{k}.png"
        assert png in paths and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert render_markdown(data) == md  # regenerated from the JSON alone


def test_report_of_a_study_not_run_yet_says_so(tmp_path):
    st = study(claims=[3], rl_seeds=1)
    report = results(st, plan(st), Collected({}, {}))
    assert report["claims"][0]["verdict"] == "not run yet"
    write_report(report, tmp_path)
    assert "**Verdict: not run yet**" in (tmp_path / "docs" / "REPLICATION.md").read_text()


# ----------------------------------------------------------------------------- CLI

def test_replicate_help_and_dry_run_print_the_plan_and_a_time_from_measured_stage_times(tmp_path, monkeypatch):
    import shutil

    from typer.testing import CliRunner

    from zerosearch.cli import app

    help_ = CliRunner().invoke(app, ["replicate", "--help"])
    assert help_.exit_code == 0 and all(o in help_.output for o in ("--claims", "--seeds", "--dry-run", "--report-only"))
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    for name, body in {"train.json": {"seconds": 1800.0, "steps": 40}, "base.json": {"policy_seconds": 900.0},
                       "simulator_sft.json": {"seconds": 900.0},
                       "data.json": {"rows_train": 1500, "rows_tiny_single": 200, "rows_tiny_multi": 200, "rows_tiny_ood": 200}}.items():
        (metrics / name).write_text(json.dumps(body))
    (metrics / "train_validation.csv").write_text("step,val_em,val_seconds\n0,0.1,9.0\n20,0.2,9.0\n")
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(app, ["replicate", "--dry-run", "--claims", "3", "--seeds", "2",
                                   "--study", str(REPO / "configs" / "studies" / "replication.yaml")], terminal_width=200)
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert "replication plan: 4 experiments" in text
    # 4 x 1800 s of training + 4 x 600 questions x 0.1 s (9 s per 90 validated questions); base seed 0
    # and its simulator are the workspace's own
    assert "estimated time: 2.1 h (train 2.0 h, evaluate 0.1 h, base 0.0 h, simulator_sft 0.0 h" in text


def test_the_replicate_deployment_is_unscheduled_with_the_study_parameters():
    from flows.deploy import REPLICATE_DEPLOYMENT, replicate_deployment

    d = replicate_deployment("/repo")
    assert d.name == REPLICATE_DEPLOYMENT and d.schedules in ([], None)
    assert d.parameters == {"claims": None, "seeds": None, "base_seeds": None, "report_only": False, "repo": "/repo"}


def test_report_only_without_any_experiment_says_so(tmp_path, monkeypatch):
    """`zerosearch replicate --report-only` before any experiment ran, in a directory that is
    not even a git repository yet: every row is missing, every claim not run yet."""
    import shutil

    from typer.testing import CliRunner

    from zerosearch.cli import app

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(app, ["replicate", "--report-only", "--claims", "3", "--seeds", "1",
                                   "--study", str(REPO / "configs" / "studies" / "replication.yaml")], terminal_width=200)
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert "claim 3 (State masking): not run yet" in text and "0 of 2 experiments finished" in text
    report = json.loads((tmp_path / "metrics" / "replication.json").read_text())
    assert report["experiments"]["missing"] == ["rep-default-b0-s0", "rep-unmasked-b0-s0"]
    assert "Experiments finished: 0 of 2" in (tmp_path / "docs" / "REPLICATION.md").read_text()
    assert (tmp_path / "metrics" / "replication_plots" / "claim3.png").exists()
