"""A GeoTIFF mosaic of real EuroSAT test-split tiles with known labels, and a check of a map of it.

    python benchmarks/map_mosaic.py --archive data/eurosat.zip --split data/split.csv \\
        --out mosaic.tif --truth truth.csv --per-class 20
    eurosat map mosaic.tif --out map.tif
    python benchmarks/map_mosaic.py --truth truth.csv --check map.tif

The mosaic puts the first ``--per-class`` test-split images of each class (split order) in a grid
of ``--cols`` columns, in a seeded random order, as 8-bit RGB in UTM zone 33N (EPSG:32633) with
10 m pixels, EuroSAT's resolution. ``truth.csv`` names the class of every tile (row, col). The
check reads the map's classes from its ``classes`` tag and prints tiles right / total, overall
and per class: about the model's test accuracy if the tiling, band order and georeferencing are
right (the test-split images were never used for training or model selection).

``--synthetic`` makes a scene without any data: synthetic-class tiles (the demo's generator) laid
out in ten regions, one per class, like fields and towns (for pictures and smoke tests; labelled
synthetic).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from eurosat_pipeline.core.classes import CLASSES, IMAGE_SIZE
from eurosat_pipeline.core.files import atomic_path
from eurosat_pipeline.data.dataset import read_archive
from eurosat_pipeline.data.split import read_split

CRS = "EPSG:32633"
ORIGIN = (500_000.0, 5_300_000.0)  # west, north: inside UTM 33N, in central Europe
PIXEL_M = 10.0


def pick_test_tiles(archive: Path, split: Path, per_class: int, seed: int) -> list[tuple[str, str]]:
    """``(member, label)`` of the first ``per_class`` test images of each class, shuffled (seeded)."""
    counts: Counter[str] = Counter()
    chosen = []
    for row in read_split(split):
        if row.split == "test" and counts[row.label] < per_class:
            counts[row.label] += 1
            chosen.append((row.path, row.label))
    order = np.random.default_rng(seed).permutation(len(chosen))
    return [chosen[i] for i in order]


def write_mosaic(path: Path, images: list[np.ndarray], cols: int) -> tuple[int, int]:
    """``H x W x 3`` uint8 images of 64 px in a grid, row by row, as a georeferenced GeoTIFF.

    Cells left over in the last row are masked (an internal mask, not a nodata value: JPEG
    pixels can be 0), so the map skips them.
    """
    import rasterio
    from rasterio.transform import from_origin

    rows = -(-len(images) // cols)
    mosaic = np.zeros((3, rows * IMAGE_SIZE, cols * IMAGE_SIZE), dtype=np.uint8)
    size = IMAGE_SIZE
    for n, image in enumerate(images):
        r, c = divmod(n, cols)
        mosaic[:, r * size : (r + 1) * size, c * size : (c + 1) * size] = image.transpose(2, 0, 1)
    profile = {
        "driver": "GTiff",
        "width": mosaic.shape[2],
        "height": mosaic.shape[1],
        "count": 3,
        "dtype": "uint8",
        "crs": CRS,
        "transform": from_origin(*ORIGIN, PIXEL_M, PIXEL_M),
        "photometric": "RGB",
    }
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(mosaic)
        if len(images) < rows * cols:
            mask = np.full(mosaic.shape[1:], 255, dtype=np.uint8)
            r, c = divmod(len(images), cols)
            mask[r * size :, c * size :] = 0
            dst.write_mask(mask)
    return rows, cols


def synthetic_regions(rows: int, cols: int, seed: int) -> tuple[list[np.ndarray], list[tuple[str, str]]]:
    """Synthetic tiles in ten regions (nearest of ten random centres), row by row, with their labels."""
    from eurosat_pipeline.data.sources.synthetic import synthetic_images

    rng = np.random.default_rng(seed)
    centres = rng.uniform((0, 0), (rows, cols), size=(len(CLASSES), 2))
    cells = np.stack(np.mgrid[0:rows, 0:cols], axis=-1).reshape(-1, 1, 2)
    labels = np.argmin(((cells - centres) ** 2).sum(axis=-1), axis=1)
    pool: dict[str, list[np.ndarray]] = {name: [] for name in CLASSES}
    for name, _, blob in synthetic_images(max(1, int(np.bincount(labels).max()))):
        pool[name].append(np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")))
    used: Counter[str] = Counter()
    images, picked = [], []
    for index in labels:
        name = CLASSES[index]
        images.append(pool[name][used[name]])
        picked.append((f"synthetic/{name}_{used[name] + 1}", name))
        used[name] += 1
    return images, picked


def build(args: argparse.Namespace) -> None:
    if args.synthetic:
        images, picked = synthetic_regions(args.rows, args.cols, args.seed)
    else:
        picked = pick_test_tiles(args.archive, args.split, args.per_class, args.seed)
        blobs = read_archive(args.archive)
        images = [np.asarray(Image.open(io.BytesIO(blobs[member])).convert("RGB")) for member, _ in picked]
    rows, cols = write_mosaic(args.out, images, args.cols)
    with atomic_path(args.truth) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["row", "col", "label", "path"])
        for n, (member, label) in enumerate(picked):
            writer.writerow([*divmod(n, cols), label, member])
    kind = "SYNTHETIC" if args.synthetic else "test-split"
    print(f"{args.out}: {len(picked)} {kind} tiles in {rows} x {cols}; truth in {args.truth}")


def check(map_file: Path, truth: Path) -> tuple[int, int]:
    """Tiles whose mapped class is the truth, and tiles in the truth; prints the per-class figures."""
    import rasterio

    with rasterio.open(map_file) as src:
        names = src.tags()["classes"].split(",")
        classes = src.read(1)
    right: Counter[str] = Counter()
    total: Counter[str] = Counter()
    with truth.open(newline="") as handle:
        for row in csv.DictReader(handle):
            index = classes[int(row["row"]), int(row["col"])]
            total[row["label"]] += 1
            right[row["label"]] += index < len(names) and names[index] == row["label"]
    for name in CLASSES:
        if total[name]:
            print(f"  {name:<22} {right[name]:>4}/{total[name]:<4}")
    n_right, n_total = sum(right.values()), sum(total.values())
    print(f"{n_right}/{n_total} tiles right ({n_right / n_total:.1%})")
    return n_right, n_total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, default=Path("data/eurosat.zip"))
    parser.add_argument("--split", type=Path, default=Path("data/split.csv"))
    parser.add_argument("--out", type=Path, default=Path("mosaic.tif"))
    parser.add_argument("--truth", type=Path, default=Path("truth.csv"))
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--cols", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--synthetic", action="store_true", help="synthetic tiles in regions; no data needed")
    parser.add_argument("--rows", type=int, default=12, help="with --synthetic: rows of tiles")
    parser.add_argument("--check", type=Path, metavar="MAP.tif", help="compare this map with --truth instead")
    args = parser.parse_args(argv)
    if args.check:
        check(args.check, args.truth)
    else:
        build(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
