"""`eurosat change` on two dates made of real EuroSAT test tiles, with known transitions and a cloud.

    python benchmarks/change_example.py --checkpoint models/best.ckpt --split data/split.csv \\
        --accuracy reports/eval/per_class.csv --out /tmp/change-example
    python benchmarks/change_example.py --smoke --out /tmp/change-smoke     # synthetic tiles, tiny model (tests)

BEFORE is a landscape of ``--rows`` x ``--cols`` tiles laid out in regions (forest, fields,
pasture, a town, a river, a lake, ...), each tile a real test-split image of its class. AFTER is
the same place at a second date: every tile is *another* image of the same class (a place never
looks the same twice, so the classifier's errors at both dates are independent, as the spurious
change estimate assumes), except where the land use really changed:

- part of the forest cleared for crops (Forest -> AnnualCrop),
- the town grown into its fields (AnnualCrop -> Residential),
- pasture ploughed (Pasture -> AnnualCrop), and a new industrial estate (HerbaceousVegetation -> Industrial).

A block of AFTER is under a thick cloud, its shadow beside it: white and darkened pixels, and a
Sentinel-2-like scene classification (SCL: 9 under the cloud, 3 under the shadow) given with
``--after-mask``. Both are 8-bit RGB GeoTIFFs in UTM zone 33N with 10 m pixels.

It runs the whole ``eurosat change`` command and then scores the result against the truth it
built: per transition, the cells that truly changed and how many the change map found; in the
unchanged cells, the apparent change (classifier error at either date) against the command's own
estimate of it from the test confusion matrix; and the cells the cloud excluded. The JSON report
and the printed table go in benchmarks/README.md; ``CHANGE.png`` (the change map and its
transitions, no imagery) is the README's picture.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

try:  # imported as benchmarks.change_example (the tests) or run as a script
    from benchmarks.map_stride import REAL_DATA, REPO, real_tiles, synthetic_tiles
except ModuleNotFoundError:
    from map_stride import REAL_DATA, REPO, real_tiles, synthetic_tiles

TILE = 64
SEED = 0
CLOUD, SHADOW, CLEAR = 9, 3, 4  # SCL values: cloud high probability, cloud shadow, vegetation
# The truth's transitions: (from, to, the block of the landscape it happens in, as row and column shares).
TRANSITIONS = (
    ("Forest", "AnnualCrop", (0.0, 0.35, 0.0, 0.2)),
    ("AnnualCrop", "Residential", (0.35, 0.55, 0.45, 0.6)),
    ("Pasture", "AnnualCrop", (0.7, 1.0, 0.0, 0.2)),
    ("HerbaceousVegetation", "Industrial", (0.7, 1.0, 0.8, 1.0)),
)


def landscape(rows: int, cols: int) -> list[list[str]]:
    """Class names of a made-up landscape: blocks of land use, a river and a road-side town."""
    grid = [["AnnualCrop"] * cols for _ in range(rows)]

    def fill(name: str, r0: float, r1: float, c0: float, c1: float) -> None:
        for r in range(round(r0 * rows), round(r1 * rows)):
            for c in range(round(c0 * cols), round(c1 * cols)):
                grid[r][c] = name

    fill("Forest", 0.0, 0.55, 0.0, 0.3)
    fill("Residential", 0.3, 0.55, 0.6, 0.8)
    fill("Industrial", 0.3, 0.45, 0.8, 0.9)
    fill("PermanentCrop", 0.0, 0.3, 0.6, 1.0)
    fill("SeaLake", 0.0, 0.25, 0.35, 0.55)
    fill("Pasture", 0.7, 1.0, 0.0, 0.4)
    fill("HerbaceousVegetation", 0.7, 1.0, 0.75, 1.0)
    for r in range(rows):  # a river across, bending once
        grid[r][round(0.45 * cols) if r < rows // 2 else round(0.5 * cols)] = "River"
    for c in range(cols):  # a highway along the town's row
        grid[round(0.6 * rows)][c] = "Highway"
    return grid


def after_of(before: list[list[str]]) -> list[list[str]]:
    """The second date: each of :data:`TRANSITIONS` where its block holds its from-class."""
    rows, cols = len(before), len(before[0])
    after = [row[:] for row in before]
    for source, target, (r0, r1, c0, c1) in TRANSITIONS:
        for r in range(round(r0 * rows), round(r1 * rows)):
            for c in range(round(c0 * cols), round(c1 * cols)):
                if before[r][c] == source:
                    after[r][c] = target
    return after


def cloud_block(rows: int, cols: int) -> tuple[slice, slice, slice, slice]:
    """Tile rows and columns under the cloud, and under its shadow (to its right)."""
    r0, c0 = round(0.15 * rows), round(0.62 * cols)
    height, width = max(2, rows // 4), max(2, cols // 6)
    return slice(r0, r0 + height), slice(c0, c0 + width), slice(r0, r0 + height), slice(c0 + width, c0 + 2 * width)


def render(layout: list[list[str]], pools: dict[str, list[bytes]], used: dict[str, int]) -> np.ndarray:
    """``3 x H x W`` uint8: each cell the next unused image of its class (never the same image twice)."""
    from PIL import Image

    rows, cols = len(layout), len(layout[0])
    image = np.zeros((3, rows * TILE, cols * TILE), dtype=np.uint8)
    for r in range(rows):
        for c in range(cols):
            name = layout[r][c]
            blob = pools[name][used[name] % len(pools[name])]
            used[name] += 1
            tile = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB").resize((TILE, TILE)))
            image[:, r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE] = tile.transpose(2, 0, 1)
    return image


def add_cloud(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The SCL of the second date (20 m): the cloud made white and its shadow dark in ``image``."""
    cloud_r, cloud_c, shadow_r, shadow_c = cloud_block(rows, cols)
    rng = np.random.default_rng(SEED)

    def pixels(rs: slice, cs: slice) -> tuple[slice, slice]:
        return slice(rs.start * TILE, rs.stop * TILE), slice(cs.start * TILE, cs.stop * TILE)

    r, c = pixels(cloud_r, cloud_c)
    image[:, r, c] = np.clip(235 + rng.normal(0, 6, image[:, r, c].shape), 0, 255).astype(np.uint8)
    r, c = pixels(shadow_r, shadow_c)
    image[:, r, c] = (image[:, r, c] * 0.35).astype(np.uint8)
    scl = np.full((rows * TILE // 2, cols * TILE // 2), CLEAR, dtype=np.uint8)
    for value, (rs, cs) in ((CLOUD, (cloud_r, cloud_c)), (SHADOW, (shadow_r, shadow_c))):
        scl[rs.start * TILE // 2 : rs.stop * TILE // 2, cs.start * TILE // 2 : cs.stop * TILE // 2] = value
    return scl


def write_geotiff(path: Path, values: np.ndarray, pixel: float) -> Path:
    import rasterio
    from rasterio.transform import from_origin

    values = values if values.ndim == 3 else values[None]
    profile = {"driver": "GTiff", "count": values.shape[0], "height": values.shape[1], "width": values.shape[2]}
    profile |= {"dtype": "uint8", "crs": "EPSG:32633", "transform": from_origin(500_000, 5_300_000, pixel, pixel)}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(values)
    return path


def make_pair(pools: dict[str, list[bytes]], rows: int, cols: int, out: Path) -> dict[str, Any]:
    """BEFORE, AFTER and AFTER's SCL under ``out``, and the truth (both layouts, the cloud)."""
    before = landscape(rows, cols)
    after = after_of(before)
    used = dict.fromkeys(pools, 0)
    before_image = render(before, pools, used)
    after_image = render(after, pools, used)  # the next images of each class: another look at every place
    scl = add_cloud(after_image, rows, cols)
    out.mkdir(parents=True, exist_ok=True)
    return {
        "before": write_geotiff(out / "before.tif", before_image, 10.0),
        "after": write_geotiff(out / "after.tif", after_image, 10.0),
        "after_mask": write_geotiff(out / "after-scl.tif", scl, 20.0),
        "truth": (before, after),
    }


def score(change_tif: Path, truth: tuple[list[list[str]], list[list[str]]], classes: list[str]) -> dict[str, Any]:
    """Per true transition, its cells and those the map found; in unchanged cells, the apparent change."""
    import rasterio

    with rasterio.open(change_tif) as src:
        codes = src.read(1)
    before, after = truth
    k = len(classes)
    found: dict[str, dict[str, int]] = {}
    unchanged = apparent = excluded = 0
    for (r, c), code in np.ndenumerate(codes):
        source, target = before[r][c], after[r][c]
        if code == 255:
            excluded += 1
            continue
        mapped_from, mapped_to = classes[code // k], classes[code % k]
        if source == target:
            unchanged += 1
            apparent += mapped_from != mapped_to
        else:
            row = found.setdefault(f"{source} -> {target}", {"cells": 0, "found": 0})
            row["cells"] += 1
            row["found"] += (mapped_from, mapped_to) == (source, target)
    return {
        "true_transitions": found,
        "unchanged_cells": unchanged,
        "apparent_change_in_unchanged": apparent,
        "excluded_cells": excluded,
    }


def table_rows(csv_path: Path) -> list[dict[str, str]]:
    with csv_path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REAL_DATA, help="a EuroSAT zip (default: the shared one)")
    parser.add_argument("--split", type=Path, help="split.csv: take only its test-split images")
    parser.add_argument("--checkpoint", default="models/best.ckpt")
    parser.add_argument("--accuracy", help="the test confusion matrix (reports/eval/per_class.csv)")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--cols", type=int, default=24)
    parser.add_argument("--out", type=Path, required=True, help="a folder for the scenes, the change and report.json")
    parser.add_argument("--smoke", action="store_true", help="synthetic tiles, 6 x 8 (tests)")
    args = parser.parse_args(argv)
    pools = synthetic_tiles() if args.smoke else real_tiles(args.data, args.split)
    rows, cols = (6, 8) if args.smoke else (args.rows, args.cols)
    pair = make_pair(pools, rows, cols, args.out)
    change = args.out / "change.tif"
    command = [sys.executable, "-m", "eurosat_pipeline.cli.main", "change", str(pair["before"]), str(pair["after"])]
    command += ["--after-mask", str(pair["after_mask"]), "--out", str(change), "--checkpoint", args.checkpoint]
    command += ["--accuracy", args.accuracy] if args.accuracy else []
    command += ["--processes", "0"] if args.smoke else []  # two tiny scenes: not worth two processes
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - started
    print(result.stdout)
    if result.returncode != 0:
        print(result.stderr, file=sys.stderr)
        return result.returncode
    from eurosat_pipeline.maps.outputs import read_map

    classes = list(read_map(args.out / "change.maps" / "before.tif").class_names)
    report = {
        "command": " ".join(command[2:]),
        "rows": rows,
        "cols": cols,
        "whole_command_s": round(seconds, 1),
        "synthetic": args.smoke,
        **score(change, pair["truth"], classes),
        "table": table_rows(change.with_suffix(".csv")),
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    for name, row in report["true_transitions"].items():
        print(f"true {name}: {row['found']}/{row['cells']} cells found")
    print(
        f"unchanged cells: {report['unchanged_cells']}, apparent change in them: "
        f"{report['apparent_change_in_unchanged']}; excluded (cloud, shadow, nodata): {report['excluded_cells']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
