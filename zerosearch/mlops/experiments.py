"""DVC experiments from a preset and overrides: what the pipeline flow runs.

A run asked for from the Prefect UI or a schedule names a preset (``params.yaml`` or one of
``configs/``) and ``section.key=value`` overrides. ``experiment_changes`` validates them through
the config schema and turns them into the ``-S`` changes relative to the repository's
``params.yaml``; ``run_experiment`` runs ``dvc exp run`` with them, so every run is a versioned
DVC experiment and DVC alone decides which stages are stale. ``--temp`` (the default) runs it
in a temporary copy of the repository: the workspace and its ``params.yaml`` stay as they were,
so runs never inherit each other's changes. The experiment's metrics are read back from its
git ref (``experiment_file``).
"""

from __future__ import annotations

import collections
import json
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from zerosearch.config import (
    ConfigError,
    apply_overrides,
    flatten,
    load_config,
    validate_config,
)
from zerosearch.tether import tethered

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
RUNNING_RE = re.compile(r"Running stage '([^']+)'")
SKIPPED_RE = re.compile(r"Stage '([^']+)' didn't change")


class ExperimentFailed(RuntimeError):
    """``dvc exp run`` exited non-zero; ``stage`` is the stage that was running (or None)."""

    def __init__(self, name: str, stage: str | None, returncode: int, tail: str):
        self.name, self.stage, self.returncode, self.tail = name, stage, returncode, tail
        where = f"stage '{stage}'" if stage else "before any stage ran"
        super().__init__(f"experiment {name!r} failed in {where} (dvc exit code {returncode}):\n{tail}")


@dataclass
class ExperimentResult:
    name: str
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def experiment_name(prefix: str = "run", now: datetime | None = None) -> str:
    """``<prefix>-YYYYmmdd-HHMMSS`` (UTC): a valid, sortable DVC experiment name."""
    now = now or datetime.now(timezone.utc)
    return f"{prefix}-{now:%Y%m%d-%H%M%S}"


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise ConfigError(f"experiment name {name!r}: use letters, digits, '.', '_' or '-' (git ref rules)")
    return name


def experiment_changes(preset: str | Path, overrides: Sequence[str] = (), params: str | Path = "params.yaml") -> list[str]:
    """The ``key=value`` changes that turn ``params`` into ``preset`` plus ``overrides``.

    The result is validated against the schema first: a bad key or value raises ConfigError
    naming it, before any DVC work starts. Values are written as JSON (valid YAML for DVC)."""
    target = load_config(preset, list(overrides))  # validates preset + overrides
    base_raw = yaml.safe_load(Path(params).read_text(encoding="utf-8")) or {}
    if "extends" in base_raw:  # DVC reads and -S edits params.yaml itself: it must be complete
        raise ConfigError(f"{params}: the params file DVC runs must be complete, not an overlay (`extends`)")
    validate_config(base_raw, str(params))
    wanted, current = flatten(target.model_dump()), flatten(base_raw)
    changes = [f"{k}={json.dumps(v)}" for k, v in wanted.items() if current.get(k, object()) != v]
    # Sanity: params.yaml with these changes must be exactly the requested config.
    if validate_config(apply_overrides(base_raw, changes, str(params)), str(params)) != target:
        raise ConfigError(f"could not express {preset} + {list(overrides)} as changes to {params}")
    return changes


def dvc_exp_command(changes: Sequence[str], name: str, temp: bool = True) -> list[str]:
    cmd = ["dvc", "exp", "run", "--name", check_name(name), *(["--temp"] if temp else [])]
    for change in changes:
        cmd += ["--set-param", change]
    return cmd


def run_experiment(changes: Sequence[str], name: str, repo: str | Path = ".", *, temp: bool = True,
                   on_line: Callable[[str], None] = lambda line: None) -> ExperimentResult:
    """Run ``dvc exp run`` in ``repo``, streaming its output lines to ``on_line``.

    Raises ExperimentFailed naming the stage that was running when it failed."""
    result = ExperimentResult(name)
    tail: collections.deque[str] = collections.deque(maxlen=40)
    # Under a tether (zerosearch.tether): when this process is stopped (SIGTERM, Ctrl-C) or
    # killed, DVC and the stage it runs stop with it instead of training on as orphans.
    proc = subprocess.Popen(tethered(dvc_exp_command(changes, name, temp)), cwd=repo, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            on_line(line)
            if m := RUNNING_RE.search(line):
                result.ran.append(m.group(1))
            elif m := SKIPPED_RE.search(line):
                result.skipped.append(m.group(1))
    except BaseException:  # SystemExit from SIGTERM, KeyboardInterrupt: stop the run, then leave
        proc.terminate()  # the tether stops DVC's whole process group
        proc.wait()
        raise
    code = proc.wait()
    if code != 0:
        raise ExperimentFailed(name, result.ran[-1] if result.ran else None, code, "\n".join(tail))
    return result


def experiment_ref(name: str, repo: str | Path = ".") -> str:
    """The git ref DVC stored experiment ``name`` under (``refs/exps/.../<name>``)."""
    out = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=repo,
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:  # not a git repository (yet): it has no experiments
        raise LookupError(f"no DVC experiment named {name!r} in {repo}: {out.stderr.strip()}")
    refs = out.stdout.split()
    found = [r for r in refs if r.rsplit("/", 1)[-1] == name]
    if not found:
        raise LookupError(f"no DVC experiment named {name!r} in {repo} (see `dvc exp list`)")
    return found[-1]


def experiment_file(name: str, path: str, repo: str | Path = ".") -> str:
    """A git-tracked file (e.g. ``metrics/evaluate.json``) as experiment ``name`` left it."""
    ref = experiment_ref(name, repo)
    out = subprocess.run(["git", "show", f"{ref}:{path}"], cwd=repo, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise LookupError(f"experiment {name!r} has no {path}: {out.stderr.strip()}")
    return out.stdout


def experiment_metrics(name: str, path: str, repo: str | Path = ".") -> dict[str, Any]:
    return json.loads(experiment_file(name, path, repo))


def resolve_preset(preset: str | Path, repo: str | Path = ".") -> Path:
    """``params.yaml`` / a path (relative to ``repo``) / a name under ``configs/`` -> the file."""
    repo = Path(repo)
    for candidate in (repo / preset, repo / "configs" / f"{preset}.yaml", Path(preset)):
        if candidate.is_file():
            return candidate
    names = sorted(str(p.relative_to(repo / "configs").with_suffix(""))
                   for p in (repo / "configs").rglob("*.yaml") if not {"accelerate", "systemd", "prompts", "studies"} & set(p.parts))
    raise ConfigError(f"unknown preset {preset!r}: give params.yaml, a path, or one of {names}")


def has_experiment(name: str, repo: str | Path = ".") -> bool:
    try:
        experiment_ref(name, repo)
    except LookupError:
        return False
    return True


def remove_experiment(name: str, repo: str | Path = ".") -> None:
    """``dvc exp remove <name>`` (a ref left by an experiment whose outputs are incomplete)."""
    subprocess.run(["dvc", "exp", "remove", check_name(name)], cwd=repo, check=True, capture_output=True, text=True)


def locked_out_md5(lock: dict[str, Any], path: str) -> str | None:
    """The md5 a ``dvc.lock`` mapping records for the stage output ``path`` (None: not an output)."""
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if out.get("path") == path:
                return out.get("md5")
    return None


def cache_dir(repo: str | Path = ".") -> Path:
    """The repository's DVC cache (``dvc cache dir``; ``.dvc/cache`` when dvc cannot say)."""
    try:
        out = subprocess.run(["dvc", "cache", "dir"], cwd=repo, capture_output=True, text=True, check=False)
    except OSError:  # no dvc on PATH (reading a study's results needs no DVC run)
        return Path(repo) / ".dvc" / "cache"
    return Path(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else Path(repo) / ".dvc" / "cache"


def experiment_output(name: str, path: str, repo: str | Path = ".", cache: Path | None = None) -> str:
    """A DVC-cached stage output (e.g. ``metrics/evaluate_predictions.jsonl``) as experiment
    ``name`` left it: its md5 from the experiment's ``dvc.lock``, its text from the cache."""
    md5 = locked_out_md5(yaml.safe_load(experiment_file(name, "dvc.lock", repo)) or {}, path)
    if not md5 or md5.endswith(".dir"):
        raise LookupError(f"experiment {name!r}: {path} is not a cached file output in its dvc.lock")
    file = (cache or cache_dir(repo)) / "files" / "md5" / md5[:2] / md5[2:]
    if not file.is_file():
        raise LookupError(f"experiment {name!r}: {path} ({md5}) is not in the DVC cache {file.parent.parent}")
    return file.read_text(encoding="utf-8")
