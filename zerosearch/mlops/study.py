"""The replication study as data (``configs/studies/replication.yaml``) and its plan.

A study has claims; a claim is a table of rows; a row is one variant's evaluation method
(``agent`` unless it says otherwise) next to the paper's number. A variant is a set of
``params.yaml`` overrides. ``plan(study)`` lists the experiments that answer the selected
claims: one per (variant, base seed, RL seed), deduplicated, so a variant several claims use
(the default GRPO run serves claims 1-5) runs once per seed pair. Each is named
``rep-<variant>-b<base seed>-s<RL seed>`` (a DVC experiment name) and carries the overrides
``zerosearch.mlops.experiments.experiment_changes`` turns into ``-S`` changes.

Which seeds a claim varies is part of the claim (``vary: [rl, base]``): RL seeds are
``train.seed = 0..rl-1``, base seeds ``base.seed = 0..base-1``; a seed a claim does not vary is
0. Pure: nothing here runs or reads an experiment.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zerosearch.config import ConfigError

STUDY_FILE = Path("configs/studies/replication.yaml")
VARIANT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,60}")
SEED_KINDS = ("rl", "base")


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    overrides: dict[str, Any]
    rl_seeds: int | None = None  # pinned to the first N RL seeds (None: the claim's)


@dataclass(frozen=True)
class Row:
    id: str
    variant: str
    method: str = "agent"
    paper: float | None = None
    paper_label: str = ""


@dataclass(frozen=True)
class Comparison:
    better: str  # row ids: the paper's expected direction is better > worse
    worse: str


@dataclass(frozen=True)
class Claim:
    id: int
    title: str
    paper_table: str
    question: str
    vary: tuple[str, ...]
    rows: tuple[Row, ...]
    compare: tuple[Comparison, ...]
    simulator_quality: bool = False

    def row(self, row_id: str) -> Row:
        return next(r for r in self.rows if r.id == row_id)


@dataclass(frozen=True)
class Study:
    metric: str
    rl_seeds: int
    base_seeds: int
    resamples: int
    bootstrap_seed: int
    confidence: float
    common: dict[str, Any]
    variants: dict[str, Variant]
    claims: tuple[Claim, ...]

    def select(self, claims: Iterable[int] | None = None, rl_seeds: int | None = None,
               base_seeds: int | None = None) -> Study:
        """The study restricted to ``claims`` (ids), with other seed counts."""
        wanted = None if claims is None else set(claims)
        if wanted is not None and (unknown := wanted - {c.id for c in self.claims}):
            raise ConfigError(f"unknown claim(s) {sorted(unknown)}: the study has {[c.id for c in self.claims]}")
        for n, what in ((rl_seeds, "--seeds"), (base_seeds, "--base-seeds")):
            if n is not None and n < 1:
                raise ConfigError(f"{what} must be at least 1, got {n}")
        return Study(self.metric, rl_seeds or self.rl_seeds, base_seeds or self.base_seeds, self.resamples,
                     self.bootstrap_seed, self.confidence, self.common, self.variants,
                     tuple(c for c in self.claims if wanted is None or c.id in wanted))

    def seeds(self, claim: Claim, variant: str) -> tuple[list[int], list[int]]:
        """(base seeds, RL seeds) of ``variant`` in ``claim``."""
        base = list(range(self.base_seeds)) if "base" in claim.vary else [0]
        rl = list(range(self.rl_seeds)) if "rl" in claim.vary else [0]
        pinned = self.variants[variant].rl_seeds
        return base, rl[:pinned] if pinned else rl


@dataclass(frozen=True)
class Experiment:
    """One DVC experiment of the study."""

    variant: str
    base_seed: int
    rl_seed: int
    overrides: tuple[str, ...] = field(compare=False)  # section.key=value, JSON values

    @property
    def name(self) -> str:
        return experiment_name(self.variant, self.base_seed, self.rl_seed)


def experiment_name(variant: str, base_seed: int, rl_seed: int) -> str:
    return f"rep-{variant}-b{base_seed}-s{rl_seed}"


def variant_overrides(study: Study, variant: str, base_seed: int, rl_seed: int) -> tuple[str, ...]:
    """``key=value`` overrides (values as JSON, valid YAML) of one experiment: the common ones,
    the variant's (which win), then the two seeds."""
    values = {**study.common, **study.variants[variant].overrides, "base.seed": base_seed, "train.seed": rl_seed}
    return tuple(f"{k}={json.dumps(v)}" for k, v in values.items())


def plan(study: Study) -> list[Experiment]:
    """Every experiment the study's claims need, once each, in claim order (a claim's rows,
    then base seeds, then RL seeds), so an interrupted study has finished whole claims first."""
    out: dict[tuple[str, int, int], Experiment] = {}
    for claim in study.claims:
        for row in claim.rows:
            base, rl = study.seeds(claim, row.variant)
            for b in base:
                for s in rl:
                    key = (row.variant, b, s)
                    if key not in out:
                        out[key] = Experiment(row.variant, b, s, variant_overrides(study, row.variant, b, s))
    return list(out.values())


def _need(raw: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in raw:
        raise ConfigError(f"{where}: missing key {key!r}")
    return raw[key]


def parse_study(raw: Mapping[str, Any], source: str = "<study>") -> Study:
    """Validate the study's structure (variant and row references, seed kinds, names)."""
    variants: dict[str, Variant] = {}
    for name, body in (_need(raw, "variants", source) or {}).items():
        if not VARIANT_RE.fullmatch(str(name)):
            raise ConfigError(f"{source}: variant name {name!r}: letters, digits and '-' only")
        body = body or {}
        variants[name] = Variant(name, body.get("label", name), dict(body.get("overrides") or {}), body.get("rl_seeds"))
    claims = []
    for c in _need(raw, "claims", source):
        where = f"{source}: claim {c.get('id')}"
        rows = tuple(Row(**r) for r in _need(c, "rows", where))
        ids = [r.id for r in rows]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"{where}: row ids repeat: {ids}")
        for r in rows:
            if r.variant not in variants:
                raise ConfigError(f"{where}: row {r.id!r} names unknown variant {r.variant!r}")
        compare = tuple(Comparison(**p) for p in c.get("compare") or [])
        for p in compare:
            if {p.better, p.worse} - set(ids):
                raise ConfigError(f"{where}: compare {p} names a row that is not in the claim ({ids})")
        vary = tuple(c.get("vary") or ())
        if set(vary) - set(SEED_KINDS):
            raise ConfigError(f"{where}: vary {list(vary)}: use {list(SEED_KINDS)}")
        claims.append(Claim(int(_need(c, "id", where)), _need(c, "title", where), c.get("paper_table", ""),
                            c.get("question", ""), vary, rows, compare, bool(c.get("simulator_quality", False))))
    seeds, boot = _need(raw, "seeds", source), raw.get("bootstrap") or {}
    return Study(metric=_need(raw, "metric", source), rl_seeds=int(seeds["rl"]), base_seeds=int(seeds["base"]),
                 resamples=int(boot.get("resamples", 2000)), bootstrap_seed=int(boot.get("seed", 0)),
                 confidence=float(boot.get("confidence", 0.95)), common=dict(raw.get("common") or {}),
                 variants=variants, claims=tuple(claims))


def load_study(path: str | Path = STUDY_FILE) -> Study:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no study file at {path}")
    return parse_study(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, str(path))


def parse_claims(text: str | None) -> list[int] | None:
    """``"1,2"`` -> [1, 2]; None or "" -> None (every claim)."""
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--claims {text!r}: give claim numbers separated by commas, e.g. 1,2") from None


def counts(experiments: Sequence[Experiment]) -> dict[str, int]:
    """Experiments per variant (the dry run's table)."""
    out: dict[str, int] = {}
    for e in experiments:
        out[e.variant] = out.get(e.variant, 0) + 1
    return out
