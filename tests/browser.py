"""A page opened in a real headless Chromium, driven over the DevTools protocol on a pipe.

No client library: Chromium's ``--remote-debugging-pipe`` reads JSON commands from file
descriptor 3 and writes replies and events to 4, each message ending in a NUL byte. The network is
blocked (every host name resolves to nothing, every proxy request goes nowhere), so a page that
needs the internet shows it as failed requests and console errors.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

EXECUTABLES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
OFFLINE_FLAGS = (
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--proxy-server=127.0.0.1:9",  # the discard port: nothing listens
    "--proxy-bypass-list=<-loopback>",  # the proxy for loopback addresses too
)
# For a page served on this machine (http://127.0.0.1:PORT): 127.0.0.1 is left out of the resolver
# rule (which maps IP literals too) and bypasses the dead proxy (Chromium's default for loopback);
# every other address still goes to the proxy, and host names still resolve to nothing.
LOOPBACK_FLAGS = ("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--proxy-server=127.0.0.1:9")
# Requests a self-contained page may make: itself and inline data.
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")


def _pipe() -> tuple[int, int]:
    """A pipe whose ends are above 9, so moving them to 3 and 4 in the child cannot collide."""
    ends = []
    for fd in os.pipe():
        ends.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10))
        os.close(fd)
    return ends[0], ends[1]


def find_chromium() -> str | None:
    """The Chromium (or Chrome) executable: $CHROMIUM, else the first on PATH."""
    if os.environ.get("CHROMIUM"):
        return shutil.which(os.environ["CHROMIUM"])
    return next((path for name in EXECUTABLES if (path := shutil.which(name))), None)


def require_chromium() -> str:
    """The executable, or the test is skipped saying why (never passed without a browser)."""
    executable = find_chromium()
    if executable is None:
        names = ", ".join(EXECUTABLES)
        pytest.skip(f"no Chromium: none of {names} on PATH and $CHROMIUM unset (apt-get install chromium)")
    return executable


@dataclass
class PageLog:
    """What the page did while it loaded and settled."""

    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


class Browser:
    """One headless Chromium with one page; use as a context manager. ``loopback``: pages served on
    this machine (127.0.0.1) can be reached; the rest of the network stays blocked."""

    def __init__(self, executable: str, timeout: float = 60.0, loopback: bool = False) -> None:
        self.timeout = timeout
        self._profile = tempfile.TemporaryDirectory(prefix="chromium-")
        to_browser_read, self._to_browser = _pipe()
        self._from_browser, from_browser_write = _pipe()
        command = [
            executable,
            "--headless",
            "--no-sandbox",  # tests often run as root, where Chromium's sandbox refuses to start
            "--disable-gpu",
            "--no-first-run",
            "--remote-debugging-pipe",
            f"--user-data-dir={self._profile.name}",
            "--window-size=1200,900",
            *(LOOPBACK_FLAGS if loopback else OFFLINE_FLAGS),
            "about:blank",
        ]

        def wire_pipes() -> None:  # in the child: the protocol's fixed descriptors (dup2 makes them inheritable)
            os.dup2(to_browser_read, 3)
            os.dup2(from_browser_write, 4)

        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Python's own descriptors are not inheritable (PEP 446): only 0-4 reach Chromium.
            close_fds=False,
            preexec_fn=wire_pipes,
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict[str, Any]] = []
        self._session: str | None = None

    def __enter__(self) -> Browser:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.send("Browser.close", session=False)
        except (OSError, TimeoutError, RuntimeError):
            pass
        finally:
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            os.close(self._to_browser)
            os.close(self._from_browser)
            self._profile.cleanup()

    def open(self, url: str, settle: float = 1.0) -> PageLog:
        """Load ``url``, wait for its load event and ``settle`` seconds more (plots draw after
        load), and return the console errors and network requests seen meanwhile."""
        self._events.clear()
        self.send("Page.navigate", {"url": url})
        self._wait_for_event("Page.loadEventFired")
        end = time.monotonic() + settle
        while time.monotonic() < end:
            self._read_message(end - time.monotonic())
        return self._page_log()

    def wait_for(self, expression: str, timeout: float = 20.0) -> bool:
        """Whether ``expression`` became truthy in the page within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self.evaluate(expression):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page (awaited if it is a promise)."""
        reply = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in reply:
            raise RuntimeError(f"page script failed: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def upload(self, selector: str, *paths: str) -> None:
        """Put files into the page's ``<input type=file>`` at ``selector``, as a user choosing them
        would (the input fires its change event)."""
        root = self.send("DOM.getDocument")["root"]["nodeId"]
        node = self.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        if not node:
            raise RuntimeError(f"no element {selector!r} in the page")
        self.send("DOM.setFileInputFiles", {"files": list(paths), "nodeId": node})

    def screenshot(self) -> bytes:
        """The page as it looks now, as PNG bytes."""
        return base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])

    def log(self, settle: float = 0.5) -> PageLog:
        """The console errors and network requests since the page was opened, after ``settle``
        seconds more for the events still on their way."""
        end = time.monotonic() + settle
        while time.monotonic() < end:
            self._read_message(end - time.monotonic())
        return self._page_log()

    def send(self, method: str, params: dict[str, Any] | None = None, session: bool = True) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self._session:
            message["sessionId"] = self._session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline - time.monotonic(), required=True)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def _wait_for_event(self, method: str) -> None:
        deadline = time.monotonic() + self.timeout
        while not any(e.get("method") == method for e in self._events):
            self._read_message(deadline - time.monotonic(), required=True)

    def _read_message(self, wait: float, required: bool = False) -> dict[str, Any]:
        """The next message (events are kept); ``{}`` when none came within ``wait`` seconds."""
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_browser], [], [], max(wait, 0))
            if not ready:
                if required:
                    raise TimeoutError(f"Chromium sent nothing for {self.timeout:.0f} s")
                return {}
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError(f"Chromium exited (status {self._process.poll()})")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message = json.loads(raw)
        if "method" in message:
            self._events.append(message)
        return message

    def _page_log(self) -> PageLog:
        log = PageLog()
        for event in self._events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                log.console_errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                log.console_errors.append(details.get("exception", {}).get("description") or details["text"])
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                log.console_errors.append(f"{params['entry']['text']} ({params['entry'].get('url', '')})")
            elif method == "Network.requestWillBeSent":
                log.requests.append(params["request"]["url"])
        return log


def is_local(url: str) -> bool:
    return url.startswith(LOCAL_SCHEMES)


# Per Plotly figure on the page: its title, whether its SVG is laid out, how many data marks
# (points, line paths, heatmap images) it drew, and its annotations that take up space.
DESCRIBE_PLOTS = """
[...document.querySelectorAll('.plotly-graph-div')].map(plot => {
  const svg = plot.querySelector('svg.main-svg');
  const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
  const title = plot.querySelector('.gtitle');
  return {
    title: title ? title.textContent : '',
    svg: Boolean(svg), width: box.width, height: box.height,
    marks: plot.querySelectorAll(
      '.scatterlayer .point, .scatterlayer path.js-line, .heatmaplayer image').length,
    annotations: [...plot.querySelectorAll('.annotation-text')]
      .filter(a => a.getBoundingClientRect().width > 0).map(a => a.textContent),
  };
})
"""
# Plotly may finish drawing after the load event: wait until every figure has marks (or time out).
ALL_PLOTS_DRAWN = f"({DESCRIBE_PLOTS}).every(plot => plot.marks > 0)"
