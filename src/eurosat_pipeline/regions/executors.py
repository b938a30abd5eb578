"""Where a region's scenes run (executors; an inference *engine* is the model's runtime):

- :class:`InProcess`: one scene after another in this process (``--processes 0``; the benchmark's
  sequential loop).
- :class:`LocalProcesses`: worker processes on this machine (``concurrent.futures``, spawned),
  each with its share of the cores (``--processes N``; the default).
- :class:`DaskCluster`: a Dask ``distributed`` cluster: a ``LocalCluster`` of N worker processes
  (``--dask-local N``) or a running scheduler (``--scheduler tcp://HOST:8786``; the model files
  are sent to its workers). Dask reruns the scene of a worker that dies (up to
  ``distributed.scheduler.allowed-failures`` times, 3 by default).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from eurosat_pipeline.core.errors import MapError, first_line
from eurosat_pipeline.core.exports import EXPORT_NAME
from eurosat_pipeline.inference.options import ModelOptions
from eurosat_pipeline.platform.cores import available_cores, core_share
from eurosat_pipeline.regions.tasks import Echo, RegionTask, Scene, SceneResult, map_scene

#: Peak memory budgeted per `eurosat map` process on a granule (the measured peaks with each
#: engine: benchmarks/README.md, "Land-use maps"), with room for GDAL's block cache: the default
#: process count fits in RAM.
PROCESS_MEMORY = 1.5e9
DASK_HINT = "pip install 'eurosat-pipeline[region]' (make install has it)"


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
