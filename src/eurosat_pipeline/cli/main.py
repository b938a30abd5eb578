"""The eurosat command: the offline demo and the tools around a trained model."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from eurosat_pipeline import __version__
from eurosat_pipeline.cli.change import add_change
from eurosat_pipeline.cli.demo import QUALITIES
from eurosat_pipeline.cli.options import (
    add_executors,
    add_map_settings,
    add_model_options,
    band_file,
    map_settings,
    model_options,
)
from eurosat_pipeline.core.errors import PipelineError
from eurosat_pipeline.core.limits import (
    MAX_IMAGE_PIXELS,
    SERVE_FILES_PER_REQUEST,
    SERVE_IMAGE_PIXELS,
    SERVE_MAPS_WAITING,
    SERVE_REQUEST_PIXELS,
    SERVE_SCENE_PIXELS,
    SERVE_UPLOAD_BYTES,
)
from eurosat_pipeline.core.stage import configure_logging, user_error

if TYPE_CHECKING:
    from eurosat_pipeline.regions.tasks import RegionTask
    from eurosat_pipeline.serving.app import ServedModel


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    configure_logging()
    try:
        return int(args.run(args) or 0)
    except (PipelineError, OSError) as err:
        message = user_error(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    # The module docstring doubles as --help text, so it is plain text, not reStructuredText.
    parser = argparse.ArgumentParser(prog="eurosat", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    for add in (_add_demo, _add_compare, _add_predict, _add_map, add_change, _add_export, _add_serve):
        add(commands)
    return parser


#: The subcommands of `eurosat` (argparse names the type privately).
Commands = argparse._SubParsersAction


def _add_demo(commands: Commands) -> None:
    demo = commands.add_parser(
        "demo",
        help="run the whole pipeline offline with real ImageNet weights: synthetic data, or --data (CPU-sized)",
    )
    demo.add_argument(
        "--data",
        metavar="PATH",
        help="a real EuroSAT zip or folder (e.g. ../shared/eurosat/EuroSAT.zip), or your own folder per class, "
        "instead of synthetic data",
    )
    demo.add_argument(
        "--quality",
        choices=QUALITIES,
        default="default",
        help="with --data: 'best' trains on 128 px inputs, about three times as long, to pass the published "
        "EfficientNet-B0 anchor (docs/results.md has the accuracy and time of each)",
    )
    demo.add_argument(
        "-S",
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra param override, as for 'dvc exp run -S' (repeatable)",
    )
    demo.add_argument("--queue", action="store_true", help="queue the experiment(s) instead of running now")
    demo.add_argument("--name", help="experiment name")
    demo.set_defaults(run=_demo)


def _add_compare(commands: Commands) -> None:
    compare = commands.add_parser(
        "compare", help="Markdown + PNG comparison of the workspace with a git revision (the CML comment)"
    )
    compare.add_argument("--rev", default="main", help="git revision to compare with (default: main)")
    compare.add_argument("--out", default="cml", help="folder for report.md and the PNGs (default: cml)")
    compare.set_defaults(run=_compare)


def _add_predict(commands: Commands) -> None:
    predict = commands.add_parser("predict", help="classify image files or folders (top-k with probabilities)")
    predict.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    add_model_options(predict)
    predict.add_argument("--top-k", type=int, default=3, help="classes to show per image (default: 3)")
    predict.add_argument("--format", choices=("table", "csv", "json"), default="table")
    predict.add_argument("--output", help="write here instead of standard output")
    predict.add_argument(
        "--max-pixels",
        type=int,
        default=MAX_IMAGE_PIXELS,
        help=f"refuse images with more pixels, before decoding them (default: {MAX_IMAGE_PIXELS:,}, PIL's limit)",
    )
    predict.set_defaults(run=_predict)


def _add_map(commands: Commands) -> None:
    land = commands.add_parser(
        "map",
        help="land-use maps of a scene (a raster, Sentinel-2 band files, a STAC item) or of a region of many scenes",
    )
    land.add_argument(
        "scenes",
        nargs="*",
        metavar="SCENE",
        help="a raster with the model's bands (found by band description or position, or --bands); a folder or "
        "SAFE product of Sentinel-2 band files (B02, B03, B04, ... in their names); a STAC Item or ItemCollection "
        "(.json) or a folder of items. Several: one map each, with --out-dir",
    )
    land.add_argument(
        "--band",
        dest="band_files",
        action="append",
        type=band_file,
        default=[],
        metavar="NAME=PATH",
        help="one band's file, instead of SCENE: the model's band by Sentinel-2 name or its own (B04=red.tif); "
        "repeat for each band",
    )
    target = land.add_mutually_exclusive_group()
    target.add_argument("--out", help="one scene's map, MAP.tif; MAP.png and MAP.csv are written beside it")
    target.add_argument(
        "--out-dir",
        metavar="DIR",
        help="any number of scenes: DIR/<scene>.tif (.png, .csv), DIR/summary.csv, DIR/mosaic.vrt; "
        "a rerun skips the scenes already mapped with the same model",
    )
    # One view by default: a granule is ~30,000 tiles, and 8 views cost 8x (predict's default is 8).
    add_model_options(land, views=1)
    add_map_settings(land)
    add_executors(land)
    land.set_defaults(run=_map)


def _add_export(commands: Commands) -> None:
    export = commands.add_parser("export", help="export a checkpoint to ONNX and check it against PyTorch")
    export.add_argument("--checkpoint", default="models/best.ckpt")
    export.add_argument("--out", default="models/model.onnx")
    export.add_argument("--report", default="reports/export.json")
    export.add_argument("--archive", default="data/eurosat.zip", help="parity is checked on its validation images")
    export.add_argument("--split", default="data/split.csv")
    export.set_defaults(run=_export)


def _add_serve(commands: Commands) -> None:
    serve = commands.add_parser(
        "serve", help="serve the model over HTTP: /predict, /map, /health, OpenAPI docs at /docs, a page at /"
    )
    add_model_options(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine)")
    serve.add_argument("--port", type=int, default=8000, help="default: 8000")
    serve.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a Host name clients may use besides localhost, 127.0.0.1, [::1] and --host (repeatable): the name "
        "of this server behind a proxy or on a network; any other Host gets 400 (DNS rebinding)",
    )
    serve.add_argument(
        "--token",
        help="require 'Authorization: Bearer TOKEN' for /predict and /map (default: $EUROSAT_SERVE_TOKEN); "
        "set one when --host reaches beyond this machine",
    )
    serve.add_argument(
        "--max-upload-mb",
        type=float,
        default=SERVE_UPLOAD_BYTES / 2**20,
        help=f"largest request body, all files together (default: {SERVE_UPLOAD_BYTES / 2**20:.0f})",
    )
    serve.add_argument(
        "--max-pixels",
        type=int,
        default=SERVE_IMAGE_PIXELS,
        help=f"refuse /predict images with more pixels, before decoding them (default: {SERVE_IMAGE_PIXELS:,})",
    )
    serve.add_argument(
        "--max-scene-pixels",
        type=int,
        default=SERVE_SCENE_PIXELS,
        help=f"largest /map scene; larger ones: eurosat map (default: {SERVE_SCENE_PIXELS:,})",
    )
    serve.add_argument(
        "--max-files",
        type=int,
        default=SERVE_FILES_PER_REQUEST,
        help=f"most files in one /predict request (default: {SERVE_FILES_PER_REQUEST})",
    )
    serve.add_argument(
        "--max-request-pixels",
        type=int,
        default=SERVE_REQUEST_PIXELS,
        help="most pixels in one /predict request, its images' headers summed before any is decoded "
        f"(default: {SERVE_REQUEST_PIXELS:,})",
    )
    serve.add_argument(
        "--max-waiting-maps",
        type=int,
        default=SERVE_MAPS_WAITING,
        help="scenes that may wait for /map while one is mapped; more get 429 with Retry-After "
        f"(default: {SERVE_MAPS_WAITING})",
    )
    serve.add_argument(
        "--batch-wait-ms",
        type=float,
        default=0.0,
        help="how long a request waits for others to share an engine call (default: 0, no wait: an engine call "
        "takes the requests that queued while the previous one ran)",
    )
    registry = serve.add_argument_group("a model from a registry (GTO tags, fetched with dvc artifacts get)")
    registry.add_argument("--registry", metavar="REPO", help="the Git repository (path or URL) of the registry")
    registry.add_argument("--artifact", default="model", help="the artifact's name in its dvc.yaml (default: model)")
    which = registry.add_mutually_exclusive_group()
    which.add_argument("--version", dest="model_version", metavar="VERSION", help="this version (e.g. v1.2.0)")
    which.add_argument("--stage", help="the version in this stage now (e.g. prod); default: the latest version")
    registry.add_argument(
        "--sha256", help="the model's expected sha256, for versions registered without one in their message"
    )
    registry.add_argument(
        "--fetch-to", metavar="DIR", help="keep the fetched model in this empty folder (default: a temporary one)"
    )
    serve.set_defaults(run=_serve)


def _demo(args: argparse.Namespace) -> int:
    from eurosat_pipeline.cli.demo import run_demo

    return run_demo(args.overrides, queue=args.queue, name=args.name, data=args.data, quality=args.quality)


def _compare(args: argparse.Namespace) -> int:
    from eurosat_pipeline.reporting.compare import compare

    print(compare(args.rev, args.out))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from eurosat_pipeline.inference.predict import emit, failures, predict

    predictions = predict(args.inputs, model_options(args), args.top_k, args.max_pixels)
    emit(predictions, args.format, args.output)
    return 1 if failures(predictions) else 0


def _map(args: argparse.Namespace) -> int:
    from eurosat_pipeline.maps.mapping import make_map
    from eurosat_pipeline.maps.outputs import summary
    from eurosat_pipeline.regions.tasks import RegionTask
    from eurosat_pipeline.scenes.sources import BandFiles, find_scenes

    if args.out is None and args.out_dir is None:
        raise PipelineError("say where the map goes: --out MAP.tif for one scene, --out-dir DIR for any number")
    engine_given = (args.processes, args.dask_local, args.scheduler) != (None, None, None)
    if args.out is not None and engine_given:
        raise PipelineError("--processes, --dask-local and --scheduler run many scenes: use --out-dir DIR")
    if args.out_dir is not None and args.mask not in (None, "none"):
        raise PipelineError(
            "--mask FILE is one scene's mask: map that scene with --out; a region's STAC items bring their own scl"
        )
    names = [name.casefold() for name, _ in args.band_files]
    if len(set(names)) < len(names):
        raise PipelineError("--band: a band is given twice; give each band's file once")
    scenes = find_scenes(args.scenes, dict(args.band_files), args.stac_roots)
    if args.bands is not None and any(isinstance(scene, BandFiles) for scene in scenes):
        raise PipelineError(
            "--bands picks bands of one multi-band raster by number; band files and STAC items are found by band name"
        )
    task = RegionTask(model_options(args), map_settings(args))
    if args.out_dir is not None:
        return _map_region(args, scenes, task)
    if len(scenes) != 1:
        raise PipelineError(f"{len(scenes)} scenes: --out is one scene's map; give --out-dir DIR for a map of each")
    scene = scenes[0]
    result, outputs = make_map(scene.target(), args.out, task.model, task.settings_for(scene))
    print(summary(result, outputs))
    return 0


def _map_region(args: argparse.Namespace, scenes: list, task: RegionTask) -> int:
    """Many scenes: a map each, the summary and the mosaic; status 1 when any scene failed."""
    from eurosat_pipeline.regions.executors import ExecutorChoice, open_executor
    from eurosat_pipeline.regions.region import map_region

    echo = functools.partial(print, flush=True)
    choice = ExecutorChoice(args.processes, args.dask_local, args.scheduler)
    with open_executor(len(scenes), task.model, choice, echo) as executor:
        result = map_region(scenes, args.out_dir, task, executor, echo)
    for note in result.notes:
        print(f"note: {note}")
    written = [result.summary, *result.mosaics, *([result.collection] if result.collection else [])]
    print("wrote " + ", ".join(map(str, written)))
    for failed in result.failed:
        print(f"error: {failed.name}: {failed.error}", file=sys.stderr)
    if result.failed:
        failed = f"{len(result.failed)} of {len(result.scenes)} scene(s) failed"
        print(f"error: {failed} (see {result.summary})", file=sys.stderr)
    return 1 if result.failed else 0


def _export(args: argparse.Namespace) -> int:
    from eurosat_pipeline.inference.export import export_onnx

    report = export_onnx(args.checkpoint, args.out, args.report, args.archive, args.split)
    print(
        f"{args.out}: max |logit difference| vs PyTorch {report['max_abs_diff']:.2e} "
        f"({report['max_relative_diff']:.1e} of the logits' scale), same predicted classes"
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    import tempfile

    try:
        from eurosat_pipeline.serving.app import MB, Limits, create_app, exposure_warning, resolve_token, run_server
    except ImportError as err:
        raise PipelineError(
            f"eurosat serve needs FastAPI and uvicorn: pip install 'eurosat-pipeline[serve]' ({err})"
        ) from err

    token = resolve_token(args.token)
    limits = Limits(
        int(args.max_upload_mb * MB),
        args.max_pixels,
        args.max_scene_pixels,
        files_per_request=args.max_files,
        request_pixels=args.max_request_pixels,
        maps_waiting=args.max_waiting_maps,
    )
    with tempfile.TemporaryDirectory(prefix="eurosat-serve-") as work:
        model = _served_model(args, args.fetch_to or f"{work}/model")
        hosts = [args.host, *args.allowed_host]
        app = create_app(model, limits, token, args.batch_wait_ms / 1000, f"{work}/runs", hosts)
        warning = exposure_warning(args.host, token)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        print(f"serving {model.file} (sha256 {model.sha256}, {model.predictor.describe()})", file=sys.stderr)
        print(
            f"the page: http://{args.host}:{args.port}/  the API: http://{args.host}:{args.port}/docs", file=sys.stderr
        )
        run_server(app, args.host, args.port)
    return 0


def _served_model(args: argparse.Namespace, fetch_to: str) -> ServedModel:
    """The model of --checkpoint / --onnx, or the registry version fetched and checked."""
    from eurosat_pipeline.serving.app import load_model

    if args.registry and args.onnx:
        raise PipelineError("--registry fetches the model to serve: leave out --onnx (or --registry)")
    if not args.registry:
        return load_model(model_options(args))
    from eurosat_pipeline.inference.registry import fetch_model

    fetched = fetch_model(args.registry, fetch_to, args.artifact, args.model_version, args.stage, args.sha256)
    print(f"fetched {fetched.version.label} from {args.registry}: sha256 {fetched.sha256} checked", file=sys.stderr)
    origin = fetched.version.describe()
    where = {"onnx_file": str(fetched.path)} if fetched.is_onnx else {"checkpoint": str(fetched.path)}
    return load_model(model_options(args, sha256=fetched.sha256, **where), origin=origin)


if __name__ == "__main__":
    sys.exit(main())
