"""`eurosat map` over a region: scenes per minute for each way of running many scenes, on this machine.

    python benchmarks/region_speed.py --checkpoint models/best.ckpt              # 6 granule-sized scenes
    python benchmarks/region_speed.py --checkpoint models/best.ckpt --scenes 4 --size 5490
    python benchmarks/region_speed.py --smoke                                    # tiny scenes and model (tests)

The scenes are Sentinel-2 as users map it: per-band cloud-optimised GeoTIFFs (B04, B03, B02: uint16
Level-1C digital numbers, EuroSAT's 1..255 stretched back to 0..2750; 1024 px blocks, deflate, as
Earth Search publishes them) behind a STAC ItemCollection, side by side in UTM 33N. Their pixels are
real EuroSAT images when ``--data`` has them, else the demo's SYNTHETIC ones (written once into
``--work``; real images are only read, never kept).

Each way of running is one whole ``eurosat map items.json --out-dir DIR`` command in a fresh
process and a fresh folder (imports, cluster start-up, one model load per worker, the maps, the
summary and the mosaic), with ``GDAL_CACHEMAX=64``:

- ``sequential``: ``--processes 0``, one scene after another in the command's process;
- ``1 local process`` / ``2 local processes``: ``--processes 1`` / ``--processes 2``;
- ``Dask LocalCluster of 2 workers``: ``--dask-local 2``.

It prints scenes per minute, the speed-up over the sequential loop, the mean seconds per scene
(from summary.csv) and the CPU and load average: run it alone (two processes on two cores slow
each other ~10x).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from map_speed import REAL_DATA, REPO, S2_DN_MAX, _tiny_checkpoint, scene_rows, tile_pool

GRANULE = 10980  # pixels on a side of a Sentinel-2 granule's 10 m bands
WAYS: dict[str, list[str]] = {
    "sequential": ["--processes", "0"],
    "1 local process": ["--processes", "1"],
    "2 local processes": ["--processes", "2"],
    "Dask LocalCluster of 2 workers": ["--dask-local", "2"],
}
BANDS = {"B04": "red", "B03": "green", "B02": "blue"}


def write_catalogue(folder: Path, count: int, size: int, tiles: list[np.ndarray]) -> Path:
    """``count`` scenes of ``size`` px as per-band COGs and an Earth Search-like ItemCollection."""
    items = folder / "items.json"
    if items.exists():
        return items
    features = []
    for k in range(count):
        item_id = f"S2X_33UUP_2023060{k}_0_L1C"
        west = 500_000 + k * size * 10
        shuffled = tiles[k % len(tiles) :] + tiles[: k % len(tiles)]  # each scene its own pixels
        paths = write_bands(folder / item_id, size, west, shuffled)
        features.append(item(item_id, paths, folder, size, west))
    items.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return items


def write_bands(folder: Path, size: int, west: float, tiles: list[np.ndarray]) -> dict[str, Path]:
    """B04, B03, B02 of one scene: a tiled GeoTIFF written strip by strip, then GDAL's COG driver."""
    import rasterio
    import rasterio.shutil
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    folder.mkdir(parents=True, exist_ok=True)
    spec = {"size": size, "bands": 3, "dtype": "uint8"}
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 1, "dtype": "uint16", "nodata": 0}
    profile |= {"crs": "EPSG:32633", "transform": from_origin(west, 5_300_000, 10, 10), "tiled": True}
    profile |= {"blockxsize": 512, "blockysize": 512}
    plain = {band: folder / f"{band}.plain.tif" for band in BANDS}
    with contextlib.ExitStack() as stack:
        outputs = {band: stack.enter_context(rasterio.open(path, "w", **profile)) for band, path in plain.items()}
        for top, rgb in scene_rows(spec, tiles):
            # EuroSAT's 1..255 back to Level-1C DNs (from 2, not 1: DN 0 is nodata, which is not classified).
            strip = np.rint((np.maximum(rgb, 2).astype(np.float32) - 1) * (S2_DN_MAX / 254)).astype(np.uint16)
            for index, band in enumerate(BANDS):
                outputs[band].write(strip[index], 1, window=Window(0, top, size, strip.shape[1]))
    paths = {}
    for band, path in plain.items():
        paths[band] = folder / f"{band}.tif"
        rasterio.shutil.copy(path, paths[band], driver="COG", BLOCKSIZE=1024, COMPRESS="DEFLATE")
        path.unlink()
    return paths


def item(item_id: str, paths: dict[str, Path], root: Path, size: int, west: float) -> dict[str, Any]:
    assets = {
        BANDS[band]: {
            "href": str(path.relative_to(root)),
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "eo:bands": [{"name": BANDS[band], "common_name": BANDS[band]}],
            "proj:shape": [size, size],
            "proj:transform": [10, 0, west, 0, -10, 5_300_000],
            "raster:bands": [{"nodata": 0, "data_type": "uint16", "scale": 0.0001, "offset": 0}],
            "roles": ["data"],
        }
        for band, path in paths.items()
    }
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json"],
        "id": item_id,
        "geometry": None,
        "properties": {"datetime": "2023-06-01T10:30:00Z", "proj:epsg": 32633},
        "links": [],
        "assets": assets,
    }


def run_way(name: str, options: list[str], items: Path, out: Path, model: list[str], count: int) -> dict[str, Any]:
    """One whole command: wall time, scenes per minute, the mean per-scene time from its summary."""
    command = [str(Path(sys.executable).parent / "eurosat"), "map", str(items), "--out-dir", str(out), *model, *options]
    env = {**os.environ, "GDAL_CACHEMAX": "64"}
    load = os.getloadavg()[0]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    with (out / "summary.csv").open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["status"] == "mapped"]
    if len(rows) != count:
        raise RuntimeError(f"{name}: {len(rows)} of {count} scenes mapped:\n{result.stdout[-2000:]}")
    return {
        "way": name,
        "options": options,
        "scenes": count,
        "wall_s": round(wall, 2),
        "scenes_per_minute": round(count / wall * 60, 3),
        "mean_scene_s": round(sum(float(r["seconds"]) for r in rows) / count, 2),
        "tiles": sum(int(r["tiles"]) for r in rows),
        "load_average_before": load,
    }


def _ratio(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "-"


def main() -> int:
    from eurosat_pipeline.platform.accelerators import cpu_kind

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="the model (default with --smoke: a tiny one, trained here)")
    parser.add_argument("--onnx", type=Path, help="map with this ONNX file instead (ONNX Runtime)")
    parser.add_argument("--scenes", type=int, default=6, help="how many scenes (default: 6)")
    parser.add_argument("--size", type=int, default=GRANULE, help=f"pixels on a side (default: {GRANULE}, a granule)")
    parser.add_argument("--ways", default=",".join(WAYS), help=f"comma-separated: {', '.join(WAYS)}")
    parser.add_argument("--data", default=str(REAL_DATA) if REAL_DATA.exists() else "synthetic")
    parser.add_argument("--work", type=Path, help="folder for the scenes (kept for reruns; default: a temporary one)")
    parser.add_argument("--out", type=Path, help="JSON file for the figures")
    parser.add_argument("--smoke", action="store_true", help="3 tiny scenes: checks every way runs, not speed")
    args = parser.parse_args()
    count, size = (3, 320) if args.smoke else (args.scenes, args.size)
    with tempfile.TemporaryDirectory(prefix="eurosat-region-") as folder:
        work = args.work or Path(folder)
        work.mkdir(parents=True, exist_ok=True)
        checkpoint = args.checkpoint or (_tiny_checkpoint(work) if args.smoke else REPO / "models" / "best.ckpt")
        model = ["--onnx", str(args.onnx)] if args.onnx else ["--checkpoint", str(checkpoint)]
        tiles, source = tile_pool("synthetic" if args.smoke else args.data)
        items = write_catalogue(work / f"catalogue-{count}x{size}", count, size, tiles)
        cpu = cpu_kind()
        cores = len(os.sched_getaffinity(0))
        print(f"{cpu.describe()}, {cores} cores; load average {os.getloadavg()[0]:.2f}")
        print(f"{count} scenes of {size} x {size} px (3 band COGs each) from {source}; model: {' '.join(model)}")
        print("| way | wall | scenes/min | vs sequential | mean s/scene | load before |")
        print("|---|---:|---:|---:|---:|---:|")
        rows = []
        for name in args.ways.split(","):
            out = work / f"maps-{len(rows)}"
            shutil.rmtree(out, ignore_errors=True)  # a fresh folder: a rerun would skip finished scenes
            row = run_way(name, WAYS[name], items, out, model, count)
            rows.append(row)
            base = next((r["scenes_per_minute"] for r in rows if r["way"] == "sequential"), None)
            row["vs_sequential"] = round(row["scenes_per_minute"] / base, 3) if base else None
            print(
                f"| {name} | {row['wall_s']:.1f} s | {row['scenes_per_minute']:.2f} | {_ratio(row['vs_sequential'])} | "
                f"{row['mean_scene_s']:.1f} | {row['load_average_before']:.2f} |",
                flush=True,
            )
        report = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "cpu": cpu.model,
            "isa": cpu.isa,
            "cores": cores,
            "scenes": count,
            "size": size,
            "scenes_from": source,
            "load_average_after": os.getloadavg()[0],
            "results": rows,
        }
        print(f"load average after: {report['load_average_after']:.2f}")
        if args.out:
            args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
