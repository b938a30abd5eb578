"""Land-use maps of a region: many scenes in one command, a map per scene, a summary and a mosaic.

A scene (:mod:`eurosat_pipeline.scenes.sources`: a raster, band files, a STAC item) is one task:
:func:`map_scene` maps it with :func:`eurosat_pipeline.maps.mapping.make_map`, unchanged, into a
private temporary folder and returns the finished files' bytes (a map is 64x smaller than its
scene: tens of kB, the preview a few hundred). The command's own process writes them into the
output folder, so workers need no shared disk for outputs (a Dask cluster on Kubernetes has none),
and a worker that dies mid-scene leaves nothing there. Where the scenes run:
:mod:`eurosat_pipeline.regions.executors`; one scene's task: :mod:`eurosat_pipeline.regions.tasks`;
the mosaic: :mod:`eurosat_pipeline.regions.mosaic`.

**Output folder** (``--out-dir``): ``<scene>.tif``, ``.png``, ``.csv`` (and ``.confidence.tif``)
as ``eurosat map`` writes them for one scene, then ``<scene>.done.json`` last (the model's sha256,
the inputs, the settings, the areas): a rerun skips the scenes whose record matches and whose
files all exist, so a region resumes where it stopped; another model or setting re-maps them, after
removing the scene's record and then its old files (a scene that fails in the rerun leaves nothing
of the earlier settings). The summary and the mosaic are made from this run's scenes only.
Each map's STAC Item is ``<scene>.json`` (as ``eurosat map`` writes it); ``collection.json``, a STAC
Collection, links the Items of this run's maps (and the merged mosaic, when there is one).
``summary.csv``: per scene its status, error, tiles and hectares per class; a ``total`` row (the
sum over scenes: overlapping scenes count their overlap once each) and, where the maps share a
CRS, a ``mosaic`` row (each place once, as in the mosaic). ``mosaic.vrt`` (GDAL's virtual mosaic
of the maps, no copy) and ``mosaic.tif`` (the maps merged by rasterio, one file to share) when the
maps share a CRS; when they do not (a region across UTM zones), one ``mosaic-<CRS>.vrt`` per CRS and
no merged file: reprojecting a class map would resample its tiles.

The maps alone, without summary or mosaic (the change command's two dates of one place), with
the same records and resume: :func:`map_scenes`.

A scene that cannot be mapped (unreadable, wrong bands) fails alone: its error is in the summary
and on stderr, the other maps are written, and :attr:`RegionResult.failed` makes the exit status 1.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from eurosat_pipeline.core.errors import MapError
from eurosat_pipeline.core.files import atomic_path, read_json, sha256_of, write_csv, write_json
from eurosat_pipeline.maps.outputs import MapOutputs
from eurosat_pipeline.maps.stac import region_collection
from eurosat_pipeline.regions.executors import Executor
from eurosat_pipeline.regions.mosaic import MOSAIC, write_mosaics
from eurosat_pipeline.regions.tasks import Echo, RegionTask, Scene, SceneResult

SUMMARY = "summary.csv"
COLLECTION = "collection.json"  # the STAC Collection of the region's maps
RECORD = ".done.json"
RECORDED = ("areas", "classified", "skipped", "seconds", "worker", "engine", "notes")  # a result's fields kept


@dataclass
class RegionResult:
    scenes: list[SceneResult]
    summary: Path
    mosaics: list[Path]
    notes: list[str] = field(default_factory=list)
    collection: Path | None = None  # the STAC Collection (none without a mapped scene)

    @property
    def failed(self) -> list[SceneResult]:
        return [s for s in self.scenes if s.status == "failed"]


def map_region(
    scenes: Sequence[Scene],
    out_dir: str | Path,
    task: RegionTask,
    executor: Executor,
    echo: Echo = print,
) -> RegionResult:
    """Map every scene not already mapped with this model and settings (:func:`map_scenes`), then the
    summary and the mosaic (see the module's docstring)."""
    out_dir = Path(out_dir)
    check_names(scenes)
    ordered = map_scenes(scenes, out_dir, task, executor, echo)
    mosaics, notes, mosaic_areas = write_mosaics(out_dir, [r for r in ordered if r.status != "failed"])
    summary = out_dir / SUMMARY
    write_summary(summary, ordered, mosaic_areas)
    collection = write_collection(out_dir, [r for r in ordered if r.status != "failed"], mosaics)
    return RegionResult(ordered, summary, mosaics, notes, collection)


def map_scenes(
    scenes: Sequence[Scene],
    out_dir: str | Path,
    task: RegionTask,
    executor: Executor,
    echo: Echo = print,
) -> list[SceneResult]:
    """Map every scene not already mapped with this model and settings into ``out_dir``, writing each
    scene's files and then its record (``<scene>.done.json``) as it finishes; a scene whose record
    matches is ``done`` and not mapped again. The results, in the order of ``scenes``. No summary, no
    mosaic: the change command maps two dates of one place, which a mosaic would merge. The model
    file is hashed here; every worker checks that hash before it loads the file (the hash is in each
    record's fingerprint, ``model_sha256``)."""
    out_dir = Path(out_dir)
    check_unique(scenes)
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
    return [results[scene.name] for scene in scenes]


def check_unique(scenes: Sequence[Scene]) -> None:
    """Scene names are output names: one per scene."""
    seen: dict[str, Scene] = {}
    for scene in scenes:
        if scene.name in seen:
            raise _same_name(seen[scene.name], scene)
        seen[scene.name] = scene


def check_names(scenes: Sequence[Scene]) -> None:
    """Scene names are output names: one per scene, none taken by the summary or the mosaic."""
    seen: dict[str, Scene] = {}
    for scene in scenes:
        if scene.name in seen:
            raise _same_name(seen[scene.name], scene)
        if scene.name in (Path(SUMMARY).stem, Path(COLLECTION).stem) or scene.name.startswith(MOSAIC):
            raise MapError(
                f"a scene named {scene.name} would overwrite {SUMMARY}, {COLLECTION} or the mosaic: rename it"
            )
        seen[scene.name] = scene


def _same_name(first: Scene, second: Scene) -> MapError:
    return MapError(
        f"two scenes are named {second.name} ({', '.join(first.inputs()[:1])} and "
        f"{', '.join(second.inputs()[:1])}): their maps would overwrite each other; map them into "
        "separate --out-dir folders or rename one"
    )


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


def write_collection(out_dir: Path, results: Sequence[SceneResult], mosaics: Sequence[Path]) -> Path | None:
    """``collection.json`` linking the STAC Items of ``results`` (maps of an older version without
    one are left out) and the merged mosaic; none, and an older one removed, without any Item."""
    path = out_dir / COLLECTION
    items = [out_dir / f"{r.name}.json" for r in results if (out_dir / f"{r.name}.json").is_file()]
    if not items:
        path.unlink(missing_ok=True)
        return None
    merged = next((p for p in mosaics if p.suffix == ".tif"), None)
    write_json(path, region_collection(out_dir.resolve().name or "region", items, merged))
    return path


def _record_path(out_dir: Path, name: str) -> Path:
    return out_dir / f"{name}{RECORD}"


def finished(out_dir: Path, scene: Scene, fingerprint: dict[str, Any]) -> SceneResult | None:
    """The scene's earlier result when its record matches ``fingerprint`` and its files all exist."""
    path = _record_path(out_dir, scene.name)
    try:
        record = read_json(path)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("fingerprint") != _as_mapped(fingerprint, record):
        return None
    if not record.get("files") or not all((out_dir / name).is_file() for name in record["files"]):
        return None
    try:
        fields = {key: record[key] for key in RECORDED}
    except KeyError:  # a record of another version: map the scene again
        return None
    return SceneResult(scene.name, "done", **fields)


def _as_mapped(fingerprint: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """The fingerprint with the stride the map used: no stride given means the model's patch (the
    record's ``patch``; the model's hash is the same), so ``--stride 64`` on a 64 px model and no
    ``--stride`` are one setting and a rerun that names it does not map the region again."""
    patch = record.get("patch")
    if fingerprint.get("stride") is None and isinstance(patch, int) and patch > 0:
        return {**fingerprint, "stride": patch}
    return fingerprint


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
    as_mapped = {**fingerprint, "stride": result.stride or fingerprint["stride"]}  # concrete: see _as_mapped
    write_json(_record_path(out_dir, scene.name), {**record, "files": sorted(result.files), "fingerprint": as_mapped})
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
