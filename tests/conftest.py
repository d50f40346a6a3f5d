"""Shared fixtures: a micro config (tiny world shrunk to seconds) with every path in tmp."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from zerosearch.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"  # real files for tests (../shared/fixtures/README.md); may be absent
os.environ.setdefault("ZEROSEARCH_TRACKING", "off")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MICRO = [
    "data.world.n_entities=120",
    "data.world.n_train_questions=150",
    "data.world.n_test_questions=30",
    "tiny_models.vocab_size=600",
    "tiny_models.n_demos=40",
    "tiny_models.demo_entities=100",
    *[f"tiny_models.policy.{k}={v}" for k, v in {"hidden_size": 32, "num_layers": 1, "num_heads": 2,
                                                 "num_kv_heads": 1, "intermediate_size": 64,
                                                 "max_position": 512}.items()],
    *[f"{r}.{k}={v}" for r in ("tiny_models.policy_pretrain", "tiny_models.simulator_pretrain", "simulator_sft.train")
      for k, v in {"steps": 2, "batch_size": 2, "seq_len": 64, "warmup_steps": 1}.items()],
    "simulator_sft.n_questions=24",
    "simulator_sft.demo_world_searches=0",
    "train.max_turns=1",
    "train.max_response_tokens=12",
    "train.max_obs_tokens=128",
]


def micro_overrides(root: Path, *extra: str) -> list[str]:
    """Overrides that shrink the repo's params.yaml to test size, writing under ``root``."""
    paths = [f"base.paths.data={root}/data", f"base.paths.models={root}/models",
             f"base.paths.metrics={root}/metrics", f"base.policy_model={root}/models/base/policy",
             f"base.simulator_model={root}/models/base/simulator"]
    return [*MICRO, *paths, *extra]


def micro_config(root: Path, *extra: str) -> Config:
    return load_config(REPO / "params.yaml", micro_overrides(root, *extra))


@pytest.fixture
def micro_cfg(tmp_path: Path) -> Config:
    return micro_config(tmp_path)


@pytest.fixture(scope="module")
def micro_world(tmp_path_factory) -> Path:
    """A micro world with its data and base stages built, shared by one test module."""
    from zerosearch.stages import base as base_stage
    from zerosearch.stages import data as data_stage

    root = tmp_path_factory.mktemp("micro")
    cfg = micro_config(root)
    data_stage.run(cfg)
    base_stage.run(cfg)
    return root


class SearchOnceThenAnswer:
    """A scripted policy (the generator interface): searches the question's text once, then
    answers "x", so every trajectory gets exactly one observation."""

    def __init__(self, tok):
        self.tok = tok

    def generate(self, contexts, max_new_tokens, keys=None):
        out = []
        for ctx in contexts:
            after = self.tok.decode(ctx).split("Question: ")[1]
            question = after.split("\n")[0]
            turn = "<answer> x </answer>" if "<information>" in after else f"<search> {question} </search>"
            out.append(self.tok(turn, add_special_tokens=False)["input_ids"])
        return out


def untimed(metrics: dict) -> dict:
    """``metrics`` without its wall-clock values (``*_seconds``, ``time_*``, ``tokens_per_s``):
    what two runs of one config must agree on."""
    return {k: v for k, v in metrics.items()
            if not (k.endswith("_seconds") or k.startswith("time_") or k == "tokens_per_s")}


def params_presets() -> list[Path]:
    """Every params preset under configs/ (not the accelerate configs, simulator prompt
    templates or study files that live there too)."""
    return [p for p in sorted((REPO / "configs").rglob("*.yaml"))
            if not {"accelerate", "prompts", "studies"} & set(p.relative_to(REPO).parts)]


# ----------------------------------------------------------------------------- repository copies
# The end-to-end tests (tests/test_pipeline_e2e.py, tests/test_replication_e2e.py) run DVC on a
# fresh copy of the repository: the real tiny world with model training shortened (SHORT) so a
# whole pipeline, the in-process simulator included, runs in a few minutes on 2 cores.

SHORT = {("tiny_models", "policy_pretrain", "steps"): 300, ("tiny_models", "n_demos"): 600,
         ("simulator_sft", "n_questions"): 200, ("simulator_sft", "demo_world_searches"): 200,
         ("simulator_sft", "train", "steps"): 60, ("train", "total_steps"): 3, ("train", "save_every"): 2,
         ("eval", "max_samples"): 20,
         # a simulator fine-tuned for 60 steps has no reliable useful/noisy switch yet; the probe
         # hook has its own fast tests (tests/test_probe.py)
         ("simulator", "probe", "enabled"): False}


def run_checked(cmd, cwd, env, timeout: float = 3600) -> str:
    """Run ``cmd``; its stdout + stderr (the test fails, showing their ends, if it exits non-zero)."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def shorten_training(params: Path, short: dict = SHORT) -> None:
    """Set the ``short`` keys (paths of keys -> value) in the params file ``params``."""
    raw = yaml.safe_load(params.read_text())
    for keys, value in short.items():
        node = raw
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    params.write_text(yaml.safe_dump(raw, sort_keys=False))


def copy_repository(dst: Path, short: dict = SHORT) -> dict[str, str]:
    """The repository's files (tracked and untracked, not ignored) copied to ``dst``, training
    shortened (``short``), committed as a fresh git repository; the environment to run its
    commands in: the venv first on PATH, the copy's own code first on PYTHONPATH (the
    ``zerosearch`` script would import the editable install's), MLflow and Prefect under ``dst``."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (REPO / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dst / f)
    shorten_training(dst / "params.yaml", short)
    env = {k: v for k, v in os.environ.items() if k != "ZEROSEARCH_TRACKING"}
    env.update(PATH=f"{Path(sys.executable).parent}:{env['PATH']}", HF_HUB_OFFLINE="1", PYTHONPATH=str(dst),
               PREFECT_HOME=str(dst / ".prefect"), MLFLOW_TRACKING_URI=f"sqlite:///{dst}/mlflow.db")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        run_checked(cmd, dst, env)
    return env
