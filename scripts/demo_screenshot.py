"""Drive `dap demo` in a headless Chromium: start the app on a free local port, upload a panorama, wait for the
result and save a screenshot. tests/test_demo.py runs `capture` on a small panorama; run this script to refresh
the README's figure:

    bash scripts/with-venv.sh python scripts/demo_screenshot.py            # -> docs/figures/demo.png

Needs the demo extra, playwright (both in the dev extra) and a Chromium: Debian's (`apt-get install chromium`),
or playwright's own (`python -m playwright install chromium`).
"""

from __future__ import annotations

import argparse
import io
import shutil
import socket
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# Without a GPU, WebGL (the 3-D view) needs Chromium's software renderer, which it only enables when asked.
BROWSER_ARGS = ["--enable-unsafe-swiftshader", "--use-angle=swiftshader"]


def find_chromium() -> str | None:
    """A system Chromium, else the one `playwright install chromium` downloaded, else None."""
    from playwright.sync_api import sync_playwright

    system = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    if system:
        return system
    with sync_playwright() as p:
        own = p.chromium.executable_path
    return own if Path(own).is_file() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_result(page, timeout_ms: int) -> None:
    page.wait_for_selector("#depth img", timeout=timeout_ms)
    page.wait_for_selector("#view3d canvas", timeout=timeout_ms)
    page.wait_for_function("document.querySelector('#summary').innerText.includes(' m')", timeout=timeout_ms)


DRAWN = 15  # pixel spread (0-255) above which the 3-D view shows points: its label alone gives about 5


def _canvas_spread(page) -> float:
    """Standard deviation of the 3-D view's grey levels: about 5 for the empty view (black, with its label),
    40 to 60 once the point cloud is drawn."""
    shot = page.locator("#view3d canvas").screenshot()
    return float(np.asarray(Image.open(io.BytesIO(shot)).convert("L"), np.float32).std())


def capture(panorama: Path, screenshot: Path, *, model=None, resolution=None, bad_upload: Path | None = None,
            timeout_s: float = 60, width: int = 1400) -> dict:
    """Serve the demo, upload `panorama`, wait for the outputs and save a full-page `screenshot`.

    Returns what the page showed: the summary line, the 3-D view's pixel spread (see `_canvas_spread`), the
    download names and, when `bad_upload` is given (uploaded afterwards), the error text the page displayed."""
    from playwright.sync_api import sync_playwright

    from dap.demo import build_app
    from dap.inference import resolve_model, select_device

    device = select_device("cpu")
    app = build_app(resolve_model(model, device), resolution=resolution, device=device)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    timeout_ms = int(timeout_s * 1000)
    found = {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=find_chromium(), headless=True, args=BROWSER_ARGS)
            page = browser.new_page(viewport={"width": width, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/", timeout=timeout_ms)
            page.wait_for_selector("#run", timeout=timeout_ms)
            page.locator("#panorama input[type=file]").set_input_files(str(panorama), timeout=timeout_ms)
            page.click("#run", timeout=timeout_ms)
            _wait_for_result(page, timeout_ms)
            deadline = time.monotonic() + timeout_s
            while (spread := _canvas_spread(page)) < DRAWN and time.monotonic() < deadline:
                time.sleep(0.5)  # the viewer loads the GLB after the page shows the canvas
            found["canvas_spread"] = spread
            found["summary"] = page.inner_text("#summary")
            found["downloads"] = page.inner_text("#downloads")
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
            if bad_upload is not None:
                page.click("#panorama button[aria-label=Clear]", timeout=timeout_ms)  # brings the file input back
                page.locator("#panorama input[type=file]").set_input_files(str(bad_upload), timeout=timeout_ms)
                page.click("#run", timeout=timeout_ms)
                page.wait_for_selector(".toast-body", timeout=timeout_ms)
                found["error"] = page.inner_text(".toast-body")
            browser.close()
    finally:
        app.close()
    return found


def main() -> None:
    from dap.demo import samples

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--panorama", type=Path, default=next(p for p in samples() if "st_fagans" in p.name))
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "figures" / "demo.png")
    parser.add_argument("--model", default=None, help="as for `dap demo --model` (default: the bundled model)")
    args = parser.parse_args()
    found = capture(args.panorama, args.out, model=args.model, timeout_s=180)
    if found["canvas_spread"] < DRAWN:  # a busy software renderer can miss the deadline: not a figure to ship
        raise SystemExit(f"{args.out}: the 3-D view was still empty after 180 s (pixel spread "
                         f"{found['canvas_spread']:.1f} < {DRAWN}); run it again on a less busy machine")
    print(f"wrote {args.out}: {found['summary']}")


if __name__ == "__main__":
    main()
