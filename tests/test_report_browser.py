"""The report rendered by headless Chromium: loads cleanly, fetches nothing, every section shown.

Chromium is driven through the DevTools protocol on 127.0.0.1, which
reports console messages, uncaught exceptions, failed loads and every
request the page makes. Full-page screenshots are kept under the test's
tmp_path (report-en.png, report-ar.png).

The store is the shipped sample capture analysed by `wardwatch analyze`
when the shipped model exists, and otherwise the seeded store of
test_report_gather.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import require_tool
from engine.cli import main
from engine.report.render import SECTION_IDS
from test_report_gather import seed_report_store

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_CAPTURE = REPO_ROOT / "engine" / "data" / "sample.pcap"
SHIPPED_MODEL = REPO_ROOT / "engine" / "models" / "default.ww"
STARTUP_TIMEOUT_S = 30.0
PAGE_TIMEOUT_S = 60.0
WINDOW_WIDTH = 1280


class DevToolsPage:
    """One Chromium page driven over the DevTools protocol; records every event it receives."""

    def __init__(self, websocket_url: str):
        import websocket

        self.socket = websocket.create_connection(websocket_url, timeout=PAGE_TIMEOUT_S, suppress_origin=True)
        self.events: list[dict] = []
        self._next_id = 0

    def call(self, method: str, **params) -> dict:
        self._next_id += 1
        request_id = self._next_id
        self.socket.send(json.dumps({"id": request_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == request_id:
                if "error" in message:
                    raise RuntimeError(f"{method} failed: {message['error']}")
                return message["result"]
            if "method" in message:
                self.events.append(message)

    def wait_for(self, event: str, timeout_s: float = PAGE_TIMEOUT_S) -> dict:
        deadline = time.monotonic() + timeout_s
        for seen in self.events:
            if seen["method"] == event:
                return seen
        while time.monotonic() < deadline:
            message = json.loads(self.socket.recv())
            if "method" in message:
                self.events.append(message)
                if message["method"] == event:
                    return message
        raise TimeoutError(f"no {event} within {timeout_s} s")

    def close(self):
        self.socket.close()


class Chromium:
    def __init__(self, profile: Path):
        executable = require_tool("chromium")
        pytest.importorskip("websocket", reason="websocket-client is not installed")
        self.profile = profile
        self.log = open(profile.parent / "chromium.log", "wb")
        self.process = subprocess.Popen(
            [executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--disable-extensions", "--no-first-run",
             "--hide-scrollbars", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", f"--window-size={WINDOW_WIDTH},1600", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=self.log,
        )
        self.port = self._read_port()

    def _read_port(self) -> int:
        # Chromium writes the port it chose to DevToolsActivePort once the endpoint listens.
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited with status {self.process.returncode}; see {self.log.name}")
            if port_file.is_file():
                lines = port_file.read_text().split()
                if lines:
                    return int(lines[0])
            time.sleep(0.1)
        raise TimeoutError(f"chromium did not open its DevTools port within {STARTUP_TIMEOUT_S} s")

    def page(self) -> DevToolsPage:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=10) as response:
            targets = json.load(response)
        target = next(t for t in targets if t["type"] == "page")
        return DevToolsPage(target["webSocketDebuggerUrl"])

    def close(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def load_page(chromium: Chromium, path: Path, screenshot: Path) -> dict:
    """Load a file, take a full-page screenshot and return what the page did and showed."""
    page = chromium.page()
    try:
        for domain in ("Page", "Runtime", "Log", "Network", "DOM", "CSS"):
            page.call(f"{domain}.enable")
        page.call("Page.navigate", url=path.as_uri())
        page.wait_for("Page.loadEventFired")
        page.call("Runtime.evaluate", expression="document.fonts.ready.then(() => true)", awaitPromise=True)
        state = page.call("Runtime.evaluate", returnByValue=True, expression="""({
            dir: document.documentElement.dir,
            lang: document.documentElement.lang,
            sections: [...document.querySelectorAll('section[id]')].map(s => s.id),
            visible: [...document.querySelectorAll('section[id]')].every(s => s.getBoundingClientRect().height > 0),
            svgs: document.querySelectorAll('figure.plot svg').length,
        })""")["result"]["value"]
        metrics = page.call("Page.getLayoutMetrics")
        height = int(metrics["cssContentSize"]["height"])
        shot = page.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": WINDOW_WIDTH, "height": height, "scale": 1})
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        root = page.call("DOM.getDocument")["root"]["nodeId"]
        heading = page.call("DOM.querySelector", nodeId=root, selector="h1")["nodeId"]
        state["h1_fonts"] = page.call("CSS.getPlatformFontsForNode", nodeId=heading)["fonts"]
        state["events"] = list(page.events)
        return state
    finally:
        page.close()


def page_problems(events: list[dict]) -> list[str]:
    """Return console errors and warnings, exceptions, failed loads and requests that leave the file."""
    problems = []
    for event in events:
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.exceptionThrown":
            problems.append(f"exception: {params['exceptionDetails'].get('text')}")
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "warning", "assert"):
            problems.append(f"console {params['type']}: {[a.get('value') for a in params['args']]}")
        elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
            problems.append(f"log {params['entry']['level']}: {params['entry']['text']}")
        elif method == "Network.loadingFailed":
            problems.append(f"load failed: {params.get('errorText')}")
        elif method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            if not url.startswith(("file:", "data:")):
                problems.append(f"request: {url}")
    return problems


@pytest.fixture(scope="module")
def report_store(tmp_path_factory):
    directory = tmp_path_factory.mktemp("browser-store")
    path = directory / "wardwatch.db"
    if SAMPLE_CAPTURE.is_file() and SHIPPED_MODEL.is_file():
        result = CliRunner().invoke(main, ["analyze", str(SAMPLE_CAPTURE), "--store", str(path), "--no-bus", "-q"])
        assert result.exit_code == 0, result.output
    else:
        seed_report_store(path)
    return path


@pytest.fixture
def chromium(tmp_path):
    browser = Chromium(tmp_path / "profile")
    try:
        yield browser
    finally:
        browser.close()


@pytest.mark.parametrize("language, direction", [("en", "ltr"), ("ar", "rtl")])
def test_report_in_chromium(chromium, report_store, tmp_path, language, direction):
    output = tmp_path / f"report-{language}.html"
    result = CliRunner().invoke(main, ["report", "--store", str(report_store), "--since", "7d",
                                       "--lang", language, "-o", str(output)])
    assert result.exit_code == 0, result.output

    screenshot = tmp_path / f"report-{language}.png"
    state = load_page(chromium, output, screenshot)

    assert page_problems(state["events"]) == []
    assert state["dir"] == direction
    assert state["lang"] == language
    assert state["sections"] == list(SECTION_IDS)
    assert state["visible"]
    assert screenshot.stat().st_size > 10_000
    if language == "ar":
        used = {font["familyName"] for font in state["h1_fonts"] if font["glyphCount"] > 0}
        assert any("Arabic" in name for name in used), used


def test_harness_reports_console_errors(chromium, tmp_path):
    # The checks above can only fail if the harness detects each kind of problem.
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><body><h1>x</h1><script>console.error("broken"); missing();</script>'
                    '<img src="missing.png"></body></html>', encoding="utf-8")
    state = load_page(chromium, page, tmp_path / "broken.png")
    problems = page_problems(state["events"])
    assert any("console error" in p for p in problems), problems
    assert any("exception" in p for p in problems), problems
    assert any("load failed" in p for p in problems), problems
