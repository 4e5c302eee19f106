"""Render the report page in headless Chromium: a full-page PNG, and proof it is self-contained.

    python scripts/report_check.py [data/report/index.html] [--screenshot PNG]

Drives the browser over the DevTools protocol (the `websockets` package Prefect already
installs): loads the page, records console errors, uncaught exceptions, failed loads and every
request that is not a `data:` URI or the page itself, then screenshots the whole page at 1280 px.
Exit 0 with a one-line summary when there are none; 1 with the list otherwise; 2 when Chromium
is missing (the message says how to install it: nothing is installed implicitly).
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL = (
    "sudo apt-get install -y chromium   # Debian/Ubuntu (as root: apt-get install -y chromium)"
)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--remote-debugging-port=0",
]


class ChromiumMissing(RuntimeError):
    pass


def find_browser() -> str:
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    raise ChromiumMissing(f"no Chromium found ({', '.join(BROWSERS)}); install it: {INSTALL}")


@dataclass
class Result:
    console_errors: list[str] = field(default_factory=list)
    failed_loads: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    size: tuple[int, int] = (0, 0)  # CSS pixels of the whole page

    def problems(self, page_url: str) -> list[str]:
        outside = [u for u in self.requests if not u.startswith("data:") and u != page_url]
        return (
            [f"console: {e}" for e in self.console_errors]
            + [f"failed load: {e}" for e in self.failed_loads]
            + [f"request outside the page: {u}" for u in outside]
        )


class DevTools:
    """A minimal DevTools-protocol client: numbered commands, events queued while waiting."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=None, open_timeout=30)
        self.next_id, self.events = 0, []

    def call(self, method: str, timeout: float = 60, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=timeout))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, method: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(json.loads(self.ws.recv(timeout=deadline - time.monotonic())))

    def close(self) -> None:
        self.ws.close()


def launch(browser: str, profile: Path) -> tuple[subprocess.Popen, str]:
    """Start Chromium on a free port; returns (process, the first page's websocket URL)."""
    proc = subprocess.Popen(
        [browser, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 60
    while not (port_file.is_file() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{browser} did not start (exit {proc.poll()})")
        time.sleep(0.1)
    port = port_file.read_text().split()[0]
    return proc, page_target(port)


def page_target(port: str) -> str:
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # localhost: no proxy
    for _ in range(100):
        with opener.open(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            pages = [t for t in json.load(r) if t.get("type") == "page"]
        if pages:
            return pages[0]["webSocketDebuggerUrl"]
        time.sleep(0.1)
    raise RuntimeError("Chromium opened no page")


def record(dev: DevTools, result: Result) -> None:
    """Sort the queued protocol events into the result."""
    for e in dev.events:
        method, p = e.get("method"), e.get("params", {})
        if method == "Network.requestWillBeSent":
            result.requests.append(p["request"]["url"])
        elif method == "Network.loadingFailed":
            result.failed_loads.append(f"{p.get('errorText')} ({p.get('type')})")
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            result.console_errors.append(" ".join(str(a.get("value")) for a in p.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            result.console_errors.append(p["exceptionDetails"].get("text", "exception"))
        elif method == "Log.entryAdded" and p["entry"].get("level") == "error":
            result.console_errors.append(p["entry"].get("text", ""))


def check(page: Path, screenshot: Path | None, width: int = 1280) -> Result:
    """Load `page` in headless Chromium, collect problems, optionally screenshot it whole."""
    browser = find_browser()
    url = page.resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="report-check-") as profile:
        proc, ws_url = launch(browser, Path(profile))
        try:
            dev = DevTools(ws_url)
            for domain in ("Page", "Runtime", "Log", "Network"):
                dev.call(f"{domain}.enable")
            dev.call("Emulation.setDeviceMetricsOverride", width=width, height=900,
                     deviceScaleFactor=1, mobile=False)  # fmt: skip
            dev.events.clear()
            dev.call("Page.navigate", url=url)
            dev.wait_for("Page.loadEventFired")
            time.sleep(0.5)  # late console messages
            dev.call("Runtime.evaluate", expression="0")  # drains events queued meanwhile
            result = Result()
            record(dev, result)
            size = dev.call("Page.getLayoutMetrics")["cssContentSize"]
            result.size = (int(size["width"]), int(size["height"]))
            if screenshot is not None:
                shot = dev.call(
                    "Page.captureScreenshot",
                    format="png",
                    captureBeyondViewport=True,
                    clip={"x": 0, "y": 0, "width": width, "height": result.size[1], "scale": 1},
                )
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                screenshot.write_bytes(base64.b64decode(shot["data"]))
            dev.close()
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("page", nargs="?", default="data/report/index.html")
    p.add_argument("--screenshot", type=Path, help="write a full-page PNG here")
    a = p.parse_args(argv)
    page = Path(a.page)
    if not page.is_file():
        print(
            f"{page} does not exist: run `semsynth report` (or `dvc repro`) first", file=sys.stderr
        )
        return 2
    try:
        result = check(page, a.screenshot)
    except ChromiumMissing as e:
        print(f"report-check: {e}", file=sys.stderr)
        return 2
    problems = result.problems(page.resolve().as_uri())
    for line in problems:
        print(f"report-check: {line}", file=sys.stderr)
    shot = f", screenshot {a.screenshot}" if a.screenshot else ""
    print(
        f"report-check: {page} rendered {result.size[0]}x{result.size[1]} px in Chromium, "
        f"{len(result.requests)} request(s), {len(problems)} problem(s){shot}"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
