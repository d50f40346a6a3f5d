"""The layout's rules, checked: import-linter's contracts (pyproject.toml) and DVC deps that
cover every project module a stage's command imports.

The import closure is read from the source (``ast``), counting imports inside functions too: a
lazy import still runs when its function does, so it can change what the stage writes.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("zerosearch", "flows", "tasks")


def module_file(module: str) -> Path | None:
    """The source file of a project module (a package's ``__init__.py``), or None."""
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def imported_modules(path: Path, module: str) -> set[str]:
    """Project modules ``path`` imports anywhere in its body (``from pkg import sub`` counts
    ``pkg.sub`` when it is a module), plus the packages above each of them."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            names = [target] + [f"{target}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in PACKAGES and module_file(name):
                parts = name.split(".")
                found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return found


def import_closure(entry: str) -> set[str]:
    seen, todo = set(), [entry]
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        path = module_file(mod)
        if path is not None:
            todo.extend(imported_modules(path, mod) - seen)
    return seen


def stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def entry_module(stage: str, spec: dict) -> str:
    m = re.fullmatch(r"python -m ([\w.]+)", spec["cmd"].strip())
    assert m, f"stage {stage}: cmd {spec['cmd']!r} should be `python -m flows.{stage}`"
    return m.group(1)


def code_deps(spec: dict) -> list[str]:
    return [d for d in spec.get("deps", []) if d.split("/")[0] in PACKAGES]


def covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(REPO).as_posix()
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("stage", list(stages()))
def test_each_stage_runs_its_own_flow(stage):
    assert entry_module(stage, stages()[stage]) == f"flows.{stage}"


@pytest.mark.parametrize("stage", list(stages()))
def test_dvc_deps_cover_every_module_the_stage_imports(stage):
    spec = stages()[stage]
    deps = code_deps(spec)
    files = {module_file(m) for m in import_closure(entry_module(stage, spec))} - {None}
    missing = sorted(str(f.relative_to(REPO)) for f in files if not covered(f, deps))
    assert not missing, f"dvc.yaml stage {stage!r} imports modules its deps do not list: {missing}"


@pytest.mark.parametrize("stage", list(stages()))
def test_dvc_deps_name_only_code_the_stage_imports(stage):
    """Narrow deps: every code dep holds at least one module of the stage's import closure,
    so an edit to code the stage never runs does not rerun it."""
    spec = stages()[stage]
    files = {module_file(m) for m in import_closure(entry_module(stage, spec))} - {None}
    unused = [d for d in code_deps(spec) if not any(covered(f, [d]) for f in files)]
    assert not unused, f"dvc.yaml stage {stage!r} lists code deps it never imports: {unused}"


def test_the_closure_follows_lazy_and_package_imports():
    closure = import_closure("flows.evaluate")
    assert {"zerosearch.stages.evaluate", "zerosearch.mlops.registry", "zerosearch.agent.rollout",
            "zerosearch.lm.kv_forward", "zerosearch.protocol", "zerosearch", "tasks.common"} <= closure
    assert "zerosearch.stages.train" not in closure
    assert "zerosearch.lm.kv_forward" not in import_closure("flows.data")


def test_import_linter_contracts_hold():
    linter = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(linter), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def minimal_code_deps(stage: str) -> list[str]:
    """The narrowest code deps for ``stage``: its closure's files, a folder where the closure
    holds every module in it."""
    files = {module_file(m).relative_to(REPO).as_posix() for m in import_closure(f"flows.{stage}") if module_file(m)}
    every = {p.relative_to(REPO).as_posix() for d in PACKAGES for p in (REPO / d).rglob("*.py")}
    deps = set(files)
    for folder in sorted({str(Path(f).parent) for f in files}, key=len):
        inside = {f for f in every if f.startswith(folder + "/")}
        if folder not in PACKAGES and inside <= files:
            deps = {d for d in deps if not d.startswith(folder + "/")} | {folder}
    return sorted(deps)


if __name__ == "__main__":  # python tests/test_architecture.py: the deps to paste into dvc.yaml
    for name in stages():
        print(f"{name}:\n" + "\n".join(f"      - {d}" for d in minimal_code_deps(name)))


def test_every_csv_plot_names_its_columns():
    """`dvc plots show` draws only a CSV's last column unless the plot names them (the train curve
    showed tokens_per_s alone): every top-level plot names x and y, the train curve's columns
    are ones the train stage writes, and no stage declares a CSV as a plot of its own."""
    from zerosearch.stages.train import CURVE_COLUMNS

    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    for stage, body in spec["stages"].items():
        for entry in body.get("plots", []):
            name = next(iter(entry)) if isinstance(entry, dict) else entry
            assert not str(name).endswith(".csv"), f"stage {stage} plots {name}: draw it with a top-level plot"
    images = [p for p in spec["plots"] if isinstance(p, str)]  # image directories (the replication charts)
    assert all(not p.endswith(".csv") for p in images), images
    plots = {next(iter(p)): next(iter(p.values())) for p in spec["plots"] if isinstance(p, dict)}
    assert {"base_loss", "simulator_sft_loss", "train_reward", "validation"} <= set(plots)
    for name, plot in plots.items():
        assert plot["x"] == "step" and plot["y"], name
        for file, columns in plot["y"].items():
            if file.endswith("train_curve.csv"):
                assert set(columns) <= set(CURVE_COLUMNS), (name, columns)
