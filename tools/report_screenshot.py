"""Screenshot of a run's report.html for the README: headless Chromium, then a palette PNG (small file).

    python tools/report_screenshot.py RUN_DIR docs/report.png [--width 1280] [--height 1700]

Needs Chromium (apt-get install chromium) and Pillow. The report is (re)built from the run directory first.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

from PIL import Image

from sftlab.report.html import write_report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("out")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=1700)
    ap.add_argument("--colors", type=int, default=64, help="palette size of the saved PNG")
    args = ap.parse_args()
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if browser is None:
        raise SystemExit("headless Chromium not found: apt-get install chromium")
    report = write_report([args.run])
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "shot.png"
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                "--force-device-scale-factor=1",
                f"--user-data-dir={tmp}/profile",
                f"--window-size={args.width},{args.height}",
                f"--screenshot={raw}",
                report.resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
        )
        image = Image.open(raw).convert("RGB").quantize(colors=args.colors, method=Image.Quantize.MEDIANCUT)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        image.save(args.out, optimize=True)
    print(f"{args.out}: {Path(args.out).stat().st_size / 1024:.0f} KB ({args.width}x{args.height})")


if __name__ == "__main__":
    main()
