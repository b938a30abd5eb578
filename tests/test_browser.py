"""The headless-browser harness (tests/browser.py) sees what it is meant to catch."""

from __future__ import annotations

from pathlib import Path

from .browser import DESCRIBE_PLOTS, Browser, is_local, require_chromium


def test_the_browser_sees_errors_blocked_requests_and_undrawn_plots(tmp_path: Path) -> None:
    chromium = require_chromium()
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><body><div class="plotly-graph-div"></div>'  # a figure that never drew
        '<img src="https://example.com/pixel.png">'
        '<script>console.error("drawn wrong"); notDefined();</script></body></html>'
    )
    with Browser(chromium) as browser:
        log = browser.open(page.as_uri())
        plots = browser.evaluate(DESCRIBE_PLOTS)
    assert [url for url in log.requests if not is_local(url)] == ["https://example.com/pixel.png"]
    errors = "\n".join(log.console_errors)
    assert "drawn wrong" in errors and "notDefined is not defined" in errors
    assert "net::ERR_" in errors and "example.com/pixel.png" in errors, "the network is blocked"
    assert plots == [{"title": "", "svg": False, "width": 0, "height": 0, "marks": 0, "annotations": []}]
