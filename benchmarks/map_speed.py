"""Speed of `eurosat map`: tiles/s through PyTorch and ONNX Runtime, and what a Sentinel-2 tile takes.

    python benchmarks/map_speed.py                                    # tf_efficientnet_lite0 at 64 px
    python benchmarks/map_speed.py --model test_efficientnet --image-size 32   # the tests' tiny model
    python benchmarks/map_speed.py --checkpoint models/best.ckpt --archive data/eurosat.zip --split data/split.csv

Without ``--checkpoint`` it trains a model of the given architecture (random initialisation, one
short epoch on synthetic images: speed does not depend on the weights) so that the figure stands
for that architecture and input size. Both backends classify the same synthetic scene of
``--tiles`` tiles end to end through :func:`eurosat_pipeline.mapping.make_map` (reading, scaling,
tiling, batches of ``--batch-size``, writing); the time counted is the classification of the
scene (reading included), after one warm-up run. A full Sentinel-2 granule is 10,980 x 10,980
pixels at 10 m: 171 x 171 = 29,241 whole tiles of 64 px.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from eurosat_pipeline.config import Config
from eurosat_pipeline.dataset import prepare_dataset
from eurosat_pipeline.export import export_onnx
from eurosat_pipeline.mapping import TILE, make_map
from eurosat_pipeline.split import split_archive
from eurosat_pipeline.training import TrainPaths, train

S2_TILES = (10_980 // TILE) ** 2  # 29,241


def train_stand_in(model_name: str, image_size: int, root: Path) -> tuple[Path, Path, Path]:
    """A checkpoint of ``model_name`` after one short epoch on synthetic data, and that data."""
    config = Config(
        data_source="synthetic",
        synthetic_images_per_class=10,
        model_name=model_name,
        pretrained=False,
        image_size=image_size,
        batch_size=16,
        phase1_epochs=0,
        phase2_epochs=1,
        tsne_interval=0,
        wandb_mode="disabled",
        resume=False,
    )
    data = root / "data"
    prepare_dataset("synthetic", data / "eurosat.zip", data / "dataset.json", config.synthetic_images_per_class)
    split_archive(data / "eurosat.zip", data / "split.csv", 0.1, 0.1, 42)
    paths = TrainPaths.under(data, root / "models", root / "reports")
    train(config, paths)
    return paths.best, data / "eurosat.zip", data / "split.csv"


def synthetic_scene(path: Path, tiles: int) -> Path:
    """An 8-bit RGB GeoTIFF (UTM 33N, 10 m) of about ``tiles`` whole tiles, 32 tiles wide."""
    import rasterio
    from rasterio.transform import from_origin

    cols = 32
    rows = -(-tiles // cols)
    pixels = np.random.default_rng(0).integers(0, 256, (3, rows * TILE, cols * TILE), dtype=np.uint8)
    profile = {"driver": "GTiff", "count": 3, "height": rows * TILE, "width": cols * TILE, "dtype": "uint8"}
    profile |= {"crs": "EPSG:32633", "transform": from_origin(500_000, 5_300_000, 10, 10), "tiled": True}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels)
    return path


def measure(scene: Path, out: Path, batch_size: int, **backend: Path) -> float:
    make_map(scene, out, batch_size=batch_size, **backend)  # warm-up: model load, first batches
    result, _ = make_map(scene, out, batch_size=batch_size, **backend)
    return result.classified / result.seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="time this checkpoint instead of a stand-in")
    parser.add_argument("--archive", type=Path, help="with --checkpoint: for the ONNX export's parity check")
    parser.add_argument("--split", type=Path)
    parser.add_argument("--model", default="tf_efficientnet_lite0", help="stand-in architecture (timm name)")
    parser.add_argument("--image-size", type=int, default=64, help="stand-in's input size")
    parser.add_argument("--tiles", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        if args.checkpoint:
            checkpoint, archive, split = args.checkpoint, args.archive, args.split
            what = str(args.checkpoint)
        else:
            checkpoint, archive, split = train_stand_in(args.model, args.image_size, root)
            what = f"{args.model} at {args.image_size} px (stand-in: random init, timing only)"
        onnx_file = root / "model.onnx"
        export_onnx(checkpoint, onnx_file, root / "export.json", archive, split)
        scene = synthetic_scene(root / "scene.tif", args.tiles)
        rates = {
            "pytorch": measure(scene, root / "a.tif", args.batch_size, checkpoint=checkpoint),
            "onnxruntime": measure(scene, root / "b.tif", args.batch_size, onnx_file=onnx_file),
        }
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    print(f"model: {what}; {args.tiles} tiles, batch {args.batch_size}; {device}; torch {torch.__version__}")
    print("\n| backend | tiles/s | one Sentinel-2 granule (29,241 tiles) |\n|---|---:|---:|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:,.0f} | {S2_TILES / rate / 60:.1f} min |")
    if args.out:
        report = {"model": what, "tiles": args.tiles, "batch_size": args.batch_size, "device": device}
        report |= {"python": platform.python_version(), "tiles_per_s": rates}
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
