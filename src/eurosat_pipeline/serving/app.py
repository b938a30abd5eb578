"""``eurosat serve``: the model behind an HTTP API (FastAPI on uvicorn) and a page to try it.

The server only translates HTTP: images are read by :func:`eurosat_pipeline.inference.images.read_image_bytes`
(the readers, band matching, value-type checks and pixel limit of ``eurosat predict``), classified by
the engine ``predict`` would pick (:func:`~eurosat_pipeline.inference.engines.load_predictor`), and scenes
are mapped by :func:`eurosat_pipeline.maps.mapping.make_map`, as ``eurosat map`` does.

- ``GET /health``: the model's identity (file, sha256, classes, bands, value type, patch size, engine).
- ``POST /predict``: image files (multipart field ``files``) -> the top classes of each.
- ``POST /map``: one scene (field ``scene``) up to a size limit -> the land-use GeoTIFF, or JSON with
  the hectares per class and links to the preview PNG, the GeoTIFF and the CSV (``GET /maps/...``).
- ``GET /``: a page to drop patches and scenes on; ``GET /docs``: FastAPI's OpenAPI docs.

Bad input is answered with a JSON error (a 4xx status, the file named, no traceback) and the next
request is served as usual: oversized bodies are cut off while they arrive, images over the pixel
limit are refused from their header, before a pixel is decoded. With a token (``--token`` or
``EUROSAT_SERVE_TOKEN``), ``/predict``, ``/map`` and ``/maps`` want ``Authorization: Bearer TOKEN``.
Concurrent requests are classified together by :class:`~eurosat_pipeline.serving.batching.MicroBatcher`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import logging
import os
import re
import secrets
import shutil
import tempfile
import uuid
import warnings
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.middleware.trustedhost import TrustedHostMiddleware

from eurosat_pipeline.core.classes import class_colours_of
from eurosat_pipeline.core.errors import MapError, PipelineError, first_line
from eurosat_pipeline.core.limits import (
    SERVE_FILES_PER_REQUEST,
    SERVE_IMAGE_PIXELS,
    SERVE_MAPS_WAITING,
    SERVE_REQUEST_PIXELS,
    SERVE_SCENE_PIXELS,
    SERVE_UPLOAD_BYTES,
)
from eurosat_pipeline.data.imagefile import sniff
from eurosat_pipeline.inference.engines import Predictor, load_predictor
from eurosat_pipeline.inference.images import declared_pixels, read_image_bytes
from eurosat_pipeline.inference.options import ModelOptions
from eurosat_pipeline.inference.predict import top_classes
from eurosat_pipeline.maps.mapping import MapSettings, check_stride, make_map, tile_of
from eurosat_pipeline.serving.batching import MicroBatcher

log = logging.getLogger(__name__)
TOKEN_VARIABLE = "EUROSAT_SERVE_TOKEN"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
#: Host headers always served: this machine's names (IPv6 literals are bracketed in a Host header).
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
MB = 2**20
MAP_FILES = ("map.tif", "map.png", "map.csv", "map.json")
MEDIA_TYPES = {".tif": "image/tiff", ".png": "image/png", ".csv": "text/csv", ".json": "application/geo+json"}
MAP_CLI = "eurosat map SCENE --out MAP.tif"
#: Seconds a client refused for a full map queue is told to wait (Retry-After): about one small map.
MAP_RETRY_AFTER_S = 10
# The page may talk to this server only: an injected or mistaken external request is refused by the browser.
PAGE_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src 'self' blob: data:; connect-src 'self'; form-action 'none'; base-uri 'none'"
)


@dataclass(frozen=True)
class Limits:
    """What one request may bring: the server's memory stays bounded whatever arrives."""

    #: Bytes of one request body (all its files); more is refused (413) while it arrives.
    upload_bytes: int = SERVE_UPLOAD_BYTES
    #: Pixels of one image sent to /predict, checked in its header before decoding.
    image_pixels: int = SERVE_IMAGE_PIXELS
    #: Pixels of one scene sent to /map (larger scenes: `eurosat map` on the command line).
    scene_pixels: int = SERVE_SCENE_PIXELS
    #: Maps kept for their links (/maps/ID/...); the oldest goes when another is made.
    maps_kept: int = 16
    #: Files in one /predict request.
    files_per_request: int = SERVE_FILES_PER_REQUEST
    #: Pixels of one /predict request, all its images' headers summed, checked before any is decoded.
    request_pixels: int = SERVE_REQUEST_PIXELS
    #: Scenes waiting for /map while one is mapped; one more gets 429 with Retry-After.
    maps_waiting: int = SERVE_MAPS_WAITING


@dataclass(frozen=True)
class ServedModel:
    """The engine that classifies (for /map too: one view per tile) and the file it came from."""

    predictor: Predictor
    file: Path
    sha256: str
    #: Where the file came from when it was fetched from a model registry (repository, version, ...).
    origin: dict[str, str] | None = None

    def identity(self) -> dict[str, Any]:
        data, preprocessing = self.predictor.data, self.predictor.preprocessing
        return {
            "file": self.file.name,
            "sha256": self.sha256,
            "classes": list(data.classes),
            "bands": data.shown_bands(),
            "dtype": data.dtype,
            "patch_size": data.patch_size,
            "image_size": preprocessing.image_size,
            "engine": self.predictor.describe(),
            "views": self.predictor.views,
            "registry": self.origin,
        }


def load_model(options: ModelOptions, origin: dict[str, str] | None = None) -> ServedModel:
    """The model ``eurosat predict`` would run with these options, and its file's sha256, which
    :func:`load_predictor` takes (checking it against ``options.sha256`` when that is given)."""
    served = options.model_file
    if not served.is_file():
        raise PipelineError(f"{served}: model file not found (give --checkpoint, --onnx or --registry)")
    predictor = load_predictor(options)
    return ServedModel(predictor, served, predictor.sha256, origin)


class Refusal(Exception):
    """A request the server will not serve, as a JSON answer: ``detail`` says why, ``errors`` name the files."""

    def __init__(
        self,
        status: int,
        detail: str,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.detail, self.errors = status, detail, errors or []
        self.headers = headers or ({"WWW-Authenticate": "Bearer"} if status == 401 else {})

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail, "errors": self.errors}


def file_refusal(problems: list[tuple[str, str]], total: int, status: int = 422) -> Refusal:
    """One refusal for the files of a request that cannot be used: ``(file name, message)`` each."""
    summary = problems[0][1] if len(problems) == 1 else f"{len(problems)} of {total} file(s) cannot be used"
    return Refusal(status, summary, [{"file": name, "detail": message} for name, message in problems])


# ----- the request body limit -----------------------------------------------------------------------------


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets a 413 that names the limit, refused from
    its Content-Length when it declares one, else as soon as the bytes received pass the limit (the
    rest is never read). It stands outside the app, so it also holds for the multipart parser."""

    def __init__(self, app: Callable[..., Awaitable[None]], limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, send, int(declared))
            return
        received, over, started = 0, False, False

        async def counting_receive() -> dict[str, Any]:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    over = True
                    raise Refusal(413, "too large")  # stops the parser; the answer is sent below
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal started
            if over:  # whatever the app answers to a cut-off body, the answer is the 413
                if not started:
                    started = True
                    await self._refuse(scope, send, None)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        with contextlib.suppress(Refusal):
            await self.app(scope, counting_receive, guarded_send)
        if over and not started:
            await self._refuse(scope, send, None)

    async def _refuse(self, scope: dict[str, Any], send: Callable[..., Any], declared: int | None) -> None:
        """The 413; ``declared``: the size the request announced (None: it was cut off while arriving)."""
        instead = MAP_CLI if scope.get("path") == "/map" else "fewer files per request, or `eurosat predict`"
        size = f"is {_megabytes(declared)}" if declared is not None else "goes"
        detail = (
            f"the request body {size} over this server's limit of {_megabytes(self.limit)} "
            f"(eurosat serve --max-upload-mb); use {instead}"
        )
        response = JSONResponse(Refusal(413, detail).body(), status_code=413, headers={"Connection": "close"})
        await response(scope, _no_body, send)


class TokenGuard:
    """ASGI middleware: the token of a guarded path (/predict, /map, /maps/...) is checked from the
    headers, before a byte of the body is read: a client without the token cannot make the server
    receive, parse or store its upload. (The routes' ``authorised`` dependency states the scheme in
    the OpenAPI description.)"""

    def __init__(self, app: Callable[..., Awaitable[None]], token: str | None) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if self.token is not None and scope["type"] == "http" and _is_guarded(scope.get("path", "")):
            try:
                check_token(self.token, _bearer_of(scope))
            except Refusal as err:
                response = JSONResponse(err.body(), status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, _no_body, send)
                return
        await self.app(scope, receive, send)


def _is_guarded(path: str) -> bool:
    return path in ("/predict", "/map") or path.startswith("/maps/")


def _bearer_of(scope: dict[str, Any]) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header, or None."""
    header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
    scheme, _, credentials = header.partition(" ")
    return credentials.strip() or None if scheme.lower() == "bearer" else None


def _megabytes(size: int) -> str:
    return f"{size / MB:,.2f} MB" if size < 10 * MB else f"{size / MB:,.0f} MB"


async def _no_body() -> dict[str, Any]:
    return {"type": "http.disconnect"}


# ----- maps kept for their links ----------------------------------------------------------------------------


@dataclass
class MapStore:
    """The last ``kept`` maps' files, each in its own folder under ``root``, named by a random id."""

    root: Path
    kept: int
    _ids: OrderedDict[str, Path] = field(default_factory=OrderedDict)

    def new_folder(self) -> tuple[str, Path]:
        map_id = uuid.uuid4().hex
        folder = self.root / map_id
        folder.mkdir(parents=True)
        return map_id, folder

    def keep(self, map_id: str, folder: Path) -> None:
        self._ids[map_id] = folder
        while len(self._ids) > self.kept:
            _, oldest = self._ids.popitem(last=False)
            shutil.rmtree(oldest, ignore_errors=True)

    def file(self, map_id: str, name: str) -> Path | None:
        folder = self._ids.get(map_id)
        if folder is None or name not in MAP_FILES or not (folder / name).is_file():
            return None
        return folder / name


# ----- the application ---------------------------------------------------------------------------------------


@dataclass
class Service:
    """What the routes share: the model, the batcher, the limits, the maps."""

    model: ServedModel
    limits: Limits
    batcher: MicroBatcher
    maps: MapStore
    token: str | None = None
    map_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one scene at a time: memory stays bounded
    #: Requests waiting for ``map_lock`` (bounded by ``limits.maps_waiting``).
    maps_waiting: int = 0


def create_app(
    model: ServedModel,
    limits: Limits | None = None,
    token: str | None = None,
    batch_wait: float = 0.0,
    work_dir: str | Path | None = None,
    allowed_hosts: Sequence[str] = (),
) -> FastAPI:
    """The FastAPI application serving ``model``. The engine's batch size in images at most per
    engine call, for which a request waits up to ``batch_wait`` seconds for others; with 0 (the
    default) a call takes the requests that queued while the previous one ran, and a request alone
    never waits. Requests are served only for the Host names ``localhost``, ``127.0.0.1``, ``[::1]``
    and ``allowed_hosts`` (a page whose own name resolves to this machine, DNS rebinding, gets 400)."""
    limits = limits or Limits()
    folder = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="eurosat-serve-"))
    service = Service(
        model,
        limits,
        MicroBatcher(model.predictor.classify, model.predictor.batch_size, batch_wait),
        MapStore(folder / "maps", limits.maps_kept),
        token or None,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.batcher.start()
        try:
            yield
        finally:
            await service.batcher.stop()
            if not work_dir:
                shutil.rmtree(folder, ignore_errors=True)

    app = FastAPI(
        title="EuroSAT land-use classifier",
        version=model.sha256[:12],
        summary=f"{model.file.name}: {len(model.predictor.data.classes)} classes, {model.predictor.describe()}",
        lifespan=lifespan,
    )
    app.state.service = service
    _add_error_handlers(app)
    _add_routes(app, service)
    app.add_middleware(BodyLimit, limit=limits.upload_bytes)
    app.add_middleware(TokenGuard, token=service.token)  # added late, so it runs early: before the body
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=host_names(allowed_hosts))  # first of all
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Refusal)
    async def refused(_: Any, err: Refusal) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def malformed(_: Any, err: RequestValidationError) -> JSONResponse:
        return JSONResponse(_validation_refusal(err.errors()).body(), status_code=400)

    @app.exception_handler(Exception)
    async def failed(_: Any, err: Exception) -> JSONResponse:  # a bug: logged here, never shown to the client
        log.exception("request failed", exc_info=err)
        body = Refusal(500, "internal error while serving the request (the server's log has the details)").body()
        return JSONResponse(body, status_code=500)


def _validation_refusal(errors: Any) -> Refusal:
    """FastAPI's list of what is missing or malformed, as one sentence with the fix."""
    fields = {str(e.get("loc", ("", ""))[-1]) for e in errors}
    if "files" in fields:
        return Refusal(400, "no image files in the request: send them as form field 'files' (curl -F files=@patch.jpg)")
    if "scene" in fields:
        return Refusal(400, "no scene in the request: send one as form field 'scene' (curl -F scene=@scene.tif)")
    text = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', '')}" for e in errors)
    return Refusal(400, f"malformed request: {text}")


#: The refusals /predict and /map answer, stated in the OpenAPI description (a fuzzer reads them there).
REFUSALS: dict[int | str, dict[str, Any]] = {
    400: {"description": "malformed request (a field missing or of the wrong type)"},
    401: {"description": "the server has a token and this request did not send it (Authorization: Bearer TOKEN)"},
    413: {"description": "over a limit (body bytes, files or pixels per request, a scene's pixels): GET /health"},
    422: {"description": "a file cannot be used: each is named in `errors`"},
}


def _add_routes(app: FastAPI, service: Service) -> None:
    page = importlib.resources.files("eurosat_pipeline.serving").joinpath("page.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def home() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_POLICY})

    @app.get("/health", summary="the model served and the server's limits (no token needed)")
    async def health() -> dict[str, Any]:
        return health_report(service)

    @app.post(
        "/predict",
        summary="the top classes of each image (JPEG, PNG, TIFF)",
        dependencies=[Depends(authorised)],
        responses=REFUSALS,
    )
    async def predict(
        files: Annotated[
            list[UploadFile],
            File(description="image files (at most the server's files_per_request: GET /health), in the model's bands"),
        ],
        top_k: Annotated[int, Query(ge=1, le=100, description="classes per image")] = 3,
    ) -> dict[str, Any]:
        return {"results": await classify_uploads(service, files, top_k)}

    @app.post(
        "/map",
        summary="a land-use map of a scene (GeoTIFF in)",
        dependencies=[Depends(authorised)],
        responses=REFUSALS | {429: {"description": "too many maps waiting: try again after Retry-After seconds"}},
    )
    async def land_use_map(
        request: Request,
        scene: Annotated[UploadFile, File(description="the scene: a GeoTIFF (TIFF or BigTIFF)")],
        output: Annotated[
            str, Query(alias="format", pattern="^(json|geotiff)$", description="json: areas, links; geotiff: the map")
        ] = "json",
        bands: Annotated[str | None, Form(description="the scene's band numbers for the model's bands: 4,3,2")] = None,
        scale: Annotated[str, Form(description="auto, s2, minmax or none (as eurosat map --scale)")] = "auto",
        offset: Annotated[float, Form(description="subtracted before s2 scaling (1000: baseline >= 04.00)")] = 0.0,
        nodata: Annotated[float | None, Form(description="treat this value as nodata")] = None,
        stride: Annotated[
            int | None,
            Form(description="pixels between overlapping windows, the map cell (as eurosat map --stride): 64, 32, 16"),
        ] = None,
    ) -> Any:
        options = MapOptions(bands, scale, offset, nodata, stride)
        map_id, report = await map_upload(service, scene, options, request)
        if output == "geotiff":
            return send_map_file(service, map_id, "map.tif", f"{Path(report['scene']).stem}-map.tif")
        return report

    @app.get(
        "/maps/{map_id}/{name}",
        summary="a map's map.tif, map.png, map.csv, map.json (its STAC Item)",
        dependencies=[Depends(authorised)],
    )
    async def map_file(map_id: str, name: str) -> StreamingResponse:
        return send_map_file(service, map_id, name)


def send_map_file(service: Service, map_id: str, name: str, download: str | None = None) -> StreamingResponse:
    """One of a kept map's files, or a 404. The file is opened here, so a map evicted (or deleted)
    after this lookup is still sent whole from the open file, or, when already gone, is a 404."""
    path = service.maps.file(map_id, name)
    try:
        if path is None:
            raise FileNotFoundError(name)
        handle = path.open("rb")
    except FileNotFoundError:
        kept = service.limits.maps_kept
        raise Refusal(404, f"no map file {map_id}/{name}: the server keeps its last {kept} maps") from None
    headers = {"Content-Length": str(os.fstat(handle.fileno()).st_size)}
    if download:
        headers["Content-Disposition"] = f'attachment; filename="{download}"'
    return StreamingResponse(_chunks_of(handle), media_type=MEDIA_TYPES[path.suffix], headers=headers)


def _chunks_of(handle: Any) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(MB):
            yield chunk


BEARER = HTTPBearer(auto_error=False, description=f"needed when the server has a token ({TOKEN_VARIABLE})")


def authorised(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
    """The routes' guard (a FastAPI dependency, so /docs offers to send the token)."""
    check_token(request.app.state.service.token, credentials.credentials if credentials else None)


def check_token(expected: str | None, given: str | None) -> None:
    """Nothing when the server has no token or the right one came; a 401 otherwise."""
    if expected is None:
        return
    if given is None:
        raise Refusal(401, "this server wants a token: send the header 'Authorization: Bearer TOKEN'")
    if not secrets.compare_digest(given.encode(), expected.encode()):
        raise Refusal(401, "wrong token")


def health_report(service: Service) -> dict[str, Any]:
    limits, batcher = service.limits, service.batcher
    return {
        "status": "ok",
        "model": service.model.identity(),
        "token_required": service.token is not None,
        "limits": {
            "upload_mb": limits.upload_bytes / MB,
            "image_pixels": limits.image_pixels,
            "scene_pixels": limits.scene_pixels,
            "maps_kept": limits.maps_kept,
            "files_per_request": limits.files_per_request,
            "request_pixels": limits.request_pixels,
            "maps_waiting": limits.maps_waiting,
        },
        "batching": {
            "max_batch": batcher.max_batch,
            "max_wait_ms": batcher.max_wait * 1000,
            "engine_calls": batcher.calls,
            "images": batcher.images,
        },
    }


# ----- /predict ----------------------------------------------------------------------------------------------


async def classify_uploads(service: Service, files: list[UploadFile], top_k: int) -> list[dict[str, Any]]:
    """Every file read (as ``eurosat predict`` reads it) or the request refused naming each bad one;
    then the images classified, each beside other requests' images in the micro-batcher."""
    _check_file_count(len(files), service.limits.files_per_request)
    named = [(_name_of(upload, n), await upload.read()) for n, upload in enumerate(files, start=1)]
    await asyncio.to_thread(_check_request_pixels, [raw for _, raw in named], service.limits)
    read = await asyncio.to_thread(lambda: [_read_one(raw, name, service) for name, raw in named])
    problems = [(name, outcome) for (name, _), outcome in zip(named, read, strict=True) if isinstance(outcome, str)]
    if problems:
        raise file_refusal(problems, len(named))
    try:
        rows = await asyncio.gather(*(service.batcher.classify(image[None]) for image in read))
    except PipelineError as err:
        raise Refusal(422, str(err)) from err
    probabilities = np.concatenate(rows)
    classes = service.model.predictor.data.classes
    return [
        {"file": name, "predictions": [{"class": c, "probability": round(p, 6)} for c, p in zip(*top, strict=True)]}
        for (name, _), top in zip(named, top_classes(probabilities, classes, top_k), strict=True)
    ]


def _check_file_count(count: int, limit: int) -> None:
    if count > limit:
        raise Refusal(
            413,
            f"{count} files in one request is over this server's limit of {limit} files per request "
            "(eurosat serve --max-files); send fewer per request, or use `eurosat predict`",
        )


def _check_request_pixels(raws: list[bytes], limits: Limits) -> None:
    """The request's pixels, summed from its files' headers before any is decoded: each file may
    pass the per-image limit and the lot still fill the server's memory. (A file over the per-image
    limit is not counted: it is refused on its own, naming it, and never decoded.)"""
    sizes = [declared_pixels(raw) for raw in raws]
    total, limit = sum(size for size in sizes if size <= limits.image_pixels), limits.request_pixels
    if total > limit:
        raise Refusal(
            413,
            f"the request's images hold {total:,} pixels together, over this server's limit of {limit:,} "
            "pixels per request (eurosat serve --max-request-pixels); send fewer or smaller images per request",
        )


def _name_of(upload: UploadFile, number: int) -> str:
    """The upload's file name for messages (no folders: a browser may send a path), or its position."""
    name = Path(upload.filename or "").name
    return name or f"file {number}"


def _read_one(raw: bytes, name: str, service: Service) -> np.ndarray | str:
    """The image, or why it cannot be used (the message names the file)."""
    if not raw:
        return f"{name}: is empty (0 bytes)"
    try:
        return read_image_bytes(raw, name, service.model.predictor.data, service.limits.image_pixels)
    except PipelineError as err:
        return str(err)
    except Exception as err:  # noqa: BLE001 - a decoder's own failure on a malformed file is still the file's
        log.warning("%s: the decoder failed: %r", name, err)
        return f"{name}: cannot be read as an image ({type(err).__name__}: {err})"


# ----- /map --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MapOptions:
    """What ``eurosat map`` takes beside the scene, as the form sends it."""

    bands: str | None = None
    scale: str = "auto"
    offset: float = 0.0
    nodata: float | None = None
    stride: int | None = None

    def band_numbers(self) -> tuple[int, ...] | None:
        if not self.bands:
            return None
        if not re.fullmatch(r"\s*\d+(\s*,\s*\d+)*\s*", self.bands):
            raise Refusal(422, f"bands {self.bands!r}: give band numbers like 4,3,2")
        return tuple(int(part) for part in self.bands.split(","))


async def map_upload(
    service: Service, upload: UploadFile, options: MapOptions, request: Request
) -> tuple[str, dict[str, Any]]:
    """The scene written to a folder of its own, checked against the size limit from its header,
    mapped by ``make_map`` (one scene at a time, a bounded number waiting; not at all when its
    client has gone) and kept for its links."""
    name = _name_of(upload, 1)
    bands = options.band_numbers()
    try:  # before the upload is saved: the model's patch says which strides it takes
        check_stride(options.stride, tile_of(service.model.predictor.data), "stride")
    except MapError as err:
        raise Refusal(422, str(err)) from err
    async with _place_in_queue(service) as place:
        map_id, folder = service.maps.new_folder()
        try:
            scene = folder / "upload" / _safe_name(name)  # the map's title names it
            await asyncio.to_thread(_save, upload.file, scene)
            if scene.stat().st_size == 0:
                raise file_refusal([(name, f"{name}: is empty (0 bytes)")], 1, 400)
            _check_scene_size(scene, name, service.limits.scene_pixels)
            await place.turn()
            if await request.is_disconnected():  # nobody would take the answer: the next map goes first
                raise Refusal(400, f"{name}: the client went away while the map waited its turn")
            result = await asyncio.to_thread(_make_map, service, scene, folder / "map.tif", name, bands, options)
            shutil.rmtree(scene.parent)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
    service.maps.keep(map_id, folder)
    return map_id, _map_report(map_id, name, result)


def _check_map_queue(service: Service) -> None:
    """A 429 with Retry-After when a map runs (or will) and ``limits.maps_waiting`` others wait already."""
    limit = service.limits.maps_waiting
    if service.maps_waiting + service.map_lock.locked() > limit:
        detail = (
            f"the server is making a map and {service.maps_waiting} more wait, its limit "
            f"(eurosat serve --max-waiting-maps {limit}); try again in {MAP_RETRY_AFTER_S} s, "
            f"or map the scene on the command line: {MAP_CLI}"
        )
        raise Refusal(429, detail, headers={"Retry-After": str(MAP_RETRY_AFTER_S)})


@dataclass
class _Place:
    """One request's place among the maps: counted as waiting from the queue check (its upload being
    saved included, so a flood of uploads is bounded too) until it holds the map lock."""

    service: Service
    waiting: bool = True
    holds_lock: bool = False

    async def turn(self) -> None:
        await self.service.map_lock.acquire()
        self.holds_lock = True
        self.leave_queue()

    def leave_queue(self) -> None:
        if self.waiting:
            self.waiting = False
            self.service.maps_waiting -= 1


@contextlib.asynccontextmanager
async def _place_in_queue(service: Service) -> AsyncIterator[_Place]:
    """A place in the map queue (429 when it is full); on leaving, the lock is given back if taken."""
    _check_map_queue(service)
    service.maps_waiting += 1
    place = _Place(service)
    try:
        yield place
    finally:
        place.leave_queue()
        if place.holds_lock:
            service.map_lock.release()


def _safe_name(name: str) -> str:
    """The upload's name as a plain file name here (letters, digits, ``._-``; never a path or hidden)."""
    return re.sub(r"[^\w.-]", "_", name).lstrip(".")[:120] or "scene.tif"


def _save(source: Any, target: Path) -> None:
    target.parent.mkdir()
    source.seek(0)
    with target.open("wb") as out:
        shutil.copyfileobj(source, out, length=MB)


def _check_scene_size(scene: Path, name: str, limit: int) -> None:
    """A scene over ``limit`` pixels gets a 413 naming the limit and the command for large scenes."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    with scene.open("rb") as file:
        start = file.read(16)
    # Before GDAL reads a byte: other formats it opens (VRT, ...) may name files on this server or URLs.
    if sniff(start) != "TIFF":
        detail = f"{name}: not a GeoTIFF (its first bytes are not TIFF's); /map reads TIFF and BigTIFF scenes only"
        raise file_refusal([(name, detail)], 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(scene, driver="GTiff") as src:  # the header only
                width, height = src.width, src.height
    except RasterioIOError as err:
        raise file_refusal([(name, f"{name}: not a GeoTIFF GDAL can read ({first_line(err)})")], 1) from err
    if width * height > limit:
        detail = (
            f"{name}: {width:,} x {height:,} pixels is over this server's limit of {limit:,} pixels per scene "
            f"(eurosat serve --max-scene-pixels); map it on the command line: {MAP_CLI}"
        )
        raise file_refusal([(name, detail)], 1, 413)


def _make_map(
    service: Service, scene: Path, out: Path, name: str, bands: tuple[int, ...] | None, options: MapOptions
) -> Any:
    """``make_map`` of the scene to ``out`` (and the PNG and CSV beside it); its refusals name the upload."""
    # The served engine, one view per tile as `eurosat map` classifies: no second copy of the model
    # is loaded per map (ONNX Runtime sessions and PyTorch in inference mode serve threads at once).
    one_view = service.model.predictor.with_views(1)
    try:
        settings = MapSettings(
            bands=bands, scale=options.scale, offset=options.offset, nodata=options.nodata, stride=options.stride
        )
        result, _ = make_map(scene, out, one_view, settings)
    except PipelineError as err:
        raise file_refusal([(name, str(err).replace(str(scene), name))], 1) from err
    return result


def _map_report(map_id: str, name: str, result: Any) -> dict[str, Any]:
    colours = class_colours_of(list(result.class_names))
    kinds = ("geotiff", "preview", "csv", "stac")  # the STAC Item's asset hrefs are its siblings here too
    links = {kind: f"/maps/{map_id}/{file}" for kind, file in zip(kinds, MAP_FILES, strict=True)}
    return {
        "id": map_id,
        "scene": name,
        "tiles": {
            "classified": result.classified,
            "skipped": result.skipped,
            "tile_pixels": result.tile,
            "cell_pixels": result.stride,  # the map cell: the stride between windows
        },
        "areas": [row | {"colour": colours[row["class"]]} for row in result.areas()],
        "hectares_known": result.tile_area_m2 is not None,
        "notes": list(result.notes),
        "engine": result.engine,
        "seconds": round(result.seconds, 3),
        "links": links,
    }


# ----- running it --------------------------------------------------------------------------------------------


def host_names(extra: Sequence[str]) -> list[str]:
    """The Host header names served: this machine's, and ``extra`` (an IPv6 address in brackets)."""
    names = [f"[{name}]" if ":" in name and not name.startswith("[") else name for name in extra]
    return list(dict.fromkeys([*LOOPBACK_NAMES, *(name.lower() for name in names if name)]))


def resolve_token(given: str | None) -> str | None:
    """``--token``, else $EUROSAT_SERVE_TOKEN, else none (an empty value is none)."""
    return given or os.environ.get(TOKEN_VARIABLE) or None


def exposure_warning(host: str, token: str | None) -> str | None:
    """What to say when the server listens beyond this machine without a token."""
    if token is None and host not in LOOPBACK_HOSTS:
        return (
            f"listening on {host} without a token: anyone who reaches this port can use the model. "
            f"Set {TOKEN_VARIABLE} (or --token) to require 'Authorization: Bearer TOKEN'."
        )
    return None


def run_server(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``app`` with uvicorn until interrupted (one process: the engine uses every core itself)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=10)
