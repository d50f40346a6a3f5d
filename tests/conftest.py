"""Shared fixtures: a micro config (tiny world shrunk to seconds) with every path in tmp."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
