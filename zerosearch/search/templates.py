"""Simulator input templates: the text a simulator LLM is asked with, read from a file.

A template file (``configs/prompts/<name>.yaml``, format in ``configs/prompts/README.md``)
holds two texts, ``useful`` and ``noisy``, with ``string.Template`` placeholders:

    $query     the search query the policy wrote
    $question  the training question of that trajectory
    $answer    its gold answer (the first alias)
    $k         the number of documents asked for (``search.top_k``)
    $kind      ``useful`` or ``noisy``;  $Kind: ``Useful`` or ``Noisy``

``$$`` is a literal dollar sign. An unknown placeholder is an error naming the file and the
placeholder when the file is loaded, before any request goes out. How the rendered text is
sent (raw completion or one chat user message, the system message) is not part of the file:
``simulator.api`` and ``simulator.system_message`` say it (``client.SimulatorClient``).

Named templates live in the repository's ``configs/prompts/`` (found from this package, so
any working directory works); ``load_template`` also takes a path to any file.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from string import Template

import yaml

from zerosearch.errors import InputError

__all__ = ["PLACEHOLDERS", "PROMPTS_DIR", "PromptTemplate", "TemplateError", "load_template", "named_template"]

PROMPTS_DIR = Path(__file__).resolve().parents[2] / "configs" / "prompts"
PLACEHOLDERS = ("query", "question", "answer", "k", "kind", "Kind")
_KEYS = {"description", "useful", "noisy"}


class TemplateError(InputError, ValueError):
    """A template file that is missing or malformed; the message names the file."""


@dataclass(frozen=True)
class PromptTemplate:
    """The two texts of one template file; ``render`` fills them for one query."""

    name: str
    useful: str
    noisy: str
    source: str = ""

    def render(self, query: str, question: str, answer: str, noisy: bool, k: int) -> str:
        kind = "noisy" if noisy else "useful"
        text = self.noisy if noisy else self.useful
        return Template(text).substitute(query=query, question=question, answer=answer, k=k,
                                         kind=kind, Kind=kind.capitalize())


def _check(text: str, key: str, path: Path) -> None:
    template = Template(text)
    if not template.is_valid():
        # find the offending '$' for the message: substitute raises ValueError naming its line/col
        try:
            template.substitute({p: "" for p in PLACEHOLDERS})
        except ValueError as err:
            raise TemplateError(f"template file {path}: `{key}` has a bad placeholder ({err}); "
                                f"write $$ for a literal dollar sign") from None
    unknown = [name for name in template.get_identifiers() if name not in PLACEHOLDERS]
    if unknown:
        raise TemplateError(f"template file {path}: `{key}` uses unknown placeholder ${unknown[0]} "
                            f"(known: {', '.join('$' + p for p in PLACEHOLDERS)}; $$ is a literal $)")


def load_template(path: str | Path, name: str | None = None) -> PromptTemplate:
    """The template in file ``path`` (YAML with ``useful`` and ``noisy`` texts); raises
    ``TemplateError`` naming the file when it is missing, malformed or has an unknown
    placeholder."""
    path = Path(path)
    if not path.is_file():
        raise TemplateError(f"simulator prompt template file not found: {path.resolve()}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise TemplateError(f"template file {path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise TemplateError(f"template file {path}: must be a mapping with `useful` and `noisy` texts")
    extra = sorted(set(raw) - _KEYS)
    missing = sorted({"useful", "noisy"} - set(raw))
    if extra or missing:
        raise TemplateError(f"template file {path}: " + "; ".join(
            ([f"unknown key(s) {extra}"] if extra else []) + ([f"missing {missing}"] if missing else []))
            + f" (keys: {', '.join(sorted(_KEYS))})")
    for key in ("useful", "noisy"):
        if not isinstance(raw[key], str) or not raw[key].strip():
            raise TemplateError(f"template file {path}: `{key}` must be a non-empty text")
        _check(raw[key], key, path)
    return PromptTemplate(name=name or path.stem, useful=raw["useful"], noisy=raw["noisy"], source=str(path))


def named_template(name: str) -> PromptTemplate:
    """A template shipped in ``configs/prompts/`` by name (``ours-sft``, ``zerosearch-sft``, ...)."""
    path = PROMPTS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROMPTS_DIR.glob("*.yaml")) if PROMPTS_DIR.is_dir() else []
        raise TemplateError(f"no simulator prompt template {name!r}: {path} does not exist "
                            f"(templates in {PROMPTS_DIR}: {', '.join(known) or 'none'})")
    return _cached(str(path), name)


@functools.lru_cache(maxsize=16)
def _cached(path: str, name: str) -> PromptTemplate:
    return load_template(path, name)
