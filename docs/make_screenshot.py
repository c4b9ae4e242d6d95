"""Regenerate docs/report.png (the README's picture): the quickstart report at desktop width in headless Chromium.

    python docs/make_screenshot.py [--out docs/report.png] [--width 1300] [--height 1500] [--scroll 0] [--at cam]
    python docs/make_screenshot.py --config segmentation --out docs/segmentation.png --at inputs --height 900

Needs Debian's `chromium` and `chromium-driver`. The PNG is reduced to a 256-colour palette so it stays small.
"""
from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def screenshot(html: Path, width: int, height: int, scroll: int, dark: bool, at: str | None = None) -> bytes:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="reportgen-shot-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)
    try:
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [
            {"name": "prefers-color-scheme", "value": "dark" if dark else "light"},
            {"name": "prefers-reduced-motion", "value": "reduce"}]})
        driver.get(html.resolve().as_uri())
        if at:  # the top of that element, then `scroll` pixels further
            driver.execute_script("document.getElementById(arguments[0]).scrollIntoView()", at)
        driver.execute_script("window.scrollBy(0, arguments[0])", scroll)
        driver.execute_async_script("const done = arguments[arguments.length - 1];"
                                    "const imgs = [...document.images].filter(i => i.src);"
                                    "imgs.forEach(i => { i.loading = 'eager'; });"
                                    "Promise.all(imgs.map(i => i.decode()"
                                    ".catch(() => null))).then(() => requestAnimationFrame(() => done()));")
        return driver.get_screenshot_as_png()
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "report.png")
    parser.add_argument("--width", type=int, default=1300)
    parser.add_argument("--height", type=int, default=1500)
    parser.add_argument("--scroll", type=int, default=0, help="pixels to scroll down before the shot")
    parser.add_argument("--at", default=None, help="an element id to scroll to first (a section: cam, gradients, ...)")
    parser.add_argument("--dark", action="store_true")
    parser.add_argument("--config", default="quickstart", help="the example config to build (example_configs/<name>.yaml)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, "-m", "reportgen", "build", str(ROOT / "example_configs" / f"{args.config}.yaml"),
                        "-o", out, "-q"], check=True)
        png = screenshot(Path(out) / "report.html", args.width, args.height, args.scroll, args.dark, args.at)
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT,
                                                                dither=Image.Dither.NONE)
    image.save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1000:.0f} KB)")


if __name__ == "__main__":
    main()
