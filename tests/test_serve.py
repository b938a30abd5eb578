"""`eurosat serve`: the HTTP API on the tiny trained model, bad input of every kind, the token, maps
of scenes, and the micro-batcher that classifies concurrent requests together."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import resource
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import rasterio
from fastapi.testclient import TestClient
from PIL import Image

from eurosat_pipeline.core.classes import CLASSES
from eurosat_pipeline.core.files import sha256_of
from eurosat_pipeline.inference.options import ModelOptions
from eurosat_pipeline.inference.predict import predict
from eurosat_pipeline.maps.mapping import make_map
from eurosat_pipeline.serving.app import Limits, ServedModel, create_app, exposure_warning, load_model
from eurosat_pipeline.serving.batching import MicroBatcher

from .conftest import REPO_ROOT
from .serving import encoded, live_server, png_bomb, tiff_bytes
from .test_map import TILE_HA, grid_of_labels, mosaic, write_raster

VIEWS = 8  # as `eurosat serve` and `eurosat predict` by default
TEST_HOSTS = ["testserver"]  # the Host that TestClient sends; a server allows this machine's names only


@pytest.fixture(scope="module")
def served(map_model: Path) -> ServedModel:
    return load_model(ModelOptions(map_model, views=VIEWS))


@pytest.fixture(scope="module")
def client(served: ServedModel) -> Iterator[TestClient]:
    with TestClient(create_app(served, allowed_hosts=TEST_HOSTS)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def patches(synthetic_tiles: dict[str, list[np.ndarray]]) -> dict[str, bytes]:
    """One PNG per class (lossless: the server and `eurosat predict` see the same pixels)."""
    return {f"{name}.png": encoded(tiles[0]) for name, tiles in synthetic_tiles.items()}


def upload(files: dict[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (name, data, "application/octet-stream")) for name, data in files.items()]


def test_health_names_the_model_it_serves(client: TestClient, map_model: Path) -> None:
    health = client.get("/health").json()
    model = health["model"]
    assert model["sha256"] == sha256_of(map_model) and model["file"] == map_model.name
    assert model["classes"] == list(CLASSES) and model["bands"] == ["red", "green", "blue"]
    assert (model["dtype"], model["patch_size"], model["image_size"], model["views"]) == ("uint8", 64, 32, VIEWS)
    assert model["engine"].startswith("PyTorch") and model["registry"] is None
    assert health["token_required"] is False and health["limits"]["image_pixels"] == Limits().image_pixels
    assert {"/health", "/predict", "/map"} <= set(client.get("/openapi.json").json()["paths"])
    assert "swagger-ui" in client.get("/docs").text  # FastAPI's docs page


def test_predict_answers_what_eurosat_predict_answers(
    client: TestClient, patches: dict[str, bytes], map_model: Path, tmp_path: Path
) -> None:
    jpeg = {"Forest.jpg": Image.open(io.BytesIO(patches["Forest.png"])).convert("RGB")}
    files = dict(patches) | {"Forest.jpg": _jpeg(jpeg["Forest.jpg"])}
    response = client.post("/predict?top_k=3", files=upload(files))
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    expected = predict([tmp_path / name for name in files], ModelOptions(map_model, views=VIEWS), top_k=3)
    assert [r["file"] for r in results] == list(files)
    for served, cli in zip(results, expected, strict=True):
        assert [p["class"] for p in served["predictions"]] == cli.classes
        assert [p["probability"] for p in served["predictions"]] == pytest.approx(cli.probabilities, abs=1e-5)
    # Not an accuracy bar (the tiny model learns a little differently on each CPU kind): the served
    # answers equal predict's above; this only shows they are not one class for everything.
    right = sum(r["predictions"][0]["class"] == Path(r["file"]).stem for r in results)
    assert right >= 4, f"{right} of {len(results)} right: the tiny model tells the synthetic classes apart"


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_concurrent_requests_share_engine_calls_and_get_their_own_answers(
    served: ServedModel, patches: dict[str, bytes]
) -> None:
    """16 clients at once on a real server: each gets the answer it gets alone, in fewer engine calls."""
    names = list(patches)
    app = create_app(served, batch_wait=0.05)
    with live_server(app) as url, httpx.Client(base_url=url, timeout=60) as http:
        alone = {name: http.post("/predict", files=upload({name: patches[name]})).json() for name in names}
        calls_before = http.get("/health").json()["batching"]["engine_calls"]

        def ask(name: str) -> dict[str, object]:
            with httpx.Client(base_url=url, timeout=60) as own:
                return own.post("/predict", files=upload({name: patches[name]})).json()

        requests = [names[i % len(names)] for i in range(16)]
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            together = list(pool.map(ask, requests))
        batching = http.get("/health").json()["batching"]
    for name, answer in zip(requests, together, strict=True):
        assert answer["results"][0]["file"] == name
        assert answer["results"][0]["predictions"][0]["class"] == alone[name]["results"][0]["predictions"][0]["class"]
    assert batching["engine_calls"] - calls_before < len(requests), batching


# ----- bad input --------------------------------------------------------------------------------------------


# Uploads that must be refused, each beside a good patch: the files, and what the refusal must say.
# (A Forest tile of the synthetic data makes the TIFFs and the truncated JPEG.)
BAD_INPUTS: dict[str, tuple[dict[str, bytes] | None, str]] = {
    "empty file": ({"empty.jpg": b""}, "empty.jpg: is empty"),
    "not an image": ({"notes.jpg": b"these are notes, not pixels\n" * 20}, "notes.jpg: cannot be read as an image"),
    "truncated JPEG": (None, "cut.jpg: cannot be read as an image"),
    "PNG bomb (PIL's own limit)": ({"bomb.png": png_bomb(30_000)}, "bomb.png: refused before decoding"),
    "PNG bomb (the server's limit)": ({"big.png": png_bomb(6_000)}, "big.png: is 6,000 x 6,000 pixels"),
    "TIFF, 2 bands": (None, "two.tif: has 2 band(s); the model takes 3"),
    "TIFF, 16-bit": (None, "wide.tif: has uint16 values; the model was trained on uint8 images"),
}


def _made_from(case: str, forest: np.ndarray) -> dict[str, bytes]:
    made = {
        "truncated JPEG": {"cut.jpg": encoded(forest, "JPEG")[:400]},
        "TIFF, 2 bands": {"two.tif": tiff_bytes(forest[:2])},
        "TIFF, 16-bit": {"wide.tif": tiff_bytes(forest.astype(np.uint16) * 10)},
    }
    return made[case]


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_naming_the_file_and_the_next_request_is_served(
    case: str, client: TestClient, synthetic_tiles: dict[str, list[np.ndarray]], patches: dict[str, bytes]
) -> None:
    files, says = BAD_INPUTS[case]
    files = files or _made_from(case, synthetic_tiles["Forest"][0])
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    response = client.post("/predict", files=upload({"Forest.png": patches["Forest.png"], **files}))
    assert 400 <= response.status_code < 500 and response.headers["content-type"] == "application/json"
    body = response.json()
    assert says in body["detail"] and "Traceback" not in response.text, body
    assert [e["file"] for e in body["errors"]] == list(files)  # the good file is not blamed
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert grown_mb < 100, f"the peak memory grew by {grown_mb:.0f} MB: was a bomb decoded?"
    assert client.post("/predict", files=upload({"Forest.png": patches["Forest.png"]})).status_code == 200


def test_several_bad_files_are_all_named(client: TestClient) -> None:
    response = client.post("/predict", files=upload({"a.jpg": b"", "b.png": b"not a png"}))
    body = response.json()
    assert response.status_code == 422 and body["detail"] == "2 of 2 file(s) cannot be used"
    assert [e["file"] for e in body["errors"]] == ["a.jpg", "b.png"]


def test_a_request_without_files_says_how_to_send_them(client: TestClient) -> None:
    for response in (client.post("/predict"), client.post("/predict", files={"other": ("x.jpg", b"x")})):
        assert response.status_code == 400
        assert response.json()["detail"].startswith("no image files in the request: send them as form field 'files'")


def test_an_upload_over_the_limit_is_refused_whether_it_declares_its_size_or_not(
    served: ServedModel, patches: dict[str, bytes]
) -> None:
    app = create_app(served, Limits(upload_bytes=100_000))
    noise = np.random.default_rng(0).integers(0, 255, 150_000, dtype=np.uint8).tobytes()
    request = httpx.Request("POST", "http://any/predict", files=upload({"big.png": noise}))
    payload, content_type = request.read(), request.headers["content-type"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts the bytes as they arrive
        for start in range(0, len(payload), 16_384):
            yield payload[start : start + 16_384]

    with live_server(app) as url, httpx.Client(base_url=url, timeout=60) as http:
        declared = http.post("/predict", content=payload, headers={"content-type": content_type})
        streamed = http.post("/predict", content=chunks(), headers={"content-type": content_type})
        after = http.post("/predict", files=upload({"Forest.png": patches["Forest.png"]}))
    assert "content-length" not in streamed.request.headers
    assert declared.json()["detail"].startswith("the request body is 0.14 MB over this server's limit")
    assert streamed.json()["detail"].startswith("the request body goes over this server's limit")
    for response in (declared, streamed):
        assert response.status_code == 413, response.text
        detail = response.json()["detail"]
        assert "over this server's limit of 0.10 MB (eurosat serve --max-upload-mb)" in detail, detail
        assert "Traceback" not in response.text
    assert after.status_code == 200


# ----- the token ----------------------------------------------------------------------------------------------


def test_with_a_token_only_the_right_one_is_served(served: ServedModel, patches: dict[str, bytes]) -> None:
    files = upload({"Forest.png": patches["Forest.png"]})
    with TestClient(create_app(served, token="s3cret", allowed_hosts=TEST_HOSTS)) as guarded:
        health = guarded.get("/health")
        missing = guarded.post("/predict", files=files)
        wrong = guarded.post("/predict", files=files, headers={"Authorization": "Bearer guess"})
        right = guarded.post("/predict", files=files, headers={"Authorization": "Bearer s3cret"})
        map_file = guarded.get("/maps/0123/map.png", headers={"Authorization": "Bearer guess"})
    assert health.status_code == 200 and health.json()["token_required"] is True  # probes need no token
    assert missing.status_code == 401 and "Authorization: Bearer TOKEN" in missing.json()["detail"]
    assert missing.headers["www-authenticate"] == "Bearer"
    assert wrong.status_code == 401 and wrong.json()["detail"] == "wrong token"
    assert map_file.status_code == 401
    assert right.status_code == 200 and right.json()["results"][0]["file"] == "Forest.png"


def test_listening_beyond_this_machine_without_a_token_is_warned_about() -> None:
    assert "without a token" in exposure_warning("0.0.0.0", None)
    assert exposure_warning("0.0.0.0", "s3cret") is None and exposure_warning("127.0.0.1", None) is None


# ----- maps ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory, synthetic_tiles: dict[str, list[np.ndarray]]) -> Path:
    """3 x 4 tiles of known classes, and partial tiles right and below (skipped): 12 mapped, 8 not."""
    folder = tmp_path_factory.mktemp("scene")
    return write_raster(folder / "scene.tif", mosaic(synthetic_tiles, grid_of_labels(3, 4, seed=2), extra=20))


def test_map_answers_the_areas_and_links_its_map_preview_and_table(
    client: TestClient, scene: Path, map_model: Path, tmp_path: Path
) -> None:
    response = client.post("/map", files={"scene": ("fields.tif", scene.read_bytes(), "image/tiff")})
    assert response.status_code == 200, response.text
    report = response.json()
    tiles = {"classified": 12, "skipped": 8, "tile_pixels": 64, "cell_pixels": 64}
    assert report["scene"] == "fields.tif" and report["tiles"] == tiles
    assert report["hectares_known"] and sum(row["hectares"] for row in report["areas"]) == pytest.approx(12 * TILE_HA)
    assert [row["class"] for row in report["areas"]] == list(CLASSES) and report["areas"][0]["colour"] == "#1f77b4"

    preview = client.get(report["links"]["preview"])
    assert preview.headers["content-type"] == "image/png" and Image.open(io.BytesIO(preview.content)).width > 300
    table = client.get(report["links"]["csv"]).text
    assert table.startswith("class,index,tiles,hectares,percent,adjusted_hectares,ci95_hectares\n")
    item = client.get(report["links"]["stac"])  # the map's STAC Item, its assets beside it
    assert item.headers["content-type"] == "application/geo+json" and item.json()["type"] == "Feature"
    assert {asset["href"] for asset in item.json()["assets"].values()} >= {"./map.tif", "./map.png", "./map.csv"}
    served_map = client.get(report["links"]["geotiff"]).content
    geotiff = client.post("/map?format=geotiff", files={"scene": ("fields.tif", scene.read_bytes())})
    assert (
        geotiff.headers["content-type"] == "image/tiff"
        and 'filename="fields-map.tif"' in geotiff.headers["content-disposition"]
    )
    direct, _ = make_map(scene, tmp_path / "direct.tif", ModelOptions(map_model))  # `eurosat map` on the same scene
    with rasterio.open(scene) as source:
        for received in (served_map, geotiff.content):
            with rasterio.MemoryFile(received) as memory, memory.open() as result:
                assert result.crs == source.crs and result.transform == direct.transform
                assert (result.read(1) == direct.classes).all()


def test_a_scene_over_the_limit_gets_413_naming_the_limit_and_the_command(served: ServedModel, scene: Path) -> None:
    with TestClient(create_app(served, Limits(scene_pixels=50_000), allowed_hosts=TEST_HOSTS)) as small:
        response = small.post("/map", files={"scene": ("big.tif", scene.read_bytes())})
        again = small.post("/predict", files=upload({"x.png": encoded(np.zeros((3, 64, 64), np.uint8))}))
    assert response.status_code == 413
    detail = response.json()["detail"]
    assert "big.tif: 276 x 212 pixels is over this server's limit of 50,000 pixels per scene" in detail, detail
    assert "--max-scene-pixels" in detail and "eurosat map SCENE --out MAP.tif" in detail
    assert again.status_code == 200


def test_map_refusals_name_the_upload(client: TestClient, scene: Path) -> None:
    not_raster = client.post("/map", files={"scene": ("notes.tif", b"just text\n" * 100)})
    bad_bands = client.post("/map", files={"scene": ("fields.tif", scene.read_bytes())}, data={"bands": "7,8,9"})
    empty = client.post("/map", files={"scene": ("none.tif", b"")})
    assert not_raster.status_code == 422 and not_raster.json()["errors"][0]["file"] == "notes.tif"
    assert "notes.tif: not a GeoTIFF" in not_raster.json()["detail"]
    assert bad_bands.status_code == 422
    assert bad_bands.json()["detail"] == "fields.tif: band 7 out of range: the file has bands 1..3", bad_bands.json()
    assert empty.status_code == 400 and "none.tif: is empty" in empty.json()["detail"]


def test_map_takes_a_stride_and_refuses_one_the_model_cannot_take(client: TestClient, scene: Path) -> None:
    """The stride form field, as eurosat map --stride: cells of 32 px from windows every 32 px; 48 is
    not a divisor of the model's 64 px patch: a 422 naming the value and the strides allowed."""
    finer = client.post("/map", files={"scene": ("fields.tif", scene.read_bytes())}, data={"stride": "32"})
    refused = client.post("/map", files={"scene": ("fields.tif", scene.read_bytes())}, data={"stride": "48"})
    assert finer.status_code == 200, finer.text
    assert finer.json()["tiles"]["cell_pixels"] == 32 and finer.json()["tiles"]["classified"] > 12
    assert refused.status_code == 422
    assert (
        refused.json()["detail"] == "stride 48: give a divisor of the model's 64 px patch, at least 8 px: 64, 32, 16, 8"
    )


# ----- the micro-batcher --------------------------------------------------------------------------------------


class Engine:
    """A stand-in engine: the mean of each image as a 'probability', and the batch sizes it saw."""

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[int] = []
        self.fail = fail

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.batches.append(len(images))
        if self.fail:
            raise RuntimeError("the engine broke")
        return images.reshape(len(images), -1).mean(axis=1, keepdims=True)


def run_batched(engine: Engine, requests: list[np.ndarray], max_batch: int = 64, max_wait: float = 0.0) -> list:
    async def main() -> list:
        batcher = MicroBatcher(engine, max_batch, max_wait)
        await batcher.start()
        try:
            return await asyncio.gather(*(batcher.classify(r) for r in requests), return_exceptions=True)
        finally:
            await batcher.stop()

    return asyncio.run(main())


def images(count: int, size: int = 8, start: int = 0) -> np.ndarray:
    return np.arange(start, start + count, dtype=np.float32)[:, None, None, None] * np.ones((1, 3, size, size))


def test_requests_queued_together_go_in_one_engine_call_and_get_their_own_rows() -> None:
    engine = Engine()
    requests = [images(1, start=n) for n in range(10)] + [images(3, start=100)]
    answers = run_batched(engine, requests)
    assert engine.batches == [13]
    for request, answer in zip(requests, answers, strict=True):
        assert (answer == request.reshape(len(request), -1).mean(axis=1, keepdims=True)).all()


def test_batches_hold_one_kind_of_image_and_keep_to_the_batch_size() -> None:
    engine = Engine()
    requests = [images(2), images(2, size=16), images(2, start=5), images(9, start=10)]
    answers = run_batched(engine, requests, max_batch=4)
    # The 8 px pair and its twin share a call; the 16 px pair goes alone; the 9 images go alone, in chunks of 4.
    assert engine.batches == [4, 2, 4, 4, 1]
    assert [len(a) for a in answers] == [2, 2, 2, 9] and answers[3][8, 0] == 18


def test_an_engine_failure_reaches_every_waiting_request_and_the_batcher_goes_on() -> None:
    broken = Engine(fail=True)
    answers = run_batched(broken, [images(1), images(1, start=1)])
    assert all(isinstance(a, RuntimeError) for a in answers) and broken.batches == [2]

    async def fail_then_work() -> np.ndarray:
        engine = Engine(fail=True)
        batcher = MicroBatcher(engine, 8, 0.0)
        await batcher.start()
        with pytest.raises(RuntimeError, match="the engine broke"):
            await batcher.classify(images(1))
        engine.fail = False
        answer = await batcher.classify(images(1, start=7))
        await batcher.stop()
        return answer

    assert asyncio.run(fail_then_work())[0, 0] == 7


def test_the_page_ships_in_the_package() -> None:
    """setuptools packages only .py files unless MANIFEST.in names the others: every other file in
    the package (the page) must be named there, or an installed wheel serves no page."""
    package = REPO_ROOT / "src" / "eurosat_pipeline"
    data = [
        p.relative_to(REPO_ROOT).as_posix()
        for p in package.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    ]
    manifest = (REPO_ROOT / "MANIFEST.in").read_text().splitlines()
    assert "src/eurosat_pipeline/serving/page.html" in data
    assert [path for path in data if f"include {path}" not in manifest] == []


# ----- hostile clients ----------------------------------------------------------------------------------------


def vrt_of(source: Path) -> bytes:
    """A GDAL VRT (XML) whose 3 bands are read from ``source``, a file on the server's disk."""
    with rasterio.open(source) as src:
        width, height = src.width, src.height
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{band}"><SimpleSource>'
        f'<SourceFilename relativeToVRT="0">{source}</SourceFilename><SourceBand>{band}</SourceBand>'
        "</SimpleSource></VRTRasterBand>"
        for band in (1, 2, 3)
    )
    return f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">{bands}</VRTDataset>'.encode()


def test_a_vrt_naming_a_file_on_the_server_is_refused_and_never_mapped(client: TestClient, scene: Path) -> None:
    vrt = vrt_of(scene)
    maps_before = len(client.app.state.service.maps._ids)
    mapped = client.post("/map", files={"scene": ("scene.tif", vrt)})
    predicted = client.post("/predict", files=upload({"patch.tif": vrt}))
    for response, name in ((mapped, "scene.tif"), (predicted, "patch.tif")):
        assert 400 <= response.status_code < 500, response.text
        assert response.json()["errors"][0]["file"] == name and name in response.json()["detail"]
    assert "TIFF" in mapped.json()["detail"]
    assert len(client.app.state.service.maps._ids) == maps_before  # nothing was mapped


def test_imagefile_refuses_a_vrt_before_gdal_opens_it(scene: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rasterio.io import MemoryFile

    from eurosat_pipeline.data.imagefile import ImageProblem, read_header

    opened: list[str] = []
    real_open = MemoryFile.open

    def watched_open(self: MemoryFile, *args: object, **kwargs: object) -> object:
        opened.append(self.name)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(MemoryFile, "open", watched_open)
    with pytest.raises(ImageProblem, match="its first bytes are not a JPEG"):
        read_header(vrt_of(scene))
    assert opened == []


def test_too_many_files_or_pixels_in_one_request_get_413_before_any_is_decoded(
    client: TestClient, patches: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("an image was decoded: the request's limits are checked on the headers first")

    monkeypatch.setattr("eurosat_pipeline.serving.app.read_image_bytes", no_decoding)
    limits = Limits()
    many = {f"p{n}.png": patches["Forest.png"] for n in range(limits.files_per_request + 1)}
    # Each under the per-image limit (2,000 x 2,000 in under 300 bytes), together over the request's.
    side = 2000
    count = limits.request_pixels // side**2 + 1
    assert count <= limits.files_per_request and side**2 <= limits.image_pixels
    bombs = {f"b{n}.png": png_bomb(side) for n in range(count)}
    too_many = client.post("/predict", files=upload(many))
    too_big = client.post("/predict", files=upload(bombs))
    assert too_many.status_code == 413, too_many.text
    assert f"{len(many)} files" in too_many.json()["detail"] and "--max-files" in too_many.json()["detail"]
    assert too_big.status_code == 413, too_big.text
    assert f"{count * side**2:,} pixels" in too_big.json()["detail"]
    assert "--max-request-pixels" in too_big.json()["detail"]


def test_the_token_is_checked_before_the_body_is_read(served: ServedModel) -> None:
    """A wrong token with a body over the limit: 401 (the body was never read), not 413."""
    body = upload({"big.png": b"x" * 5_000})
    with TestClient(
        create_app(served, Limits(upload_bytes=1_000), token="s3cret", allowed_hosts=TEST_HOSTS)
    ) as guarded:
        wrong = guarded.post("/predict", files=body, headers={"Authorization": "Bearer guess"})
        missing = guarded.post("/map", files={"scene": ("s.tif", b"x" * 5_000)})
        right = guarded.post("/predict", files=body, headers={"Authorization": "Bearer s3cret"})
    assert wrong.status_code == 401 and wrong.json()["detail"] == "wrong token", wrong.text
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert right.status_code == 413  # the right token: then the body's size


def test_maps_waiting_are_bounded_and_the_next_gets_429_with_retry_after(served: ServedModel, scene: Path) -> None:
    """The lock held by the test stands for a map in progress: one request waits, the next is refused."""
    files = {"scene": ("fields.tif", scene.read_bytes())}
    with TestClient(create_app(served, Limits(maps_waiting=1), allowed_hosts=TEST_HOSTS)) as small:
        service = small.app.state.service
        small.portal.call(service.map_lock.acquire)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(small.post, "/map", files=files)
            while small.portal.call(lambda: service.maps_waiting) < 1 and not waiting.done():
                pass  # the first request is queued behind the held lock
            refused = small.post("/map", files=files)
            small.portal.call(service.map_lock.release)
            first = waiting.result(timeout=60)
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["retry-after"]) > 0 and "--max-waiting-maps" in refused.json()["detail"]
    assert first.status_code == 200, first.text


def test_a_map_whose_client_left_while_waiting_is_not_made(
    served: ServedModel, scene: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[Path] = []
    monkeypatch.setattr("eurosat_pipeline.serving.app._make_map", lambda *args: made.append(args[1]))
    app = create_app(served, allowed_hosts=TEST_HOSTS)
    request = httpx.Request("POST", "http://testserver/map", files={"scene": ("fields.tif", scene.read_bytes())})
    body = request.read()
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    answer: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}  # then the client is gone

    async def send(message: dict) -> None:
        answer.append(message)

    headers = [(k.lower().encode(), v.encode()) for k, v in request.headers.items()]
    scope = {"type": "http", "method": "POST", "path": "/map", "headers": headers, "query_string": b""}
    scope |= {"http_version": "1.1", "scheme": "http", "server": ("testserver", 80), "client": ("127.0.0.1", 1)}
    asyncio.run(app(scope | {"root_path": "", "raw_path": b"/map"}, receive, send))
    assert made == [] and app.state.service.maps._ids == {}


def test_an_error_outside_the_engine_call_reaches_the_waiting_request_and_the_batcher_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_take = MicroBatcher._take_batch
    failures = [RuntimeError("the queue broke")]

    def take_once_broken(self: MicroBatcher) -> list:
        if failures:
            raise failures.pop()
        return real_take(self)

    monkeypatch.setattr(MicroBatcher, "_take_batch", take_once_broken)

    async def main() -> np.ndarray:
        batcher = MicroBatcher(Engine(), 8, 0.0)
        await batcher.start()
        try:
            with pytest.raises(RuntimeError, match="the queue broke"):
                await asyncio.wait_for(batcher.classify(images(1)), timeout=10)
            return await asyncio.wait_for(batcher.classify(images(1, start=7)), timeout=10)
        finally:
            await batcher.stop()

    assert asyncio.run(main())[0, 0] == 7


def test_a_failed_batch_outside_the_engine_is_a_json_error_and_the_next_request_is_served(
    served: ServedModel, patches: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_take, failures = MicroBatcher._take_batch, [MemoryError("stacking failed")]

    def take_once_broken(self: MicroBatcher) -> list:
        if failures:
            raise failures.pop()
        return real_take(self)

    monkeypatch.setattr(MicroBatcher, "_take_batch", take_once_broken)
    files = upload({"Forest.png": patches["Forest.png"]})

    async def main() -> tuple[httpx.Response, httpx.Response]:
        app = create_app(served, allowed_hosts=TEST_HOSTS)
        await app.state.service.batcher.start()  # what the lifespan does
        try:
            transport = httpx.ASGITransport(app, raise_app_exceptions=False)  # a 500 is an answer here
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
                failed = await asyncio.wait_for(http.post("/predict", files=files), timeout=30)
                return failed, await asyncio.wait_for(http.post("/predict", files=files), timeout=30)
        finally:
            await app.state.service.batcher.stop()

    failed, served_next = asyncio.run(main())
    assert 400 <= failed.status_code < 600 and failed.headers["content-type"] == "application/json"
    assert "Traceback" not in failed.text
    assert served_next.status_code == 200, served_next.text


def test_only_the_servers_own_host_names_are_served(served: ServedModel) -> None:
    """A page on evil.example whose name resolves to 127.0.0.1 (DNS rebinding) is refused by Host."""
    app = create_app(served)  # the default: this machine's names only
    with TestClient(app, base_url="http://127.0.0.1:8000") as local:
        evil = local.get("/health", headers={"Host": "evil.example"})
        assert local.get("/health").status_code == 200
        assert local.get("/health", headers={"Host": "localhost:8000"}).status_code == 200
        assert local.get("/health", headers={"Host": "[::1]:8000"}).status_code == 200
        assert local.get("/health", headers={"Host": "testserver"}).status_code == 400
    assert evil.status_code == 400
    with TestClient(
        create_app(served, allowed_hosts=["maps.example.org"]), base_url="http://maps.example.org"
    ) as named:
        assert named.get("/health").status_code == 200
        assert named.get("/health", headers={"Host": "127.0.0.1"}).status_code == 200  # loopback always
        assert named.get("/health", headers={"Host": "evil.example"}).status_code == 400


def test_a_map_dropped_between_lookup_and_sending_is_404(client: TestClient, scene: Path) -> None:
    report = client.post("/map", files={"scene": ("fields.tif", scene.read_bytes())}).json()
    maps = client.app.state.service.maps
    real_file = maps.file

    def found_then_dropped(map_id: str, name: str) -> Path | None:
        path = real_file(map_id, name)
        if path is not None:
            shutil.rmtree(path.parent)  # evicted by another map, or deleted, before the answer is sent
        return path

    maps.file = found_then_dropped
    try:
        response = client.get(report["links"]["preview"])
    finally:
        del maps.file
    assert response.status_code == 404, response.text
    assert response.json()["detail"].startswith(f"no map file {report['id']}/map.png")


@pytest.mark.parametrize("fmt", ["GIF", "ICO", "PCX"])
def test_a_format_pil_knows_but_we_do_not_name_is_refused_naming_the_file(
    fmt: str, client: TestClient, served: ServedModel, tmp_path: Path
) -> None:
    from eurosat_pipeline.core.errors import PipelineError
    from eurosat_pipeline.inference.images import read_image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (40, 90, 30)).save(buffer, format=fmt)
    disguised = tmp_path / "patch.png"  # another format under a name we read
    disguised.write_bytes(buffer.getvalue())
    response = client.post("/predict", files=upload({"patch.png": buffer.getvalue()}))
    assert response.status_code == 422 and response.json()["errors"][0]["file"] == "patch.png", response.text
    assert "patch.png: cannot be read as an image (not one of the formats read here" in response.json()["detail"]
    with pytest.raises(PipelineError, match=r"patch\.png: cannot be read as an image \(not one of the formats"):
        read_image(disguised, served.predictor.data)


def test_an_image_of_any_aspect_takes_every_view(client: TestClient, map_model: Path, tmp_path: Path) -> None:
    """A user's 700 x 500 photo: the default 8 views turn it a quarter (500 x 700), and each view is
    resized by the model's own preprocessing. It was refused: the views needed square images."""
    photo = Image.fromarray(np.random.default_rng(5).integers(0, 255, (500, 700, 3), dtype=np.uint8))
    data = _jpeg(photo)
    response = client.post("/predict", files=upload({"photo.jpg": data}))
    assert response.status_code == 200, response.text
    (tmp_path / "photo.jpg").write_bytes(data)
    (expected,) = predict([tmp_path / "photo.jpg"], ModelOptions(map_model, views=VIEWS), top_k=3)
    served = response.json()["results"][0]["predictions"]
    assert [p["class"] for p in served] == expected.classes
