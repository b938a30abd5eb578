"""The eurosat command: the offline demo and the tools around a trained model."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from eurosat_pipeline import __version__
from eurosat_pipeline.core.choices import ENGINES, FORMATS
from eurosat_pipeline.core.errors import PipelineError
from eurosat_pipeline.core.limits import MAX_IMAGE_PIXELS
from eurosat_pipeline.core.stage import configure_logging, user_error
from eurosat_pipeline.core.views import DEFAULT_VIEWS, VIEW_COUNTS

ONNX_HELP = (
    "use this ONNX file (from the export stage) instead of a checkpoint; it runs on the CPU with the "
    "locked onnxruntime (onnxruntime-gpu in its place for CUDA), while a checkpoint uses the GPU when there is one"
)


DEVICE_HELP = "torch device for a checkpoint: cpu, cuda, cuda:1 (default: the GPU when there is one)"
ENGINE_HELP = (
    "auto (default): ONNX Runtime with the checkpoint's own export (model.onnx beside it, checked by hash) "
    "on machines without an NVIDIA GPU, the fastest CPU engine; else PyTorch"
)
VIEWS_HELP = (
    "test-time augmentation: average the probabilities over this many flips and quarter-turns of each image "
    "(1 = off; 8 = all of them, the most accurate, 8x the model passes)"
)
PRECISION_HELP = (
    "number format for a checkpoint in PyTorch: fp32 (default) or bf16 (about 2.5x faster on CPUs with "
    "AVX512-BF16/AMX; the evaluate stage records its top-1 agreement with fp32)"
)


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
    for add in (_add_demo, _add_compare, _add_predict, _add_map, _add_export):
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


def _add_model_options(command: argparse.ArgumentParser) -> None:
    """Which model runs, and how: the same for predict and map."""
    command.add_argument("--checkpoint", default="models/best.ckpt", help="checkpoint (default: models/best.ckpt)")
    command.add_argument("--onnx", help=ONNX_HELP)
    command.add_argument("--batch-size", type=int, default=256)
    command.add_argument("--device", help=DEVICE_HELP)
    command.add_argument("--precision", choices=FORMATS, default="fp32", help=PRECISION_HELP)
    command.add_argument("--engine", choices=ENGINES, default="auto", help=ENGINE_HELP)


def _add_predict(commands: Commands) -> None:
    predict = commands.add_parser("predict", help="classify image files or folders (top-k with probabilities)")
    predict.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    _add_model_options(predict)
    predict.add_argument("--top-k", type=int, default=3, help="classes to show per image (default: 3)")
    predict.add_argument(
        "--views", type=int, choices=VIEW_COUNTS, default=DEFAULT_VIEWS, help=f"{VIEWS_HELP} (default: {DEFAULT_VIEWS})"
    )
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
        "map", help="land-use map of a whole scene (GeoTIFF or any raster GDAL reads): map, preview, areas"
    )
    land.add_argument(
        "scene", help="the scene: with the model's bands (found by band description or position, or --bands)"
    )
    land.add_argument("--out", required=True, help="the map, MAP.tif; MAP.png and MAP.csv are written beside it")
    _add_model_options(land)
    land.add_argument(
        "--bands",
        type=_band_list,
        help="the scene's band numbers for the model's bands, in its order, 1-based (e.g. 4,3,2: Sentinel-2's RGB)",
    )
    land.add_argument(
        "--scale",
        choices=("auto", "s2", "minmax", "none"),
        default="auto",
        help="RGB models: to 8 bits: s2 = EuroSAT's DN 0..2750 -> 1..255, minmax = 2-98%% stretch, none = as is; "
        "auto (default) = none for 8-bit files, else s2",
    )
    land.add_argument(
        "--offset", type=float, default=0.0, help="subtracted before s2 scaling (1000 for baseline >= 04.00)"
    )
    land.add_argument("--nodata", type=float, help="treat this value as nodata (besides the file's own nodata or mask)")
    land.add_argument("--confidence", action="store_true", help="also write MAP.confidence.tif (top-1 probability, %%)")
    land.add_argument(
        "--map-only-preview", action="store_true", help="MAP.png without the scene beside the map (shareable pictures)"
    )
    land.set_defaults(run=_map)


def _add_export(commands: Commands) -> None:
    export = commands.add_parser("export", help="export a checkpoint to ONNX and check it against PyTorch")
    export.add_argument("--checkpoint", default="models/best.ckpt")
    export.add_argument("--out", default="models/model.onnx")
    export.add_argument("--report", default="reports/export.json")
    export.add_argument("--archive", default="data/eurosat.zip", help="parity is checked on its validation images")
    export.add_argument("--split", default="data/split.csv")
    export.set_defaults(run=_export)


def _demo(args: argparse.Namespace) -> int:
    from eurosat_pipeline.cli.demo import run_demo

    return run_demo(args.overrides, queue=args.queue, name=args.name, data=args.data)


def _compare(args: argparse.Namespace) -> int:
    from eurosat_pipeline.reporting.compare import compare

    print(compare(args.rev, args.out))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from eurosat_pipeline.use.predict import emit, predict

    predictions = predict(
        args.inputs,
        args.checkpoint,
        args.onnx,
        args.top_k,
        args.batch_size,
        args.device,
        args.precision,
        args.engine,
        max_pixels=args.max_pixels,
        views=args.views,
    )
    emit(predictions, args.format, args.output)
    return 0


def _band_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected band numbers like 4,3,2, got {text!r}") from err


def _map(args: argparse.Namespace) -> int:
    from eurosat_pipeline.use.mapping import make_map, summary

    result, outputs = make_map(
        args.scene,
        args.out,
        args.checkpoint,
        args.onnx,
        bands=args.bands,
        scale=args.scale,
        offset=args.offset,
        nodata=args.nodata,
        batch_size=args.batch_size,
        confidence=args.confidence,
        scene_preview=not args.map_only_preview,
        device=args.device,
        precision=args.precision,
        engine=args.engine,
    )
    print(summary(result, outputs))
    return 0


def _export(args: argparse.Namespace) -> int:
    from eurosat_pipeline.use.export import export_onnx

    report = export_onnx(args.checkpoint, args.out, args.report, args.archive, args.split)
    print(
        f"{args.out}: max |logit difference| vs PyTorch {report['max_abs_diff']:.2e} "
        f"({report['max_relative_diff']:.1e} of the logits' scale), same predicted classes"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
