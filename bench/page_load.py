"""First paint of the web page (`/`) as a browser measures it, on the embedded stack's API.

    .venv/bin/python bench/page_load.py [--loads 10]

Starts a Prefect server and the API the way the launcher does (deployments/stack.py), then
loads `/` in Debian's chromium: `cold` loads each use a fresh profile (an empty HTTP cache, a
first visit), `warm` loads reload in one profile. Prints JSON with the first-contentful-paint
times in ms and whether the target (< 1000 ms, cold) is met.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deployments import stack  # noqa: E402
from tests.fixtures.browser import CHROMIUM, first_contentful_paint, launch_chromium  # noqa: E402

TARGET_MS = 1000.0


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median": round(statistics.median(ordered), 1), "p90": round(ordered[int(0.9 * (len(ordered) - 1))], 1),
            "max": round(ordered[-1], 1), "n": len(ordered)}


def _paint(page: Any, url: str) -> float:
    page.goto(url)
    page.wait_for_selector("body[data-ready='true']")
    fcp = first_contentful_paint(page)
    if fcp is None:
        raise RuntimeError(f"{url} never painted")
    return float(fcp)


def measure(url: str, loads: int, work: Path) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    cold: list[float] = []
    warm: list[float] = []
    with sync_playwright() as playwright:
        for i in range(loads):
            context = launch_chromium(playwright, work / f"profile-cold-{i}")
            try:
                cold.append(_paint(context.new_page(), url))
            finally:
                context.close()
        context = launch_chromium(playwright, work / "profile-warm")
        try:
            page = context.new_page()
            _paint(page, url)  # fills the cache
            warm = [_paint(page, url) for _ in range(loads)]
        finally:
            context.close()
    return {"cold_ms": _summary(cold), "warm_ms": _summary(warm)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loads", type=int, default=10)
    args = parser.parse_args()
    if not CHROMIUM.exists():
        sys.exit(f"{CHROMIUM} is missing: `make chromium` installs it")
    with tempfile.TemporaryDirectory(prefix="page-load-") as tmp:
        work = Path(tmp)
        server, api_url = stack.start_prefect_server(work / "prefect", stack.free_port(), work / "logs", ui=False)
        port = stack.free_port()
        api = stack.start_api(work / "prefect", api_url, "127.0.0.1", port, work / "logs",
                              {"RECON_DATA_DIR": str(work / "data"), "RECON_STORAGE": "fs"})
        try:
            result = measure(f"http://127.0.0.1:{port}/", args.loads, work)
        finally:
            api.stop()
            server.stop()
    result["target_ms"] = TARGET_MS
    result["met"] = result["cold_ms"]["max"] < TARGET_MS
    print(json.dumps({"page_load": result}, indent=1))


if __name__ == "__main__":
    main()
