"""The options several commands share: which model runs and how (``predict``, ``map``, ``change``,
``serve``), how scenes become maps (``map``, ``change``) and where many scenes run."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from eurosat_pipeline.core.choices import ENGINES, FORMATS
from eurosat_pipeline.core.views import DEFAULT_VIEWS, VIEW_COUNTS
from eurosat_pipeline.scenes.masks import DEFAULT_MASK_CLASSES

if TYPE_CHECKING:
    from eurosat_pipeline.inference.options import ModelOptions
    from eurosat_pipeline.maps.mapping import MapSettings
    from eurosat_pipeline.scenes.masks import MaskSpec

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


# What the evaluate stage writes (dvc.yaml): the test split's confusion matrix, for `map`'s adjusted areas.
DEFAULT_ACCURACY = "reports/eval/per_class.csv"
DEFAULT_CHECKPOINT = "models/best.ckpt"


def add_model_options(command: argparse.ArgumentParser, views: int = DEFAULT_VIEWS) -> None:
    """Which model runs, and how: the same for predict, map and serve (read back by :func:`model_options`)."""
    command.add_argument("--checkpoint", default="models/best.ckpt", help="checkpoint (default: models/best.ckpt)")
    command.add_argument("--onnx", help=ONNX_HELP)
    command.add_argument("--batch-size", type=int, default=256, help="images per engine call (default: 256)")
    command.add_argument("--device", help=DEVICE_HELP)
    command.add_argument("--precision", choices=FORMATS, default="fp32", help=PRECISION_HELP)
    command.add_argument("--engine", choices=ENGINES, default="auto", help=ENGINE_HELP)
    command.add_argument(
        "--views", type=int, choices=VIEW_COUNTS, default=views, help=f"{VIEWS_HELP} (default: {views})"
    )


def model_options(args: argparse.Namespace, **changes: object) -> ModelOptions:
    """The model options of a command line, as one checked value."""
    from eurosat_pipeline.inference.options import ModelOptions

    given = {
        "checkpoint": args.checkpoint,
        "onnx_file": args.onnx,
        "device": args.device,
        "precision": args.precision,
        "engine": args.engine,
        "views": args.views,
        "batch_size": args.batch_size,
    }
    return ModelOptions(**(given | changes))


def band_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected band numbers like 4,3,2, got {text!r}") from err


def band_file(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH like B04=red.tif, got {text!r}")
    return name.strip(), path


def add_map_settings(land: argparse.ArgumentParser) -> None:
    """How scenes become maps (:class:`MapSettings`): shared by ``map`` and ``change``."""
    land.add_argument(
        "--map-only-preview", action="store_true", help="MAP.png without the scene beside the map (shareable pictures)"
    )
    land.add_argument(
        "--bands",
        type=band_list,
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
        "--offset",
        type=float,
        help="subtracted before s2 scaling (1000 for baseline >= 04.00); default: 0, or a STAC item's "
        "raster:bands offset",
    )
    land.add_argument("--nodata", type=float, help="treat this value as nodata (besides the file's own nodata or mask)")
    land.add_argument(
        "--stac-root",
        dest="stac_roots",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder a STAC item's local hrefs may point into, besides the item's own folder; repeatable",
    )
    land.add_argument(
        "--stride",
        type=int,
        metavar="N",
        help="pixels between overlapping windows of the model's patch, blended (Hann-weighted) into map cells of "
        "N px: a divisor of the patch down to 1/8 of it (64, 32, 16, 8 for EuroSAT); (64/N)^2 times the work "
        "(default: the patch, no overlap)",
    )
    land.add_argument("--confidence", action="store_true", help="also write MAP.confidence.tif (top-1 probability, %%)")
    land.add_argument(
        "--mask",
        metavar="FILE",
        help="a mask raster of the scene's footprint (e.g. Sentinel-2's SCL); its --mask-classes are not mapped. "
        "Default: a STAC item's own scl asset when it has one; 'none': no mask",
    )
    land.add_argument(
        "--mask-classes",
        type=_class_list,
        default=DEFAULT_MASK_CLASSES,
        metavar="V,V,...",
        help="the mask's values to mask (default: 3,8,9,10: SCL's cloud shadow, cloud medium and high, cirrus; "
        "add 11 for snow). A cell under half clear is not classified; MAP.clear.tif says how clear each is",
    )
    land.add_argument(
        "--min-confidence",
        type=float,
        metavar="P",
        help="leave cells whose top-1 probability is below P (0..1) unclassified, counted as uncertain",
    )
    land.add_argument(
        "--probabilities",
        action="store_true",
        help="also write MAP.probabilities.tif: each class's probability, 0..255, a band per class",
    )
    land.add_argument(
        "--accuracy",
        metavar="FILE",
        help="the evaluate stage's per_class.csv (the test split's confusion matrix): MAP.csv gains error-adjusted "
        f"hectares with 95%% intervals (Olofsson et al. 2014), a proxy (default: {DEFAULT_ACCURACY} when it "
        f"exists and the model is {DEFAULT_CHECKPOINT})",
    )
    land.add_argument(
        "--reference",
        metavar="POINTS.CSV",
        help="reference samples of the mapped area (columns x, y in the map's CRS, class by name): the adjusted "
        "areas come from them instead of --accuracy",
    )


def _class_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected mask values like 3,8,9,10, got {text!r}") from err


def mask_spec(args: argparse.Namespace) -> MaskSpec | None:
    """``--mask`` and ``--mask-classes`` as one value (None for ``--mask none``)."""
    from eurosat_pipeline.scenes.masks import MaskSpec

    if args.mask is not None and args.mask.casefold() == "none":
        return None
    return MaskSpec(args.mask, args.mask_classes)


def add_executors(land: argparse.ArgumentParser) -> None:
    """Where many scenes run (read back as :class:`ExecutorChoice` by the command)."""
    executors = land.add_argument_group("where many scenes run (--out-dir)").add_mutually_exclusive_group()
    executors.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="local worker processes, each with its share of the cores (default: one per core, as many as memory "
        "holds); 0: one scene after another in this process",
    )
    executors.add_argument("--dask-local", type=int, metavar="N", help="a Dask LocalCluster of N worker processes")
    executors.add_argument(
        "--scheduler",
        metavar="URL",
        help="a running Dask scheduler, e.g. tcp://HOST:8786 (SLURM, Kubernetes: docs/maps.md)",
    )


def map_settings(args: argparse.Namespace, **changes: object) -> MapSettings:
    """The :class:`MapSettings` of the options :func:`add_map_settings` added (and ``changes``)."""
    from eurosat_pipeline.maps.mapping import MapSettings

    accuracy, reference = error_matrices(args)
    values = {
        "bands": args.bands,
        "scale": args.scale,
        "offset": args.offset,
        "nodata": args.nodata,
        "confidence": args.confidence,
        "scene_preview": not args.map_only_preview,
        "accuracy": accuracy,
        "reference": reference,
        "stride": args.stride,
        "mask": mask_spec(args),
        "min_confidence": args.min_confidence,
        "probabilities": args.probabilities,
    }
    return MapSettings(**(values | changes))


def error_matrices(args: argparse.Namespace) -> tuple[object, object]:
    """The error matrix of ``--accuracy`` and the samples of ``--reference``, which take its place.
    Without either, the evaluate stage's matrix is used only for the pipeline's own model (the
    default checkpoint, no --onnx): another model's areas are never adjusted with this one's errors."""
    from pathlib import Path

    from eurosat_pipeline.maps.accuracy import read_confusion, read_reference

    if args.reference is not None:
        return None, read_reference(args.reference)
    own_model = args.onnx is None and Path(args.checkpoint) == Path(DEFAULT_CHECKPOINT)
    path = args.accuracy or (DEFAULT_ACCURACY if own_model and Path(DEFAULT_ACCURACY).is_file() else None)
    return (read_confusion(path) if path else None), None
