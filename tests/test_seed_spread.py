"""bench/seed_spread.py reads a run from a directory or from a DVC experiment, and merges the
methods of a run's sources (the study evaluates the base agent and the agent separately)."""

import json
import subprocess
import sys

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import seed_spread


def _evaluate(**averages) -> dict:
    return {"headline": {"metric": "em"}, **{m: {"average": {"em": v, "substring_em": v + 0.01}} for m, v in averages.items()}}


def test_a_run_merges_a_directory_and_an_experiment(tmp_path):
    run_dir = tmp_path / "b1"
    (run_dir / "metrics").mkdir(parents=True)
    (run_dir / "metrics" / "evaluate.json").write_text(json.dumps(_evaluate(base_agent=0.2, rag=0.1)))
    repo = tmp_path / "repo"
    (repo / "metrics").mkdir(parents=True)
    (repo / "metrics" / "evaluate.json").write_text(json.dumps(_evaluate(agent=0.3)))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "exp"],
                ["update-ref", "refs/exps/ab/cdef/rep-default-b1-s0", "HEAD"]):
        subprocess.run([*git, *cmd], cwd=repo, check=True)
    assert seed_spread.read_run(f"{run_dir}+exp:rep-default-b1-s0", repo) == {"base_agent": 0.2, "agent": 0.3}
    repo_arg, groups = seed_spread.parse_args(["--repo", str(repo), "--group", "base.seed", f"b1={run_dir}"])
    assert repo_arg == repo and groups == {"base.seed": {"b1": str(run_dir)}}
