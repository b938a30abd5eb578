"""`eurosat serve`'s page in a real headless Chromium: a patch and a scene uploaded through its file
inputs, the predicted class and the map shown, no console error, no request beyond the server."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from eurosat_pipeline.core.classes import CLASSES
from eurosat_pipeline.inference.images import PIL_FORMATS
from eurosat_pipeline.inference.options import ModelOptions
from eurosat_pipeline.inference.predict import predict
from eurosat_pipeline.serving.app import create_app, load_model

from .browser import Browser, is_local, require_chromium
from .serving import encoded, live_server
from .test_map import grid_of_labels, mosaic, write_raster

TOKEN = "page-s3cret"
SHOWN = "[...document.querySelectorAll('{}')].map(e => e.textContent)"
TYPE_TOKEN = "(t => {{ t.value = {}; t.dispatchEvent(new Event('change')); }})(document.getElementById('token'))"


def test_the_page_classifies_a_patch_and_maps_a_scene(
    map_model: Path, synthetic_tiles: dict[str, list[np.ndarray]], tmp_path: Path
) -> None:
    chromium = require_chromium()
    patch = tmp_path / "forest.png"
    patch.write_bytes(encoded(synthetic_tiles["Forest"][1]))
    scene = write_raster(tmp_path / "fields.tif", mosaic(synthetic_tiles, grid_of_labels(2, 3, seed=5)))
    expected = predict([patch], ModelOptions(map_model, views=8), top_k=3)[0]
    app = create_app(load_model(ModelOptions(map_model, views=8)), token=TOKEN)  # the page sends the token it is given

    with live_server(app) as url, Browser(chromium, loopback=True) as browser:
        browser.open(f"{url}/", settle=0.2)
        assert browser.wait_for("document.getElementById('model').textContent.includes('sha256')")
        assert browser.evaluate("!document.getElementById('token-box').hidden"), "the server wants a token"
        browser.evaluate(TYPE_TOKEN.format(json.dumps(TOKEN)))

        browser.upload("#patch-input", str(patch))
        assert browser.wait_for("document.querySelectorAll('#patch-results .result').length === 1")
        classes = browser.evaluate(SHOWN.format("#patch-results .bar .class"))
        shares = browser.evaluate(SHOWN.format("#patch-results .bar .share"))

        browser.upload("#scene-input", str(scene))
        drawn = "(p => p && p.complete && p.naturalWidth > 0)(document.getElementById('preview'))"
        assert browser.wait_for(drawn, timeout=60), browser.evaluate("document.body.innerText")
        area_rows = browser.evaluate(SHOWN.format("#areas tbody tr td:first-child"))
        status = browser.evaluate("document.getElementById('scene-status').textContent")
        log = browser.log()
        (tmp_path / "page.png").write_bytes(browser.screenshot())

        browser.upload("#patch-input", str(_not_an_image(tmp_path)))
        assert browser.wait_for("document.querySelector('#patch-results .error') !== null")
        refusal = browser.evaluate("document.querySelector('#patch-results .error').textContent")

    assert classes == expected.classes, (classes, expected)
    assert shares[0] == f"{100 * expected.probabilities[0]:.1f} %"
    assert status.startswith("6 tiles classified, 0 skipped"), status
    assert area_rows and set(area_rows) <= set(CLASSES), area_rows
    assert log.console_errors == [], log.console_errors
    assert [u for u in log.requests if not (is_local(u) or u.startswith(f"{url}/"))] == [], log.requests
    assert f"{url}/predict?top_k=3" in log.requests and f"{url}/map?format=json" in log.requests
    formats = ", ".join(PIL_FORMATS)
    assert refusal == f"notes.png: cannot be read as an image (not one of the formats read here: {formats})"
    assert (tmp_path / "page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _not_an_image(folder: Path) -> Path:
    path = folder / "notes.png"
    path.write_text("shopping list\n")
    return path


def test_the_loopback_browser_reaches_the_server_and_nothing_else() -> None:
    """The harness's loopback mode (the test above relies on it) still blocks every other address."""
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse

    chromium = require_chromium()
    app = FastAPI()
    outside = ("https://example.com/pixel.png", "http://10.20.30.40/pixel.png")
    page = '<link rel="icon" href="data:,">' + "".join(f'<img src="{u}">' for u in outside) + "<p id=here>served</p>"
    app.get("/", response_class=HTMLResponse)(lambda: page)
    with live_server(app) as url, Browser(chromium, loopback=True) as browser:
        log = browser.open(f"{url}/")
        shown = browser.evaluate("document.getElementById('here').textContent")
    assert shown == "served"
    assert [u for u in log.requests if not is_local(u)] == [f"{url}/", *outside]
    errors = "\n".join(log.console_errors)
    assert all("net::ERR_" in errors and u in errors for u in outside), errors
