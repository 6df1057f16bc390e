"""report.html in headless Chromium: no console messages, and every plot is drawn (its screenshot area holds
the chart's colours, not a blank box). Skips when Chromium is not installed (apt-get install chromium)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import pytest

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)"
)
Image = pytest.importorskip("PIL.Image", reason="Pillow is needed to read the screenshot (pip install pillow)")

WIDTH = 1280
# Written into a copy of the page: where every plot is, and how tall the page is.
PROBE = (
    "<script>document.title = JSON.stringify({height: document.documentElement.scrollHeight, plots: "
    "[...document.querySelectorAll('svg.plot')].map(e => { const r = e.getBoundingClientRect(); "
    "return [r.left + scrollX, r.top + scrollY, r.width, r.height]; })});</script>"
)


def chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--force-device-scale-factor=1",
        f"--user-data-dir={tmp_path / 'profile'}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def console_messages(stderr: str) -> list[str]:
    """Page console lines (console.log / warn / error, uncaught exceptions) from Chromium's stderr log."""
    return [line for line in stderr.splitlines() if re.search(r":CONSOLE[:(]\d+", line)]


def test_console_capture_sees_errors(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text("<html><body><script>console.error('boom'); missing_function();</script></body></html>")
    proc = chromium(tmp_path, "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri())
    messages = console_messages(proc.stderr)
    assert any("boom" in m for m in messages) and any("Uncaught ReferenceError" in m for m in messages), proc.stderr


def test_report_renders_every_plot_without_console_errors(real_runs, tmp_path):
    report = real_runs.a / "report.html"
    text = report.read_text(encoding="utf-8")
    proc = chromium(
        tmp_path, "--enable-logging=stderr", "--v=0", f"--window-size={WIDTH},900", "--dump-dom", report.as_uri()
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert console_messages(proc.stderr) == []
    assert all(f'<section id="{s}">' in proc.stdout for s in ("overview", "training", "scorecard", "samples"))

    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = chromium(tmp_path, f"--window-size={WIDTH},900", "--dump-dom", probe.as_uri()).stdout
    layout = json.loads(html.unescape(re.search(r"<title>(.*?)</title>", dom, re.S).group(1)))
    plots = layout["plots"]
    assert len(plots) == text.count('<svg class="plot"') >= 8  # loss, lr, throughput, grad norm, 2 histograms, ...

    png = tmp_path / "report.png"
    shot = chromium(tmp_path, f"--window-size={WIDTH},{layout['height']}", f"--screenshot={png}", report.as_uri())
    assert png.is_file(), shot.stderr[-2000:]
    image = Image.open(png).convert("RGB")
    assert image.size == (WIDTH, layout["height"])
    for x, y, w, h in plots:
        assert w > 100 and h > 50
        assert is_drawn(image.crop((int(x), int(y), int(x + w), int(y + h)))), (x, y, w, h)
    assert not is_drawn(image.crop((WIDTH - 300, 0, WIDTH - 20, 30)))  # the page's empty top-right corner


def is_drawn(area) -> bool:
    """Lines, dots and labels: many colours and more than 1% of pixels that are not the background."""
    colors = area.getcolors(maxcolors=1 << 20)
    background = max(colors)[1]
    drawn = sum(n for n, c in colors if c != background) / (area.width * area.height)
    return len(colors) >= 8 and drawn > 0.01
