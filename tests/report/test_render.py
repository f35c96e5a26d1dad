"""Render a report in headless Chromium (Debian's `chromium`): it must draw something."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from resbench.report.build import write_report
from resbench.run import load_run

pytestmark = pytest.mark.chromium


def render(html_path, png_path, tmp_path, height=2000):
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                    f"--screenshot={png_path}", f"--window-size=1280,{height}",
                    f"file://{html_path}"], check=True, capture_output=True, timeout=180)


def test_report_renders_in_chromium(saved_run, tmp_path):
    from PIL import Image

    page = write_report(tmp_path / "r.html", [load_run(saved_run)])
    png = tmp_path / "r.png"
    render(page, png, tmp_path)
    image = Image.open(png).convert("RGB")
    assert image.size == (1280, 2000)
    colors = image.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50  # text and figures, not a blank page
    # figures drew: some pixels are the plot colours, not only text greys
    saturated = sum(n for n, (r, g, b) in colors if max(r, g, b) - min(r, g, b) > 60)
    assert saturated > 2000
