"""``eurosat change BEFORE AFTER --out change.tif``: land-use change between two dates; and
``eurosat change --pairs pairs.csv --out-dir DIR``: many pairs, their scenes mapped through the
executors of ``eurosat map --out-dir`` (local processes, Dask). See :mod:`eurosat_pipeline.change.run`."""

from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import replace
from typing import TYPE_CHECKING

from eurosat_pipeline.change.grid import DEFAULT_MIN_OVERLAP
from eurosat_pipeline.cli.options import add_executors, add_map_settings, add_model_options, map_settings, model_options
from eurosat_pipeline.core.errors import PipelineError

if TYPE_CHECKING:
    from eurosat_pipeline.regions.executors import Executor
    from eurosat_pipeline.regions.tasks import RegionTask, Scene


def add_change(commands: argparse._SubParsersAction) -> None:
    """The ``change`` subcommand: one pair (BEFORE AFTER --out) or many (--pairs --out-dir)."""
    change = commands.add_parser(
        "change",
        help="land-use change between two dates of one place: a from-to table in hectares beside the change "
        "classifier error alone would show, a change map, a picture and a STAC Item",
    )
    change.add_argument(
        "scenes",
        nargs="*",
        metavar="BEFORE AFTER",
        help="the two dates: rasters, folders of band files or STAC items (.json) of overlapping places",
    )
    target = change.add_mutually_exclusive_group()
    target.add_argument(
        "--out",
        help="the change map, CHANGE.tif; CHANGE.csv, .png and .json beside it, and both dates' maps in CHANGE.maps/",
    )
    target.add_argument(
        "--out-dir",
        metavar="DIR",
        help="with --pairs: DIR/<before>__<after>.change.tif (.csv, .png, .json) per pair, DIR/changes.csv, "
        "the maps in DIR/maps/",
    )
    change.add_argument(
        "--pairs",
        metavar="PAIRS.CSV",
        help="many pairs: a CSV with the columns before,after (paths relative to the CSV's folder); each distinct "
        "scene is mapped once",
    )
    change.add_argument(
        "--min-overlap",
        type=float,
        default=DEFAULT_MIN_OVERLAP,
        metavar="SHARE",
        help=f"the share of BEFORE's footprint AFTER must cover (default: {DEFAULT_MIN_OVERLAP})",
    )
    change.add_argument(
        "--before-mask",
        metavar="FILE",
        help="BEFORE's own mask raster (e.g. its date's Sentinel-2 SCL; --mask-classes says which values); "
        "a STAC item's scl asset is used without it",
    )
    change.add_argument("--after-mask", metavar="FILE", help="AFTER's own mask raster, as --before-mask")
    add_model_options(change, views=1)  # as map: a granule is ~30,000 tiles
    add_map_settings(change)
    add_executors(change)
    change.set_defaults(run=run_change)


def run_change(args: argparse.Namespace) -> int:
    """One pair (exit 0, or an error) or many (exit 1 when any pair failed)."""
    from eurosat_pipeline.change.grid import check_min_overlap
    from eurosat_pipeline.regions.executors import ExecutorChoice, open_executor
    from eurosat_pipeline.regions.tasks import RegionTask

    check_min_overlap(args.min_overlap)
    _check_form(args)
    # The confidence sidecar always: without it a map read back has no uncertain cells.
    task = RegionTask(model_options(args), replace(map_settings(args), confidence=True))
    echo = functools.partial(print, flush=True)
    choice = ExecutorChoice(args.processes, args.dask_local, args.scheduler)
    if args.pairs is None:
        before, after = _pair_scenes(args)
        with open_executor(2, task.model, choice, echo) as executor:
            return _one_pair(args, before, after, task, executor)
    from eurosat_pipeline.change.run import read_pairs

    scenes = 2 * len(read_pairs(args.pairs))  # at most: the local processes are capped by the scenes
    with open_executor(scenes, task.model, choice, echo) as executor:
        return _many_pairs(args, task, executor)


def _check_form(args: argparse.Namespace) -> None:
    if args.mask is not None and args.mask.casefold() != "none":
        raise PipelineError(
            f"--mask {args.mask}: one mask file would put one date's clouds on both; give --before-mask and "
            "--after-mask (or before_mask and after_mask columns in --pairs)"
        )
    if args.pairs is not None and (args.before_mask or args.after_mask):
        raise PipelineError("with --pairs, give each pair's masks in its before_mask and after_mask columns")
    if args.pairs is None:
        if len(args.scenes) != 2 or args.out is None:
            raise PipelineError("give BEFORE AFTER --out CHANGE.tif (or --pairs PAIRS.CSV --out-dir DIR)")
    elif args.scenes or args.out_dir is None:
        raise PipelineError("--pairs PAIRS.CSV takes --out-dir DIR and no BEFORE AFTER")


def _pair_scenes(args: argparse.Namespace) -> tuple[Scene, Scene]:
    from eurosat_pipeline.change.run import one_scene
    from eurosat_pipeline.scenes.sources import BandFiles

    scenes = (
        one_scene(args.scenes[0], "BEFORE", args.stac_roots, args.before_mask),
        one_scene(args.scenes[1], "AFTER", args.stac_roots, args.after_mask),
    )
    if args.bands is not None and any(isinstance(scene, BandFiles) for scene in scenes):
        raise PipelineError(
            "--bands picks bands of one multi-band raster by number; band files and STAC items are found by band name"
        )
    return scenes


def _one_pair(args: argparse.Namespace, before: Scene, after: Scene, task: RegionTask, executor: Executor) -> int:
    from eurosat_pipeline.change.outputs import ChangeOutputs, summary
    from eurosat_pipeline.change.run import ChangeJob, change_pair

    job = ChangeJob(task, executor, args.min_overlap, functools.partial(print, flush=True))
    table = change_pair(before, after, args.out, job)
    print(summary(table, ChangeOutputs.for_target(args.out)))
    return 0


def _many_pairs(args: argparse.Namespace, task: RegionTask, executor: Executor) -> int:
    from eurosat_pipeline.change.run import ChangeJob, change_pairs

    job = ChangeJob(task, executor, args.min_overlap, functools.partial(print, flush=True))
    result = change_pairs(args.pairs, args.out_dir, job, args.stac_roots)
    print(f"wrote {result.changes} and the changes of {len(result.pairs) - len(result.failed)} pair(s)")
    for failed in result.failed:
        print(f"error: {failed.name}: {failed.error}", file=sys.stderr)
    if result.failed:
        print(
            f"error: {len(result.failed)} of {len(result.pairs)} pair(s) failed (see {result.changes})", file=sys.stderr
        )
    return 1 if result.failed else 0
