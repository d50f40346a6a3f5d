"""Training checkpoints: ``<root>/step_{N:06d}/`` written atomically, newest found by name.

A checkpoint holds everything a resumed run needs to continue exactly where it stopped:

    step_000010/
      policy/              HF format (safetensors) + tokenizer; a peft adapter when LoRA is on
      critic/              the PPO critic (HF token-classification model), when there is one
      trainer_state.pt     optimizer(s), LR scheduler, torch RNG state(s) (read back with
                           torch.load(weights_only=True): loading it cannot run code)
      state.json           step, config, metric history (the plots file is rebuilt from it)

The directory is written under a temporary name and renamed, so a crash never leaves half a
checkpoint; only the newest ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from zerosearch.atomic import atomic_path

_NAME = re.compile(r"^step_(\d{6,})$")


def checkpoint_path(root: str | Path, step: int) -> Path:
    return Path(root) / f"step_{step:06d}"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (temp dirs of interrupted writes are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / "state.json").exists()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(root: str | Path, step: int, *, policy, tokenizer, trainer_state: dict[str, Any],
                    state: dict[str, Any], critic=None, keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically and prune all but the newest ``keep``."""
    path = checkpoint_path(root, step)
    with atomic_path(path) as tmp:
        tmp.mkdir(parents=True)
        policy.save_pretrained(tmp / "policy", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "policy")
        if critic is not None:
            critic.save_pretrained(tmp / "critic", safe_serialization=True)
        torch.save({**trainer_state, "rng": rng_state()}, tmp / "trainer_state.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=1) + "\n", encoding="utf-8")
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def read_state(path: str | Path) -> dict[str, Any]:
    """``state.json`` of a checkpoint: step, config, metric history (plain JSON)."""
    return json.loads((Path(path) / "state.json").read_text(encoding="utf-8"))


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    """``trainer_state.pt`` of a checkpoint, read with ``weights_only=True``: tensors, numbers,
    strings and containers only, so a planted file cannot run code. Anything else (a pickle
    naming other objects, a truncated or foreign file) is a ``ValueError`` naming the file."""
    file = Path(path) / "trainer_state.pt"
    try:
        return torch.load(file, weights_only=True)
    except Exception as e:  # the unpickler raises many kinds on a planted, cut or foreign file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot resume from {file}: not a trainer state this project wrote ({first}); "
                         "nothing in it was run. Delete the checkpoint or start a fresh run") from None


def config_differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out
