"""Land-use maps of a region: many scenes in one command, a map per scene, a summary and a mosaic.

A scene (:mod:`eurosat_pipeline.maps.scenes`: a raster, band files, a STAC item) is one task:
:func:`map_scene` maps it with :func:`eurosat_pipeline.maps.mapping.make_map`, unchanged, into a
private temporary folder and returns the finished files' bytes (a map is 64x smaller than its
scene: tens of kB, the preview a few hundred). The command's own process writes them into the
output folder, so workers need no shared disk for outputs (a Dask cluster on Kubernetes has none),
and a worker that dies mid-scene leaves nothing there. Executors (where the scenes run):

- :class:`InProcess`: one scene after another in this process (``--processes 0``; the benchmark's
  sequential loop).
- :class:`LocalProcesses`: worker processes on this machine (``concurrent.futures``, spawned),
  each with its share of the cores (``--processes N``; the default).
- :class:`DaskCluster`: a Dask ``distributed`` cluster: a ``LocalCluster`` of N worker processes
  (``--dask-local N``) or a running scheduler (``--scheduler tcp://HOST:8786``; the model files
  are sent to its workers). Dask reruns the scene of a worker that dies (up to
  ``distributed.scheduler.allowed-failures`` times, 3 by default).

Each worker process loads the model once (:func:`worker_predictor`), not once per scene.

**Output folder** (``--out-dir``): ``<scene>.tif``, ``.png``, ``.csv`` (and ``.confidence.tif``)
as ``eurosat map`` writes them for one scene, then ``<scene>.done.json`` last (the model's sha256,
the inputs, the settings, the areas): a rerun skips the scenes whose record matches and whose
files all exist, so a region resumes where it stopped; another model or setting re-maps them, after
removing the scene's record and then its old files (a scene that fails in the rerun leaves nothing
of the earlier settings). The summary and the mosaic are made from this run's scenes only.
``summary.csv``: per scene its status, error, tiles and hectares per class; a ``total`` row (the
sum over scenes: overlapping scenes count their overlap once each) and, where the maps share a
CRS, a ``mosaic`` row (each place once, as in the mosaic). ``mosaic.vrt`` (GDAL's virtual mosaic
of the maps, no copy) and ``mosaic.tif`` (the maps merged by rasterio, one file to share) when the
maps share a CRS; when they do not (a region across UTM zones), one ``mosaic-<CRS>.vrt`` per CRS and
no merged file: reprojecting a class map would resample its tiles.

A scene that cannot be mapped (unreadable, wrong bands) fails alone: its error is in the summary
and on stderr, the other maps are written, and :attr:`RegionResult.failed` makes the exit status 1.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, astuple, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from eurosat_pipeline.core.errors import PipelineError, first_line
from eurosat_pipeline.core.exports import EXPORT_NAME
from eurosat_pipeline.core.files import atomic_path, read_json, sha256_of, write_csv, write_json, write_text
from eurosat_pipeline.core.stage import user_error
from eurosat_pipeline.inference.engines import Predictor, load_predictor
from eurosat_pipeline.inference.options import ModelOptions
from eurosat_pipeline.maps.mapping import (
    NODATA,
    MapError,
    MapOutputs,
    MapSettings,
    class_colours,
    make_map,
    write_geotiff,
)
from eurosat_pipeline.maps.scenes import BandFiles, RasterScene
from eurosat_pipeline.platform.cores import available_cores, core_share

Scene = RasterScene | BandFiles
SUMMARY = "summary.csv"
MOSAIC = "mosaic"
RECORD = ".done.json"
RECORDED = ("areas", "classified", "skipped", "seconds", "worker", "engine", "notes")  # a result's fields kept
#: Peak memory budgeted per `eurosat map` process on a granule (the measured peaks with each
#: engine: benchmarks/README.md, "Land-use maps"), with room for GDAL's block cache: the default
#: process count fits in RAM.
PROCESS_MEMORY = 1.5e9
DASK_HINT = "pip install 'eurosat-pipeline[region]' (make install has it)"
Echo = Callable[[str], None]


@dataclass(frozen=True)
class RegionTask:
    """What every scene is mapped with: the model (its file's sha256 in ``model.sha256``, checked
    by each worker before it loads the file) and the map settings. Picklable, sent with each task."""

    model: ModelOptions
    settings: MapSettings

    def settings_for(self, scene: Scene) -> MapSettings:
        """The settings with the offset made concrete: given, else the scene's catalogue's when all its
        bands share one, else 0; None where the catalogue's bands differ (each then takes its own)."""
        offset = self.settings.offset if self.settings.offset is not None else scene.offset
        if offset is None and isinstance(scene, RasterScene):
            offset = 0.0
        return replace(self.settings, offset=offset)

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
    files: dict[str, bytes] = field(default_factory=dict)  # output name -> bytes, until written
    fatal: bool = False  # the model itself failed (to load): no scene can be mapped


@dataclass
class RegionResult:
    scenes: list[SceneResult]
    summary: Path
    mosaics: list[Path]
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[SceneResult]:
        return [s for s in self.scenes if s.status == "failed"]


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
        files=files,
    )


# ---------------------------------------------------------------------------------------------
# Executors: where scenes run


class Executor(Protocol):
    """Runs :func:`map_scene` over scenes, yielding each result as it finishes (any order). (Not an
    inference engine: that is the model's runtime, :mod:`eurosat_pipeline.inference.engines`.)"""

    description: str

    def run(self, scenes: Sequence[Scene], task: RegionTask) -> Iterator[SceneResult]: ...


class InProcess:
    """One scene after another, in this process."""

    description = "in this process, one scene at a time"

    def run(self, scenes: Sequence[Scene], task: RegionTask) -> Iterator[SceneResult]:
        for scene in scenes:
            yield _guarded(scene, lambda scene=scene: map_scene(scene, task))


class LocalProcesses:
    """Worker processes on this machine (spawned: no forked copies of threads or GDAL's state), each
    loading the model once and running with an equal share of the cores."""

    def __init__(self, processes: int) -> None:
        if processes < 1:
            raise MapError(f"--processes must be at least 1 (0: in this process), got {processes}")
        self.processes = processes
        self.description = (
            f"up to {processes} local process(es), each with its share of the {available_cores()} core(s)"
        )

    def run(self, scenes: Sequence[Scene], task: RegionTask) -> Iterator[SceneResult]:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool

        workers = min(self.processes, len(scenes))
        task = replace(task, model=replace(task.model, threads=task.model.threads or core_share(workers)))
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        try:
            futures = {pool.submit(map_scene, scene, task): scene for scene in scenes}
            for future in as_completed(futures):
                scene = futures[future]
                if isinstance(future.exception(), BrokenProcessPool):
                    yield SceneResult(
                        scene.name,
                        "failed",
                        "a worker process died (killed, or out of memory) before this scene was mapped; "
                        "run the command again to map it (--dask-local reruns such scenes by itself)",
                    )
                else:
                    yield _guarded(scene, future.result)
        finally:  # stopped early (a fatal result, Ctrl-C): the scenes not started are dropped
            pool.shutdown(wait=True, cancel_futures=True)


class DaskCluster:
    """Scenes as tasks on a Dask ``distributed`` cluster (``client.map`` and ``as_completed``)."""

    def __init__(self, client: Any, description: str, threads: int | None = None, dashboard: bool = True) -> None:
        self.client = client
        self.description = description
        self.threads = threads  # per task; None: each worker shares its machine's cores among its task threads
        self.has_dashboard = dashboard

    @classmethod
    @contextlib.contextmanager
    def local(cls, workers: int) -> Iterator[DaskCluster]:
        """A ``LocalCluster`` of ``workers`` processes, one task thread each."""
        if workers < 1:
            raise MapError(f"--dask-local needs at least 1 worker, got {workers}")
        LocalCluster, Client = _dask("LocalCluster", "Client")
        # Any free port for the scheduler's web server: two clusters on one machine do not collide.
        with (
            environment_kept(),
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
            Client(cluster) as client,
        ):
            description = f"Dask LocalCluster of {workers} worker process(es)"
            yield cls(client, description, core_share(workers), dashboard=_has_bokeh())

    @classmethod
    @contextlib.contextmanager
    def connect(cls, address: str) -> Iterator[DaskCluster]:
        """The running scheduler at ``address`` (``tcp://HOST:8786``)."""
        (Client,) = _dask("Client")
        with environment_kept():
            try:
                client = Client(address, timeout="30s")
            except (OSError, TimeoutError) as err:
                raise MapError(f"--scheduler {address}: cannot reach a Dask scheduler there ({err})") from err
        with environment_kept(), client:
            workers = len(client.scheduler_info().get("workers", {}))
            yield cls(client, f"Dask scheduler {address} ({workers} worker(s) now)")

    def dashboard(self) -> str | None:
        """The dashboard's address; None for a local cluster without bokeh, which draws it."""
        return self.client.dashboard_link if self.has_dashboard else None

    def ship_model(self, model: ModelOptions) -> None:
        """Send the model (and a checkpoint's ONNX export beside it) to every worker, present and
        future, for workers that do not share this machine's disk."""
        files = [model.model_file]
        export = Path(model.checkpoint).with_name(EXPORT_NAME)
        if not model.onnx_file and export.is_file():
            files.append(export)
        for path in files:
            self.client.upload_file(str(path), load=False)

    def run(self, scenes: Sequence[Scene], task: RegionTask) -> Iterator[SceneResult]:
        (as_completed,) = _dask("as_completed")
        task = replace(task, model=replace(task.model, threads=task.model.threads or self.threads))
        futures = self.client.map(map_scene, list(scenes), task=task, pure=False)
        by_key = {future.key: scene for future, scene in zip(futures, scenes, strict=True)}
        try:
            for future in as_completed(futures):
                scene = by_key[future.key]
                yield _guarded(scene, future.result)
                future.release()
        finally:  # stopped early: the cluster drops the scenes still queued
            self.client.cancel(futures)


def _guarded(scene: Scene, run: Callable[[], SceneResult]) -> SceneResult:
    """The scene's result, or its failure for anything else raised (a bug, a worker Dask gave up on)."""
    try:
        return run()
    except Exception as err:  # noqa: BLE001 - one scene's failure (a bug, a dead worker) never stops the others
        kind = type(err).__name__
        detail = first_line(err)
        if kind == "KilledWorker":
            detail = f"the workers running it died repeatedly ({detail}); is it too large for their memory?"
        return SceneResult(scene.name, "failed", f"{kind}: {detail}")


@contextlib.contextmanager
def environment_kept() -> Iterator[None]:
    """This process's environment as it was, afterwards. ``distributed`` writes its workers'
    settings (OMP_NUM_THREADS=1, MKL_NUM_THREADS=1, MALLOC_TRIM_THRESHOLD_) into the environment of
    the process that starts a cluster or client: every process that one starts later would then run
    on one thread."""
    before = dict(os.environ)
    try:
        yield
    finally:
        for key in set(os.environ) - set(before):
            del os.environ[key]
        os.environ.update(before)


def _dask(*names: str) -> list[Any]:
    with environment_kept():
        return _import_dask(names)


def _import_dask(names: tuple[str, ...]) -> list[Any]:
    try:
        import distributed
    except ImportError as err:
        raise MapError(f"--dask-local and --scheduler need Dask's distributed: {DASK_HINT}") from err
    # Its INFO lines (scheduler started, each worker and client registered) would bury the progress
    # lines; its warnings and errors still show.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    return [getattr(distributed, name) for name in names]


def _has_bokeh() -> bool:
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None


@dataclass(frozen=True)
class ExecutorChoice:
    """Where the scenes run, as the command line says: ``dask_local`` workers or the Dask scheduler at
    ``scheduler``; else ``processes`` local processes (0: this process; None: as many as fit)."""

    processes: int | None = None
    dask_local: int | None = None
    scheduler: str | None = None


@contextlib.contextmanager
def open_executor(scenes: int, model: ModelOptions, choice: ExecutorChoice, echo: Echo = print) -> Iterator[Executor]:
    """The executor ``choice`` names: a Dask cluster (a local one, or the running scheduler, which
    is sent the model), this process, or local processes."""
    processes, dask_local, scheduler = choice.processes, choice.dask_local, choice.scheduler
    if dask_local is not None or scheduler is not None:
        opened = DaskCluster.local(dask_local) if scheduler is None else DaskCluster.connect(scheduler)
        with opened as cluster:
            if scheduler is not None:
                cluster.ship_model(model)
            link = cluster.dashboard()
            echo(f"Dask dashboard: {link}" if link else "Dask's dashboard needs bokeh (pip install bokeh)")
            yield cluster
    elif processes == 0:
        yield InProcess()
    else:
        yield LocalProcesses(processes or default_processes(scenes))


def default_processes(scenes: int) -> int:
    """Local processes when none are asked for: one per core, as many as RAM holds, at most one per scene."""
    memory = available_memory()
    by_memory = int(memory // PROCESS_MEMORY) if memory else available_cores()
    return max(1, min(available_cores(), by_memory, scenes))


def available_memory() -> int | None:
    """Bytes of memory new processes can have (Linux's MemAvailable: free plus reclaimable cache)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# ---------------------------------------------------------------------------------------------
# The region: resume, outputs, summary, mosaic


def map_region(
    scenes: Sequence[Scene],
    out_dir: str | Path,
    task: RegionTask,
    executor: Executor,
    echo: Echo = print,
) -> RegionResult:
    """Map every scene not already mapped with this model and settings, writing each scene's files as
    it finishes, then the summary and the mosaic (see the module's docstring). The model file is
    hashed here; every worker checks that hash before it loads the file."""
    out_dir = Path(out_dir)
    check_names(scenes)
    model_file = task.model.model_file
    if not model_file.is_file():
        raise MapError(f"{model_file}: model not found")
    _check_folder(out_dir, scenes)
    task = replace(task, model=replace(task.model, sha256=sha256_of(model_file)))
    results: dict[str, SceneResult] = {}
    pending = []
    for scene in scenes:
        done = finished(out_dir, scene, task.fingerprint(scene))
        if done is not None:
            results[scene.name] = done
        else:
            forget(out_dir, scene)  # a scene that fails now must leave nothing of another model or setting
            pending.append(scene)
    if results:
        echo(f"{len(results)} of {len(scenes)} scene(s) already mapped with this model and settings: skipped")
    if pending:
        echo(f"mapping {len(pending)} scene(s): {executor.description}")
    started = time.perf_counter()
    by_name = {scene.name: scene for scene in pending}
    for count, result in enumerate(executor.run(pending, task) if pending else [], start=1):
        if result.fatal:
            raise MapError(f"{result.error} (on {result.worker}); stopped: no scene can be mapped with it")
        scene = by_name[result.name]
        if result.status == "mapped":
            _write_scene(out_dir, scene, result, task.fingerprint(scene))
        results[result.name] = result
        echo(_progress(result, count, len(pending), time.perf_counter() - started))
    ordered = [results[scene.name] for scene in scenes]
    mosaics, notes, mosaic_areas = write_mosaics(out_dir, [r for r in ordered if r.status != "failed"])
    summary = out_dir / SUMMARY
    write_summary(summary, ordered, mosaic_areas)
    return RegionResult(ordered, summary, mosaics, notes)


def check_names(scenes: Sequence[Scene]) -> None:
    """Scene names are output names: one per scene, none taken by the summary or the mosaic."""
    seen: dict[str, Scene] = {}
    for scene in scenes:
        if scene.name in seen:
            raise MapError(
                f"two scenes are named {scene.name} ({', '.join(seen[scene.name].inputs()[:1])} and "
                f"{', '.join(scene.inputs()[:1])}): their maps would overwrite each other; map them into "
                "separate --out-dir folders or rename one"
            )
        if scene.name == Path(SUMMARY).stem or scene.name.startswith(MOSAIC):
            raise MapError(f"a scene named {scene.name} would overwrite {SUMMARY} or the mosaic: rename it")
        seen[scene.name] = scene


def _check_folder(out_dir: Path, scenes: Sequence[Scene]) -> None:
    """The output folder: writable now (not after hours of mapping), and not holding an input."""
    if out_dir.exists() and not out_dir.is_dir():
        raise MapError(f"--out-dir {out_dir}: is a file; give a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".probe-"):
            pass
    except OSError as err:
        raise MapError(f"--out-dir {out_dir}: cannot write there ({err.strerror or err})") from err
    for scene in scenes:
        for given in scene.inputs():
            path = Path(given.split("=", 1)[-1])
            if path.parent.resolve() == out_dir.resolve() and path.name.startswith(f"{scene.name}."):
                raise MapError(f"--out-dir {out_dir}: the map of {scene.name} would overwrite its input {path}")


def _record_path(out_dir: Path, name: str) -> Path:
    return out_dir / f"{name}{RECORD}"


def finished(out_dir: Path, scene: Scene, fingerprint: dict[str, Any]) -> SceneResult | None:
    """The scene's earlier result when its record matches ``fingerprint`` and its files all exist."""
    path = _record_path(out_dir, scene.name)
    try:
        record = read_json(path)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("fingerprint") != fingerprint:
        return None
    if not record.get("files") or not all((out_dir / name).is_file() for name in record["files"]):
        return None
    try:
        fields = {key: record[key] for key in RECORDED}
    except KeyError:  # a record of another version: map the scene again
        return None
    return SceneResult(scene.name, "done", **fields)


def forget(out_dir: Path, scene: Scene) -> None:
    """Remove a scene's earlier outputs: its record first (without it no file counts as finished),
    then the files it lists and the names a map of the scene has, so that a rerun with other
    settings never mixes maps of two settings, even where the scene fails this time."""
    record = _record_path(out_dir, scene.name)
    try:
        listed = read_json(record).get("files", [])
    except (OSError, ValueError, AttributeError):
        listed = []
    record.unlink(missing_ok=True)
    names = {Path(str(name)).name for name in listed if isinstance(name, str)}
    names |= {path.name for path in MapOutputs.for_target(out_dir / f"{scene.name}.tif", confidence=True).all()}
    for name in sorted(names):
        (out_dir / name).unlink(missing_ok=True)


def _write_scene(out_dir: Path, scene: Scene, result: SceneResult, fingerprint: dict[str, Any]) -> None:
    """The scene's files, each atomically, then its record: the record is the proof all are there."""
    for name, data in result.files.items():
        with atomic_path(out_dir / name) as tmp:
            tmp.write_bytes(data)
    record = {k: v for k, v in asdict(result).items() if k not in ("files", "status", "error")}
    write_json(_record_path(out_dir, scene.name), {**record, "files": sorted(result.files), "fingerprint": fingerprint})
    result.files = {}  # written: do not hold every map's bytes until the end


def _progress(result: SceneResult, count: int, total: int, elapsed: float) -> str:
    left = elapsed / count * (total - count)
    eta = f"; about {_duration(left)} left" if count < total else f"; {_duration(elapsed)} in all"
    where = f" on {result.worker}" if result.worker else ""
    if result.status == "failed":
        return f"[{count}/{total}] {result.name}: FAILED: {result.error}{eta}"
    return f"[{count}/{total}] {result.name}: {result.classified:,} tiles in {result.seconds:.1f} s{where}{eta}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def hectares_by_class(areas: Iterable[dict[str, Any]]) -> dict[str, float | str]:
    """Class -> hectares, from MAP.csv's rows ("" where the scene's CRS gives no areas)."""
    return {row["class"]: row["hectares"] for row in areas}


def write_summary(path: Path, results: Sequence[SceneResult], mosaic_areas: dict[str, float] | None) -> None:
    """One row per scene, then the total over scenes and, when there is one, the mosaic's areas."""
    classes = next((list(hectares_by_class(r.areas)) for r in results if r.areas), [])
    header = ["scene", "status", "error", "tiles", "nodata_tiles", *[f"{c}_ha" for c in classes], "total_ha"]
    header += ["seconds", "worker"]
    rows: list[dict[str, Any]] = []
    totals = dict.fromkeys(classes, 0.0)
    for result in results:
        hectares = hectares_by_class(result.areas)
        row = {"scene": result.name, "status": result.status, "error": result.error, "worker": result.worker}
        if result.status != "failed":
            row |= {"tiles": result.classified, "nodata_tiles": result.skipped, "seconds": round(result.seconds, 2)}
            numbers = {c: h for c, h in hectares.items() if h != ""}
            row |= {f"{c}_ha": h for c, h in numbers.items()}
            row["total_ha"] = round(sum(numbers.values()), 4) if numbers else ""
            for c, h in numbers.items():
                totals[c] += h
        rows.append(row)
    good = [r for r in results if r.status != "failed"]
    total = {"scene": "total", "status": f"{len(good)} of {len(results)} mapped"}
    total |= {"error": f"{len(results) - len(good)} failed" if len(good) < len(results) else ""}
    total |= {"tiles": sum(r.classified for r in good), "nodata_tiles": sum(r.skipped for r in good)}
    total |= {f"{c}_ha": round(h, 4) for c, h in totals.items()} | {"total_ha": round(sum(totals.values()), 4)}
    rows.append(total)
    if mosaic_areas is not None:  # the union of the maps: overlaps counted once
        rows.append(
            {"scene": "mosaic", "status": "each place once"}
            | {f"{c}_ha": h for c, h in mosaic_areas.items()}
            | {"total_ha": round(sum(mosaic_areas.values()), 4)}
        )
    write_csv(path, header, rows)


def write_mosaics(
    out_dir: Path, results: Sequence[SceneResult]
) -> tuple[list[Path], list[str], dict[str, float] | None]:
    """The maps' mosaics (``mosaic.vrt`` and ``mosaic.tif`` for one CRS; one VRT per CRS otherwise),
    notes, and the merged mosaic's hectares per class (None without one). Only upright maps are in
    them; mosaic files of an earlier run that this one does not write are removed, so none is stale."""
    mosaics, notes, areas = _mosaics_of(out_dir, [out_dir / f"{r.name}.tif" for r in results])
    kept = {path.name for path in mosaics}
    for stale in (*out_dir.glob(f"{MOSAIC}.vrt"), *out_dir.glob(f"{MOSAIC}.tif"), *out_dir.glob(f"{MOSAIC}-*.vrt")):
        if stale.name not in kept:
            stale.unlink(missing_ok=True)
    return mosaics, notes, areas


def _mosaics_of(out_dir: Path, maps: Sequence[Path]) -> tuple[list[Path], list[str], dict[str, float] | None]:
    import rasterio

    if not maps:
        return [], ["no maps, no mosaic"], None
    grids = []
    for path in maps:
        with rasterio.open(path) as src:
            grids.append((path, src.crs, src.transform, src.width, src.height, src.tags().get("classes", "")))
    upright = [g for g in grids if g[2].b == 0 and g[2].d == 0]
    notes = [f"{g[0].name} is on a rotated grid: left out of the mosaic" for g in grids if g not in upright]
    if not upright:
        return [], [*notes, "no upright maps, no mosaic"], None
    groups: dict[str, list[tuple[Any, ...]]] = {}
    for grid in upright:
        groups.setdefault(grid[1].to_string() if grid[1] else "no CRS", []).append(grid)
    names = tuple(upright[0][5].split(",")) if upright[0][5] else ()
    if len(groups) == 1:
        vrt = out_dir / f"{MOSAIC}.vrt"
        write_text(vrt, mosaic_vrt(upright, names))
        merged = out_dir / f"{MOSAIC}.tif"
        areas = merge_maps([g[0] for g in upright], merged, names)  # the VRT's maps, no rotated one
        return [vrt, merged], notes, areas
    written = []
    for label, members in groups.items():
        vrt = out_dir / f"{MOSAIC}-{_file_label(label)}.vrt"
        write_text(vrt, mosaic_vrt(members, names))
        written.append(vrt)
    notes.append(f"the maps are in {len(groups)} CRSs: one mosaic VRT per CRS, no merged mosaic.tif")
    return written, notes, None


def _file_label(crs: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in crs).strip("_")


def mosaic_vrt(grids: Sequence[tuple[Any, ...]], names: tuple[str, ...]) -> str:
    """GDAL's VRT format (gdal.org/drivers/raster/vrt.html) for maps in one CRS: each map a
    ``ComplexSource`` whose nodata (255) lets the maps below show through, later maps on top, on
    the grid of the finest map; the class colour table and names as in each map."""
    from xml.etree import ElementTree as ET

    res_x = min(abs(g[2].a) for g in grids)
    res_y = min(abs(g[2].e) for g in grids)
    west = min(g[2].c for g in grids)
    north = max(g[2].f for g in grids)
    east = max(g[2].c + g[2].a * g[3] for g in grids)
    south = min(g[2].f + g[2].e * g[4] for g in grids)
    width, height = round((east - west) / res_x), round((north - south) / res_y)
    root = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    if grids[0][1]:
        ET.SubElement(root, "SRS", dataAxisToSRSAxisMapping="1,2").text = grids[0][1].to_wkt()
    ET.SubElement(root, "GeoTransform").text = f"{west!r}, {res_x!r}, 0.0, {north!r}, 0.0, {-res_y!r}"
    metadata = ET.SubElement(root, "Metadata")
    ET.SubElement(metadata, "MDI", key="classes").text = ",".join(names)
    band = ET.SubElement(root, "VRTRasterBand", dataType="Byte", band="1")
    ET.SubElement(band, "NoDataValue").text = str(NODATA)
    ET.SubElement(band, "ColorInterp").text = "Palette"
    table = ET.SubElement(band, "ColorTable")
    colours = class_colours(names)
    for index in range(NODATA + 1):
        c1, c2, c3, c4 = colours.get(index, (0, 0, 0, 0))
        ET.SubElement(table, "Entry", c1=str(c1), c2=str(c2), c3=str(c3), c4=str(c4))
    for path, _, transform, cols, rows, _ in grids:
        source = ET.SubElement(band, "ComplexSource")
        ET.SubElement(source, "SourceFilename", relativeToVRT="1").text = path.name
        ET.SubElement(source, "SourceBand").text = "1"
        ET.SubElement(source, "SrcRect", xOff="0", yOff="0", xSize=str(cols), ySize=str(rows))
        x_off, y_off = (transform.c - west) / res_x, (north - transform.f) / res_y
        x_size, y_size = cols * abs(transform.a) / res_x, rows * abs(transform.e) / res_y
        ET.SubElement(source, "DstRect", xOff=f"{x_off:g}", yOff=f"{y_off:g}", xSize=f"{x_size:g}", ySize=f"{y_size:g}")
        ET.SubElement(source, "NODATA").text = str(NODATA)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def merge_maps(maps: Sequence[Path], out: Path, names: tuple[str, ...]) -> dict[str, float] | None:
    """The maps merged into one GeoTIFF by :func:`rasterio.merge.merge` (later maps on top, as in the
    VRT), and its hectares per class (None in a CRS without areas)."""
    import rasterio
    from rasterio.merge import merge

    with contextlib.ExitStack() as stack:
        sources = [stack.enter_context(rasterio.open(path)) for path in maps]
        finest = min(abs(s.transform.a) for s in sources), min(abs(s.transform.e) for s in sources)
        mosaic, transform = merge(sources, nodata=NODATA, res=finest, method="last")
        crs = sources[0].crs
    with atomic_path(out) as tmp, rasterio.Env(GDAL_PAM_ENABLED="NO"):
        write_geotiff(tmp, mosaic[0], crs, transform, names, colours=True)
    if crs is None or not crs.is_projected:
        return None
    tile_m2 = abs(transform.determinant) * crs.linear_units_factor[1] ** 2
    counts = np.bincount(mosaic[0][mosaic[0] != NODATA], minlength=len(names))
    return {name: round(float(counts[i]) * tile_m2 / 10_000, 4) for i, name in enumerate(names)}
