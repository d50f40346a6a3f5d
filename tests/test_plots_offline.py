"""`dvc plots show` works offline: the page DVC writes inlines Vega, Vega-Lite and Vega-Embed
(configs/plots/offline.html, named by .dvc/config) instead of loading them from a CDN, and a
headless browser without network draws every plot."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def plots_page(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plots")
    dvc = Path(sys.executable).parent / "dvc"
    proc = subprocess.run([str(dvc), "plots", "show", "-o", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out / "index.html"


def test_the_repositorys_dvc_config_names_the_offline_template():
    config = configparser.ConfigParser()
    config.read(REPO / ".dvc" / "config")
    template = (REPO / ".dvc" / config["plots"]["html_template"].strip()).resolve()
    assert template == REPO / "configs" / "plots" / "offline.html" and template.is_file()


def test_the_page_loads_no_script_from_the_network(plots_page):
    html = plots_page.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]+src=", html)  # nothing fetched: no CDN, no file next to it
    for library in ("vega (npm)", "vega-lite (npm)", "vega-embed (npm)"):
        assert library in html
    assert html.count("vegaEmbed('#") >= 5  # the pipeline's CSV plots (base, SFT, train x3, validation)


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (make browser-deps)")
def test_a_browser_without_network_draws_every_plot(plots_page):
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                           "--proxy-server=127.0.0.1:9", "--dump-dom", plots_page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    html = plots_page.read_text(encoding="utf-8")
    drawn = len(re.findall(r'<canvas[^>]*class="marks"', proc.stdout))
    assert drawn == html.count("vegaEmbed('#") > 0
