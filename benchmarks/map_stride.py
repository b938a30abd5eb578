"""Overlapping windows (`eurosat map --stride`): per-pixel accuracy against time, on a mosaic of tiles
cut half a tile off the map's grid.

    python benchmarks/map_stride.py --checkpoint models/best.ckpt --split data/split.csv
    python benchmarks/map_stride.py --checkpoint models/best.ckpt --data ../shared/eurosat/EuroSAT.zip --out stride.json
    python benchmarks/map_stride.py --smoke                 # synthetic tiles and a tiny model (tests)

The mosaic is ``--rows`` x ``--cols`` EuroSAT tiles (real ones from the zip given with ``--data``:
test-split tiles when ``--split`` names a split.csv, else any), every class about equally often in a
seeded random layout, one more row and column of tiles, then cut by half a tile (32 px) at the top
and the left: every 64 px window on the map's grid straddles four tiles, as a field boundary would.
It is 8-bit RGB in UTM zone 33N with 10 m pixels, EuroSAT's.

Each stride (``--strides``, default 64, 32, 16) is mapped by a whole ``eurosat map`` command in its
own process (imports, model load, reading, classifying, writing), timed by the wall clock. Per-pixel
accuracy: each map cell's class expanded to its 10 m pixels, against the class of the tile each
pixel came from, over the pixels the stride-64 map covers (its partial edge cells are nodata), so
every stride is judged on the same pixels. Run it alone: another process on the cores skews the times.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "eurosat" / "EuroSAT.zip"
TILE = 64
SEED = 0


def real_tiles(archive: Path, split: Path | None) -> dict[str, list[bytes]]:
    """JPEG bytes by class from a EuroSAT zip (``<Class>/<file>`` under any prefix): the test split's
    members when ``split`` is given, else every image."""
    wanted = None
    if split is not None:
        from eurosat_pipeline.data.split import read_split

        wanted = {"/".join(row.path.split("/")[-2:]) for row in read_split(split) if row.split == "test"}
    by_class: dict[str, list[bytes]] = {}
    with zipfile.ZipFile(archive) as source:
        for member in sorted(source.namelist()):
            parts = member.split("/")
            if len(parts) < 2 or not parts[-1].lower().endswith((".jpg", ".jpeg", ".png")):
                continue
            if wanted is not None and f"{parts[-2]}/{parts[-1]}" not in wanted:
                continue
            by_class.setdefault(parts[-2], []).append(source.read(member))
    if not by_class:
        raise SystemExit(f"{archive}: no images{' of the test split in ' + str(split) if split else ''}")
    return by_class


def synthetic_tiles() -> dict[str, list[bytes]]:
    from eurosat_pipeline.data.sources.synthetic import synthetic_images

    by_class: dict[str, list[bytes]] = {}
    for name, _, blob in synthetic_images(4):
        by_class.setdefault(name, []).append(blob)
    return by_class


def shifted_mosaic(by_class: dict[str, list[bytes]], rows: int, cols: int) -> tuple[np.ndarray, np.ndarray, list]:
    """``3 x H x W`` uint8 pixels of (rows + 1) x (cols + 1) tiles cut half a tile off at the top and
    left, the class index of each of its pixels, and the class names."""
    from PIL import Image

    names = sorted(by_class)
    rng = np.random.default_rng(SEED)
    labels = rng.permutation(np.arange((rows + 1) * (cols + 1)) % len(names)).reshape(rows + 1, cols + 1)
    image = np.empty((3, (rows + 1) * TILE, (cols + 1) * TILE), dtype=np.uint8)
    for (row, col), index in np.ndenumerate(labels):
        pool = by_class[names[index]]
        tile = Image.open(io.BytesIO(pool[rng.integers(len(pool))])).convert("RGB").resize((TILE, TILE))
        image[:, row * TILE : (row + 1) * TILE, col * TILE : (col + 1) * TILE] = np.asarray(tile).transpose(2, 0, 1)
    truth = np.repeat(np.repeat(labels, TILE, axis=0), TILE, axis=1)
    half = TILE // 2
    return image[:, half:, half:], truth[half:, half:], names


def write_scene(path: Path, pixels: np.ndarray) -> Path:
    import rasterio
    from rasterio.transform import from_origin

    profile = {"driver": "GTiff", "count": 3, "height": pixels.shape[1], "width": pixels.shape[2], "dtype": "uint8"}
    with rasterio.open(
        path, "w", **profile, crs="EPSG:32633", transform=from_origin(500_000, 5_300_000, 10, 10)
    ) as dst:
        dst.write(pixels)
    return path


def map_at(scene: Path, out: Path, stride: int, model: list[str]) -> float:
    """Seconds of one whole `eurosat map --stride` command."""
    command = [str(Path(sys.executable).parent / "eurosat"), "map", str(scene), "--out", str(out), *model]
    started = time.perf_counter()
    result = subprocess.run([*command, "--stride", str(stride)], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr[-3000:]}")
    return seconds


def pixel_accuracy(map_file: Path, truth: np.ndarray, names: list[str], judged: tuple[int, int]) -> float:
    """The share of the judged pixels (the top-left ``judged`` lines x columns) whose cell has their class."""
    import rasterio

    with rasterio.open(map_file) as result:
        classes, mapped_names = result.read(1), result.tags()["classes"].split(",")
        cell = round(abs(result.transform.a) / 10)  # 10 m scene pixels per map cell side
    lookup = np.full(256, -1)  # the map's class index -> the mosaic's (nodata: never right)
    for index, name in enumerate(mapped_names):
        lookup[index] = names.index(name) if name in names else -2
    pixels = np.repeat(np.repeat(lookup[classes], cell, axis=0), cell, axis=1)
    lines, columns = judged
    return float((pixels[:lines, :columns] == truth[:lines, :columns]).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="the model (default with --smoke: a tiny one, trained here)")
    parser.add_argument("--data", type=Path, default=REAL_DATA, help=f"a EuroSAT zip (default: {REAL_DATA})")
    parser.add_argument("--split", type=Path, help="a split.csv: take the test split's tiles (default: any)")
    parser.add_argument("--rows", type=int, default=12, help="tile rows of the mosaic (default: 12)")
    parser.add_argument("--cols", type=int, default=16, help="tile columns of the mosaic (default: 16)")
    parser.add_argument("--strides", default="64,32,16", help="comma-separated (default: 64,32,16)")
    parser.add_argument("--out", type=Path, help="JSON file for the figures")
    parser.add_argument("--smoke", action="store_true", help="synthetic tiles, a tiny model: checks the script")
    args = parser.parse_args()
    strides = [int(s) for s in args.strides.split(",")]
    with tempfile.TemporaryDirectory(prefix="eurosat-stride-") as folder:
        work = Path(folder)
        if args.smoke:
            from map_speed import _tiny_checkpoint  # the same stand-in model as the map benchmark's

            checkpoint = args.checkpoint or _tiny_checkpoint(work)
            by_class, source, (rows, cols) = synthetic_tiles(), "SYNTHETIC tiles", (2, 3)
        else:
            checkpoint = args.checkpoint or REPO / "models" / "best.ckpt"
            by_class, rows, cols = real_tiles(args.data, args.split), args.rows, args.cols
            source = f"real EuroSAT tiles from {args.data}" + (f" (test split of {args.split})" if args.split else "")
        pixels, truth, names = shifted_mosaic(by_class, rows, cols)
        scene = write_scene(work / "shifted.tif", pixels)
        print(f"{rows} x {cols} tiles of {source}, cut half a tile off the grid; model {checkpoint}")
        print("| stride | per-pixel accuracy | seconds (whole command) | time vs stride 64 |")
        print("|---:|---:|---:|---:|")
        rows_out: list[dict[str, Any]] = []
        for stride in strides:
            out = work / f"map-{stride}.tif"
            seconds = map_at(scene, out, stride, ["--checkpoint", str(checkpoint)])
            accuracy = pixel_accuracy(out, truth, names, (rows * TILE, cols * TILE))
            rows_out.append({"stride": stride, "pixel_accuracy": accuracy, "seconds": seconds})
        base = next((row["seconds"] for row in rows_out if row["stride"] == TILE), rows_out[0]["seconds"])
        for row in rows_out:
            row["time_vs_64"] = row["seconds"] / base
            print(
                f"| {row['stride']} | {100 * row['pixel_accuracy']:.1f} % | {row['seconds']:.1f} s | "
                f"{row['time_vs_64']:.1f}x |"
            )
        report = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "tiles": source,
            "mosaic_tiles": [rows, cols],
            "load_average": os.getloadavg()[0],
            "results": rows_out,
        }
        if args.out:
            args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
