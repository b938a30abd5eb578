"""One scene as one task: what every scene is mapped with (:class:`RegionTask`), what became of it
(:class:`SceneResult`), and :func:`map_scene`, which a worker runs. Each worker process loads the
model once (:func:`worker_predictor`), not once per scene, after checking the file's sha256.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import astuple, dataclass, field, replace
from pathlib import Path
from typing import Any

from eurosat_pipeline.core.errors import MapError, PipelineError, first_line
from eurosat_pipeline.core.stage import user_error
from eurosat_pipeline.inference.engines import Predictor, load_predictor
from eurosat_pipeline.inference.options import ModelOptions
from eurosat_pipeline.maps.accuracy import fingerprint as matrix_fingerprint
from eurosat_pipeline.maps.mapping import MapSettings, make_map
from eurosat_pipeline.platform.cores import core_share
from eurosat_pipeline.scenes.sources import BandFiles, RasterScene

Scene = RasterScene | BandFiles
Echo = Callable[[str], None]


@dataclass(frozen=True)
class RegionTask:
    """What every scene is mapped with: the model (its file's sha256 in ``model.sha256``, checked
    by each worker before it loads the file) and the map settings. Picklable, sent with each task."""

    model: ModelOptions
    settings: MapSettings

    def settings_for(self, scene: Scene) -> MapSettings:
        """The settings with the offset made concrete: given, else the scene's catalogue's when all its
        bands share one, else 0; None where the catalogue's bands differ (each then takes its own). The
        mask: the scene's own (its STAC item's ``scl``, one date's file) unless a file is given for all."""
        offset = self.settings.offset if self.settings.offset is not None else scene.offset
        if offset is None and isinstance(scene, RasterScene):
            offset = 0.0
        mask = self.settings.mask
        if mask is not None and mask.path is None and scene.mask is not None:  # the scene's own mask file
            mask = replace(mask, path=scene.mask)
        return replace(self.settings, offset=offset, mask=mask)

    def fingerprint(self, scene: Scene) -> dict[str, Any]:
        """What makes a scene's map what it is: a finished map with another fingerprint is re-made.
        (Not the engine, device or batch size: they give the same classes.)"""
        settings = self.settings_for(scene)
        return {
            "model_sha256": self.model.sha256,
            "inputs": list(scene.inputs()),
            # What the catalogue says of each band's values (scale, offset, nodata): applied band by band.
            "band_values": [[path, *astuple(v)] for path, v in scene.values] if isinstance(scene, BandFiles) else [],
            "bands": list(settings.bands) if settings.bands else None,
            "scale": settings.scale,
            "offset": settings.offset,
            "nodata": settings.nodata,
            "precision": self.model.precision,
            "views": self.model.views,
            "confidence": settings.confidence,
            "scene_preview": settings.scene_preview,
            # The counts behind MAP.csv's error-adjusted areas.
            "accuracy": matrix_fingerprint(settings.accuracy),
            "reference": matrix_fingerprint(settings.reference),
            "stride": settings.stride,  # None: the model's patch; a record holds the stride as mapped
            "mask": None if settings.mask is None else [settings.mask.path, list(settings.mask.classes)],
            "min_confidence": settings.min_confidence,
            "probabilities": settings.probabilities,
        }


@dataclass
class SceneResult:
    """What became of one scene: ``mapped`` now, ``done`` by an earlier run, or ``failed`` (with why)."""

    name: str
    status: str
    error: str = ""
    areas: list[dict[str, Any]] = field(default_factory=list)  # MAP.csv's rows
    classified: int = 0
    skipped: int = 0
    seconds: float = 0.0
    worker: str = ""
    engine: str = ""
    notes: list[str] = field(default_factory=list)
    patch: int = 0  # the model's patch, pixels a side (0: not mapped here)
    stride: int = 0  # the map cell's side in pixels as mapped: the patch when no stride was given
    files: dict[str, bytes] = field(default_factory=dict)  # output name -> bytes, until written
    fatal: bool = False  # the model itself failed (to load): no scene can be mapped


# ---------------------------------------------------------------------------------------------
# One scene, in a worker


_PREDICTORS: dict[str, Predictor] = {}
_PREDICTOR_LOCK = threading.Lock()  # a Dask worker with several threads runs tasks side by side
_LOADS = [0]


def worker_predictor(model: ModelOptions) -> Predictor:
    """This process's model: loaded (and its hash checked) by its first scene, kept for the next
    (one model at a time)."""
    with _PREDICTOR_LOCK:
        if model not in _PREDICTORS:
            _PREDICTORS.clear()
            _PREDICTORS[model] = load_predictor(_for_this_worker(model))
            _LOADS[0] += 1
        return _PREDICTORS[model]


def model_loads() -> int:
    """How many times this process has loaded a model (once per worker, however many scenes)."""
    return _LOADS[0]


def _for_this_worker(model: ModelOptions) -> ModelOptions:
    """The options as this worker loads them: its share of the cores (inside a Dask worker) and the
    model file where it is on this machine (:func:`model_here`)."""
    threads = model.threads or _dask_worker_share()
    return model_here(replace(model, threads=threads))


def _dask_worker_share() -> int | None:
    """Inside a Dask worker: this machine's cores shared among the worker's task threads."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    return core_share(worker.state.nthreads)


def model_here(model: ModelOptions) -> ModelOptions:
    """Where the model is not at its path on this machine (a remote Dask worker), the copy the
    command sent to the worker's folder (:meth:`DaskCluster.ship_model`); its hash is checked when
    it is loaded."""
    if model.model_file.is_file():
        return model
    try:
        from distributed import get_worker

        folder = Path(get_worker().local_directory)
    except (ImportError, ValueError):
        return model  # load_predictor names the missing file
    sent = folder / model.model_file.name
    if not sent.is_file():
        raise MapError(f"{model.model_file}: not on worker {socket.gethostname()}, nor sent to it")
    if model.onnx_file:
        return replace(model, onnx_file=str(sent))
    return replace(model, checkpoint=str(sent))


def _scratch_folder() -> str | None:
    """Where a scene's files are made: a Dask worker's own folder (Dask purges a dead worker's, so a
    worker killed mid-scene leaves no litter), else the system's temporary folder."""
    try:
        from distributed import get_worker

        return get_worker().local_directory
    except (ImportError, ValueError):
        return None


def map_scene(scene: Scene, task: RegionTask) -> SceneResult:
    """Map one scene into a private temporary folder; its files come back as bytes. The scene's own
    problems (unreadable, wrong bands, a bad block) are its failure; a bug raises."""
    started = time.perf_counter()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    try:
        predictor = worker_predictor(task.model)
    except (PipelineError, OSError) as err:
        message = f"the model cannot be loaded: {user_error(err) or first_line(err)}"
        return SceneResult(scene.name, "failed", message, worker=worker, fatal=True)
    try:
        with tempfile.TemporaryDirectory(prefix="eurosat-map-", dir=_scratch_folder()) as folder:
            result, outputs = make_map(
                scene.target(), Path(folder) / f"{scene.name}.tif", predictor, task.settings_for(scene)
            )
            files = {path.name: path.read_bytes() for path in outputs.all()}
    except (PipelineError, OSError) as err:
        message = user_error(err) or f"{type(err).__name__}: {first_line(err)}"
        return SceneResult(scene.name, "failed", message, seconds=time.perf_counter() - started, worker=worker)
    return SceneResult(
        scene.name,
        "mapped",
        areas=result.areas(),
        classified=result.classified,
        skipped=result.skipped,
        seconds=time.perf_counter() - started,
        worker=worker,
        engine=result.engine,
        notes=list(result.notes),
        patch=result.tile,
        stride=result.stride,
        files=files,
    )


# ---------------------------------------------------------------------------------------------
# Executors: where scenes run
