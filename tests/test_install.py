"""The install the README documents for GPU machines (A10): packages that cannot share an
environment are in separate extras, and every extra the install commands name exists."""

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="reads pyproject.toml with Python 3.11's tomllib")

ROOT = Path(__file__).resolve().parents[1]


def _extras() -> dict[str, list[str]]:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return {name: [re.split(r"[\s<>=!~\[;]", req, maxsplit=1)[0].lower() for req in reqs]
            for name, reqs in extras.items()}


def test_vllm_and_sglang_are_never_in_one_extra_and_flash_attn_in_none():
    extras = _extras()
    assert {"deepspeed", "vllm", "sglang"} <= set(extras)
    together = [name for name, pkgs in extras.items() if "vllm" in pkgs and "sglang" in pkgs]
    assert together == []  # each pins an exact torch
    assert [name for name, pkgs in extras.items() if "flash-attn" in pkgs or "flash_attn" in pkgs] == []


def test_the_documented_install_commands_name_existing_extras():
    extras = set(_extras())
    docs = (ROOT / "README.md").read_text() + (ROOT / "Makefile").read_text()
    named = re.findall(r"EXTRAS=([\w,-]+)", docs) + re.findall(r"\.\[([\w,-]+)\]", docs)
    assert any("vllm" in n.split(",") and "deepspeed" in n.split(",") for n in named)  # the training env
    assert any(n.split(",") == ["sglang"] for n in named)  # the simulator server's own env
    for spec in named:
        assert set(spec.split(",")) <= extras, spec
    assert "pip install flash-attn --no-build-isolation" in (ROOT / "README.md").read_text()
