"""Change between two dates, one pair or many: map both scenes (reusing maps already made with the
same model and settings), align AFTER to BEFORE, cross-tabulate, and write the change's files.

**One pair** (:func:`change_pair`): both scenes are mapped by
:func:`eurosat_pipeline.regions.region.map_scenes` into ``<CHANGE>.maps/`` beside the output (into
its ``before/`` and ``after/`` folders when both scenes have one name), with the resume records of a
region: a rerun reuses a map whose record matches the model and settings. The footprints are
checked before either is mapped where the scenes' headers can be read (and again from the maps).

**Many pairs** (:func:`change_pairs`): a CSV of ``before,after`` paths (relative ones to the CSV's
folder). Every distinct scene is mapped once, through the executor (Dask maps them side by side),
into ``DIR/maps/``; then each pair's change is computed here: ``DIR/<before>__<after>.change.tif``
(and ``.csv``, ``.png``, ``.json``), and ``DIR/changes.csv`` with one row per pair. A pair that
fails (a scene that cannot be read or mapped, too little overlap) fails alone.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from eurosat_pipeline.change.grid import (
    ChangeError,
    align,
    check_classes,
    check_overlap,
    map_footprint,
    scene_footprint,
)
from eurosat_pipeline.change.outputs import ChangeOutputs, DateRecord, check_class_count, write_change
from eurosat_pipeline.change.table import ChangeTable, cross_tabulate
from eurosat_pipeline.core.errors import PipelineError
from eurosat_pipeline.core.files import write_csv
from eurosat_pipeline.maps.outputs import read_map
from eurosat_pipeline.regions.executors import Executor
from eurosat_pipeline.regions.region import map_scenes
from eurosat_pipeline.regions.tasks import Echo, RegionTask, Scene, SceneResult
from eurosat_pipeline.scenes.sources import find_scenes, scene_name

CHANGES = "changes.csv"
MAPS = "maps"
PAIRS_COLUMNS = ("before", "after")
MASK_COLUMNS = ("before_mask", "after_mask")  # optional: each date's own mask file (SCL)
CHANGES_COLUMNS = (
    "pair",
    "before",
    "after",
    "status",
    "error",
    "compared_cells",
    "changed_cells",
    "changed_hectares",
    "main_transitions",
    "change_map",
)
MAIN_TRANSITIONS = 3


@dataclass(frozen=True)
class ChangeJob:
    """What every pair of a run shares: the model and map settings (``task``; the confidence sidecar
    on, so a map read back knows its uncertain cells), where scenes are mapped, the overlap asked for."""

    task: RegionTask
    executor: Executor
    min_overlap: float
    echo: Echo = print


def one_scene(given: str, role: str, stac_roots: Sequence[str] = (), mask: str | None = None) -> Scene:
    """The single scene a BEFORE or AFTER argument names (an ItemCollection of several is refused),
    with its own date's ``mask`` file when given (its clouds are not the other date's)."""
    scenes = find_scenes([given], {}, stac_roots)
    if len(scenes) != 1:
        names = ", ".join(scene.name for scene in scenes[:4])
        raise ChangeError(f"{role} {given}: holds {len(scenes)} scenes ({names}, ...); give one scene per date")
    if mask is not None:
        if "://" not in mask and not Path(mask).is_file():
            raise ChangeError(f"{role} mask {mask}: not found")
        return replace(scenes[0], mask=mask)
    return scenes[0]


def check_scene_overlap(before: Scene, after: Scene, minimum: float) -> None:
    """The overlap check from the scenes' headers, before mapping; skipped when a header cannot be read."""
    footprints = scene_footprint(before), scene_footprint(after)
    if None not in footprints:
        check_overlap(footprints[0], footprints[1], minimum)


def change_pair(before: Scene, after: Scene, out: str | Path, job: ChangeJob) -> ChangeTable:
    """Map both scenes (or reuse their maps), then the change of ``after`` against ``before`` into ``out``."""
    outputs = ChangeOutputs.for_target(out)
    check_scene_overlap(before, after, job.min_overlap)
    maps = outputs.tif.with_name(f"{outputs.tif.stem}.maps")
    if before.name == after.name:  # one name: a folder per date, or one map would overwrite the other
        results = [map_one(before, maps / "before", job), map_one(after, maps / "after", job)]
        tifs = (maps / "before" / f"{before.name}.tif", maps / "after" / f"{after.name}.tif")
    else:
        results = map_scenes([before, after], maps, job.task, job.executor, job.echo)
        tifs = (maps / f"{before.name}.tif", maps / f"{after.name}.tif")
    for result in results:
        if result.status == "failed":
            raise ChangeError(f"{result.name}: {result.error}")
    reused = [result.name for result in results if result.status == "done"]
    if reused:
        job.echo(f"reused the map(s) of {', '.join(reused)} in {maps}: made with this model and settings")
    return change_of_maps(tifs, outputs, job)


def map_one(scene: Scene, folder: Path, job: ChangeJob) -> SceneResult:
    return map_scenes([scene], folder, job.task, job.executor, job.echo)[0]


def change_of_maps(tifs: tuple[Path, Path], outputs: ChangeOutputs, job: ChangeJob) -> ChangeTable:
    """The change between two maps ``eurosat map`` made (BEFORE's, AFTER's), written to ``outputs``."""
    before, after = read_map(tifs[0]), read_map(tifs[1])
    check_classes(before, after, (str(tifs[0]), str(tifs[1])))
    check_class_count(before.class_names)
    check_overlap(map_footprint(tifs[0].name, before), map_footprint(tifs[1].name, after), job.min_overlap)
    table, codes = cross_tabulate(align(before, after), job.task.settings.accuracy)
    write_change(table, codes, before, outputs, (DateRecord.of_map(tifs[0]), DateRecord.of_map(tifs[1])))
    return table


# ---------------------------------------------------------------------------------------------
# Many pairs


@dataclass
class PairOutcome:
    """One pair of ``pairs.csv``: its scenes (when found), and its change or why it failed."""

    before: str
    after: str
    masks: tuple[str | None, str | None] = (None, None)
    scenes: tuple[Scene, Scene] | None = None
    error: str = ""
    table: ChangeTable | None = None
    outputs: ChangeOutputs | None = None

    @property
    def name(self) -> str:
        if self.scenes is not None:
            return f"{self.scenes[0].name}__{self.scenes[1].name}"
        return f"{scene_name(Path(self.before).stem)}__{scene_name(Path(self.after).stem)}"


@dataclass
class PairsResult:
    pairs: list[PairOutcome]
    changes: Path
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[PairOutcome]:
        return [pair for pair in self.pairs if pair.error]


def read_pairs(path: str | Path) -> list[PairOutcome]:
    """``before,after`` rows (and optionally ``before_mask,after_mask``: each date's own mask file);
    relative paths are taken from the CSV's own folder."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = tuple(reader.fieldnames or ())
            rows = list(reader)
    except (OSError, UnicodeDecodeError) as err:
        raise ChangeError(f"--pairs {path}: cannot be read ({err})") from err
    if not set(PAIRS_COLUMNS) <= set(header):
        raise ChangeError(f"--pairs {path}: needs the columns before,after; it has {', '.join(header) or 'none'}")
    pairs = []
    for line, row in enumerate(rows, start=2):
        given = [(row.get(column) or "").strip() for column in PAIRS_COLUMNS]
        if not all(given):
            raise ChangeError(f"--pairs {path}, line {line}: give both a before and an after path")
        before, after = (_from_folder(text, path.parent) for text in given)
        masks = [(row.get(column) or "").strip() for column in MASK_COLUMNS]
        masks_here = tuple(_from_folder(mask, path.parent) if mask else None for mask in masks)
        pairs.append(PairOutcome(before, after, masks_here))
    if not pairs:
        raise ChangeError(f"--pairs {path}: no pairs")
    return pairs


def _from_folder(text: str, folder: Path) -> str:
    if "://" in text or Path(text).is_absolute():
        return text
    return str(folder / text)


def change_pairs(
    pairs_csv: str | Path, out_dir: str | Path, job: ChangeJob, stac_roots: Sequence[str] = ()
) -> PairsResult:
    """Each pair's change into ``out_dir`` (see the module's docstring)."""
    out_dir = Path(out_dir)
    outcomes = read_pairs(pairs_csv)
    for outcome in outcomes:
        _find_pair(outcome, job, stac_roots)
    distinct: dict[tuple[str, ...], Scene] = {}
    for outcome in outcomes:
        for scene in outcome.scenes if outcome.scenes and not outcome.error else ():
            distinct.setdefault(scene.inputs(), scene)
    results = map_scenes(list(distinct.values()), out_dir / MAPS, job.task, job.executor, job.echo) if distinct else []
    by_inputs = {scene.inputs(): result for scene, result in zip(distinct.values(), results, strict=True)}
    for outcome in outcomes:
        if not outcome.error:
            _change_of_pair(outcome, out_dir, by_inputs, job)
    changes = out_dir / CHANGES
    write_csv(changes, CHANGES_COLUMNS, [_changes_row(outcome) for outcome in outcomes])
    return PairsResult(outcomes, changes)


def _find_pair(outcome: PairOutcome, job: ChangeJob, stac_roots: Sequence[str]) -> None:
    """The pair's two scenes, and its overlap from their headers; a failure is the pair's alone."""
    try:
        scenes = (
            one_scene(outcome.before, "BEFORE", stac_roots, outcome.masks[0]),
            one_scene(outcome.after, "AFTER", stac_roots, outcome.masks[1]),
        )
        outcome.scenes = scenes
        if scenes[0].inputs() == scenes[1].inputs():
            raise ChangeError(f"BEFORE and AFTER are one scene ({outcome.before})")
        check_scene_overlap(*scenes, job.min_overlap)
    except PipelineError as err:
        outcome.error = str(err)


def _change_of_pair(
    outcome: PairOutcome, out_dir: Path, by_inputs: dict[tuple[str, ...], SceneResult], job: ChangeJob
) -> None:
    assert outcome.scenes is not None
    failed = [by_inputs[s.inputs()] for s in outcome.scenes if by_inputs[s.inputs()].status == "failed"]
    if failed:
        outcome.error = "; ".join(f"{result.name}: {result.error}" for result in failed)
        return
    tifs = tuple(out_dir / MAPS / f"{scene.name}.tif" for scene in outcome.scenes)
    try:
        outcome.outputs = ChangeOutputs.for_target(out_dir / f"{outcome.name}.change.tif")
        outcome.table = change_of_maps(tifs, outcome.outputs, job)
    except PipelineError as err:
        outcome.error = str(err)
        return
    table = outcome.table
    job.echo(f"{outcome.name}: {table.changed} of {table.compared} compared cell(s) changed")


def _changes_row(outcome: PairOutcome) -> dict[str, object]:
    row: dict[str, object] = {"pair": outcome.name, "before": outcome.before, "after": outcome.after}
    if outcome.error or outcome.table is None:
        return row | {"status": "failed", "error": outcome.error}
    table = outcome.table
    changed_ha = table.hectares(table.changed)
    return row | {
        "status": "done",
        "compared_cells": table.compared,
        "changed_cells": table.changed,
        "changed_hectares": "" if changed_ha is None else round(changed_ha, 4),
        "main_transitions": "; ".join(_transition_text(table, i, j) for i, j in main_transitions(table)),
        "change_map": outcome.outputs.tif.name if outcome.outputs else "",
    }


def main_transitions(table: ChangeTable) -> list[tuple[int, int]]:
    return table.transitions(changed_only=True)[:MAIN_TRANSITIONS]


def _transition_text(table: ChangeTable, i: int, j: int) -> str:
    cells = int(table.counts[i, j])
    area = table.hectares(cells)
    amount = f"{area:.1f} ha" if area is not None else f"{cells} cells"
    verdict = table.stands_out(i, j)
    mark = " (stands out)" if verdict else ""
    return f"{table.class_names[i]} -> {table.class_names[j]} {amount}{mark}"
