"""Training checkpoints: ``<root>/step_{N:06d}/`` written atomically, newest found by name.

A checkpoint holds everything a resumed run needs to continue exactly where it stopped:

    step_000010/
      policy/              HF format (safetensors) + tokenizer; a peft adapter when LoRA is on
      critic/              the PPO critic (HF token-classification model), when there is one
      trainer_state.pt     optimizer(s), LR scheduler, torch RNG state(s) (read back with
                           torch.load(weights_only=True): loading it cannot run code)
      state.json           step, config, metric history (the plots file is rebuilt from it)

The directory is written under a temporary name and renamed, so a crash never leaves half a
checkpoint; only the newest ``keep`` checkpoints are kept. A checkpoint damaged afterwards (a
disk filled up, a file cut by a copy, a hand edit) is found by ``checkpoint_problem`` before
anything is loaded, and ``--resume`` falls back to the newest intact one, saying which file
was wrong.
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


def _safetensors_problem(file: Path) -> str | None:
    """Why a safetensors file cannot be whole (cut, not one), from its header alone."""
    size = file.stat().st_size
    try:
        with open(file, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or 8 + n > size:
                return f"{file.name} is cut or not safetensors ({size} bytes, header claims {n})"
            header = json.loads(f.read(n))
    except (OSError, ValueError) as e:
        return f"{file.name} has an unreadable header ({type(e).__name__})"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    need = 8 + n + max(ends, default=0)
    return None if size == need else f"{file.name} is cut: {size} of {need} bytes"


def checkpoint_problem(path: str | Path, *, critic: bool = False, check_state=None) -> str | None:
    """What is wrong with checkpoint ``path`` (None when it is whole): ``state.json`` readable
    with its keys, ``trainer_state.pt`` loadable as data, the policy's (and the critic's)
    ``config.json`` and weight files present and not cut. Nothing is loaded into a model.
    ``check_state(path, state)`` runs on ``state.json`` before anything else is read (the
    trainer refuses a changed config there: an error, not damage)."""
    return _inspect(Path(path), critic, check_state)[0]


def _inspect(path: Path, critic: bool, check_state) -> tuple[str | None, dict[str, Any] | None]:
    """``(checkpoint_problem, the trainer state it loaded to check it; None with a problem)``: a
    resume uses that state rather than reading the file (optimizer states) a second time."""
    try:
        state = read_state(path)
        missing = [k for k in ("step", "config", "history") if k not in state]
    except (OSError, ValueError) as e:
        return f"state.json is unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})", None
    if missing:
        return f"state.json lacks {missing}", None
    if check_state is not None:
        check_state(path, state)
    try:
        trainer_state = read_trainer_state(path)
    except TrainerStateError as e:
        return f"trainer_state.pt is {e.reason}", None
    for part in ("policy", "critic") if critic else ("policy",):
        folder = path / part
        if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
            return f"{part}/config.json is missing", None
        weights = sorted(folder.glob("*.safetensors"))
        if not weights:
            return f"{part}/ holds no .safetensors weights", None
        for file in weights:
            problem = _safetensors_problem(file)
            if problem:
                return f"{part}/{problem}", None
    return None, trainer_state


def intact_checkpoint(root: str | Path, *, critic: bool = False, check_state=None,
                      warn=print) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint under ``root`` without a ``checkpoint_problem``, with the trainer
    state read to check it; each newer damaged one is named with its problem through ``warn``.
    None when there is none at all; a ``ValueError`` listing every problem when all are damaged."""
    found = list_checkpoints(root)
    problems = []
    for path in reversed(found):
        problem, trainer_state = _inspect(path, critic, check_state)
        if problem is None:
            for damaged, why in problems:
                warn(f"--resume: {damaged} is damaged ({why}); resuming from {path.name}, the newest intact checkpoint")
            return path, trainer_state
        problems.append((path, problem))
    if problems:
        raise ValueError("cannot resume: every checkpoint is damaged:\n  "
                         + "\n  ".join(f"{p}: {why}" for p, why in problems)
                         + "\nstart a fresh run (without --resume) or restore a checkpoint")
    return None


def read_state(path: str | Path) -> dict[str, Any]:
    """``state.json`` of a checkpoint: step, config, metric history (plain JSON)."""
    return json.loads((Path(path) / "state.json").read_text(encoding="utf-8"))


class TrainerStateError(ValueError):
    """``trainer_state.pt`` is not one this project wrote; ``reason`` says how (nothing in it ran)."""

    def __init__(self, file: Path, reason: str):
        self.reason = reason
        super().__init__(f"cannot resume from {file}: {reason}; nothing in it was run. Delete the checkpoint "
                         "or start a fresh run")


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    """``trainer_state.pt`` of a checkpoint, read with ``weights_only=True``: tensors, numbers,
    strings and containers only, so a planted file cannot run code. Anything else (a pickle
    naming other objects, a truncated or foreign file) is a ``ValueError`` naming the file."""
    file = Path(path) / "trainer_state.pt"
    try:
        return torch.load(file, weights_only=True)
    except Exception as e:  # the unpickler raises many kinds on a planted, cut or foreign file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrainerStateError(file, f"not a trainer state this project wrote ({first})") from None


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
