"""`eurosat map` as a user runs it: whole-command time, peak memory and where the time goes.

    python benchmarks/map_speed.py --checkpoint models/best.ckpt            # the three scenes below
    python benchmarks/map_speed.py --checkpoint models/best.ckpt --scenes rgb-5504 --onnx models/model.onnx
    python benchmarks/map_speed.py --smoke                                  # tiny scenes and model (tests)

Scenes (made once in ``--work``, from real EuroSAT images when ``--data`` has them, else from the
demo's SYNTHETIC generator; real images are only read, never kept):

- ``rgb-5504``: 5,504 x 5,504 px 8-bit RGB (86 x 86 = 7,396 tiles), uncompressed.
- ``granule``: a Sentinel-2 granule's size, 10,980 x 10,980 px (171 x 171 = 29,241 tiles), three
  uint16 bands of Level-1C digital numbers (EuroSAT's 1..255 stretched back to 0..2750), tiled
  512 x 512 and deflate-compressed as ``gdal_translate`` writes a granule's B04/B03/B02.
- ``uint16-8192``: 8,192 x 8,192 px, four uint16 bands (blue, green, red, near infrared), pixel
  interleaved and uncompressed (512 MB): the memory test, mapped with ``--bands 3,2,1``.

Each scene is mapped by ``eurosat map`` in a fresh process (imports, model load, reading, scaling,
classification, preview, writing: all of it), with ``GDAL_CACHEMAX=64`` (MB) so GDAL's block cache
is bounded as the README recommends, under ``/usr/bin/time`` for wall time and peak memory (max
RSS). The phases are the command's own ``time:`` line. Run it alone (two processes on two cores
slow each other ~10x); it prints the load average.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "eurosat" / "EuroSAT.zip"
TILE = 64
S2_DN_MAX = 2750
SCENES: dict[str, dict[str, Any]] = {
    "rgb-5504": {"size": 5504, "bands": 3, "dtype": "uint8", "tiled": False, "compress": None},
    "granule": {"size": 10980, "bands": 3, "dtype": "uint16", "tiled": True, "compress": "deflate"},
    "uint16-8192": {"size": 8192, "bands": 4, "dtype": "uint16", "tiled": False, "compress": None},
}
SMOKE_SCENES: dict[str, dict[str, Any]] = {
    "rgb-smoke": {"size": 320, "bands": 3, "dtype": "uint8", "tiled": False, "compress": None},
    "uint16-smoke": {"size": 300, "bands": 4, "dtype": "uint16", "tiled": True, "compress": "deflate"},
}


def tile_pool(data: str, count: int = 2000) -> tuple[list[np.ndarray], str]:
    """``count`` 64 x 64 RGB tiles: real EuroSAT images from ``data`` (a zip), else synthetic."""
    from PIL import Image

    if data != "synthetic" and Path(data).is_file():
        from eurosat_pipeline.data.dataset import read_archive

        blobs = list(read_archive(data).values())
        picks = np.random.default_rng(0).choice(len(blobs), size=min(count, len(blobs)), replace=False)
        tiles = [np.asarray(Image.open(io.BytesIO(blobs[i])).convert("RGB")) for i in picks]
        return tiles, f"real EuroSAT images from {data}"
    from eurosat_pipeline.data.sources.synthetic import synthetic_images

    tiles = [np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")) for _, _, blob in synthetic_images(count // 10)]
    return tiles, "SYNTHETIC tiles"


def scene_rows(spec: dict[str, Any], tiles: list[np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
    """``(first line, bands x lines x width)`` strips of the scene, one tile row at a time."""
    size, rng = spec["size"], np.random.default_rng(1)
    cols = -(-size // TILE)
    for row in range(-(-size // TILE)):
        picks = rng.integers(0, len(tiles), size=cols)
        strip = np.concatenate([tiles[i] for i in picks], axis=1).transpose(2, 0, 1)[:, :, :size]
        lines = min(TILE, size - row * TILE)
        yield row * TILE, _bands(strip[:, :lines], spec)


def _bands(rgb: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    if spec["dtype"] == "uint8":
        return rgb
    # EuroSAT's 1..255 back to Level-1C digital numbers 0..2750 (the map's s2 scaling inverts it).
    dn = np.rint((rgb.astype(np.float32) - 1) * (S2_DN_MAX / 254)).clip(0).astype(np.uint16)
    red, green, blue = dn
    if spec["bands"] == 4:  # blue, green, red, near infrared
        return np.stack([blue, green, red, (green // 2 + red // 2)])
    return np.stack([red, green, blue])


def write_scene(path: Path, spec: dict[str, Any], tiles: list[np.ndarray]) -> Path:
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    if path.exists():
        return path
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": spec["size"],
        "height": spec["size"],
        "count": spec["bands"],
        "dtype": spec["dtype"],
        "crs": "EPSG:32633",
        "transform": from_origin(500_000, 5_300_000, 10, 10),
    }
    if spec["tiled"]:
        profile |= {"tiled": True, "blockxsize": 512, "blockysize": 512}
    if spec["compress"]:
        profile["compress"] = spec["compress"]
    partial = path.with_suffix(".partial.tif")
    with rasterio.open(partial, "w", **profile) as dst:
        for top, strip in scene_rows(spec, tiles):
            dst.write(strip, window=Window(0, top, spec["size"], strip.shape[1]))
    partial.rename(path)
    return path


def map_scene(scene: Path, out: Path, spec: dict[str, Any], model: list[str]) -> dict[str, Any]:
    """One `eurosat map` process: wall time, peak RSS and the command's own phase times."""
    command = [str(Path(sys.executable).parent / "eurosat"), "map", str(scene), "--out", str(out), *model]
    if spec["bands"] == 4:
        command += ["--bands", "3,2,1"]
    timed = ["/usr/bin/time", "-f", "TIME %e %M", *command]
    env = {**os.environ, "GDAL_CACHEMAX": "64"}
    result = subprocess.run(timed, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr[-3000:]}")
    wall, rss_kb = re.search(r"TIME (\S+) (\d+)", result.stderr).groups()
    tiles = int(re.search(r"^(\d+) tile\(s\) classified", result.stdout, re.MULTILINE).group(1))
    phases = dict(
        (name.strip(), float(seconds))
        for name, seconds in re.findall(
            r"([a-z ]+) ([\d.]+) s", re.search(r"^time: (.*)$", result.stdout, re.M).group(1)
        )
    )
    engine = re.search(r"tiles/s \((.*)\)$", result.stdout, re.MULTILINE).group(1)
    return {
        "tiles": tiles,
        "whole_command_s": float(wall),
        "tiles_per_s_whole_command": tiles / float(wall),
        "peak_rss_mb": int(rss_kb) / 1024,
        "phases_s": phases,
        "engine": engine,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="the model (default with --smoke: a tiny one, trained here)")
    parser.add_argument("--onnx", type=Path, help="map with this ONNX file instead (ONNX Runtime)")
    parser.add_argument("--engine", choices=("auto", "pytorch", "onnxruntime"), default="auto")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="with --engine pytorch")
    parser.add_argument("--scenes", default=",".join(SCENES), help=f"comma-separated: {', '.join(SCENES)}")
    parser.add_argument("--data", default=str(REAL_DATA) if REAL_DATA.exists() else "synthetic")
    parser.add_argument("--work", type=Path, help="folder for the scenes (kept for reruns; default: a temporary one)")
    parser.add_argument("--out", type=Path, help="JSON file for the figures")
    parser.add_argument("--smoke", action="store_true", help="tiny scenes and model: checks the command, not speed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="eurosat-map-") as folder:
        work = args.work or Path(folder)
        work.mkdir(parents=True, exist_ok=True)
        specs = SMOKE_SCENES if args.smoke else {name: SCENES[name] for name in args.scenes.split(",")}
        checkpoint = args.checkpoint or (_tiny_checkpoint(work) if args.smoke else REPO / "models" / "best.ckpt")
        model = ["--onnx", str(args.onnx)] if args.onnx else ["--checkpoint", str(checkpoint)]
        model += ["--engine", args.engine, "--precision", args.precision]
        tiles, source = tile_pool("synthetic" if args.smoke else args.data)
        load = os.getloadavg()[0]
        print(f"load average {load:.2f}; scenes from {source}; model: {' '.join(model)}")
        print("| scene | tiles | whole command | tiles/s (whole) | peak RSS | phases |")
        print("|---|---:|---:|---:|---:|---|")
        rows = []
        for name, spec in specs.items():
            scene = write_scene(work / f"{name}.tif", spec, tiles)
            figures = map_scene(scene, work / f"{name}-map.tif", spec, model) | {"scene": name, **spec}
            rows.append(figures)
            phases = ", ".join(f"{k} {v:.1f} s" for k, v in figures["phases_s"].items())
            print(
                f"| {name} | {figures['tiles']:,} | {figures['whole_command_s']:.1f} s | "
                f"{figures['tiles_per_s_whole_command']:,.0f} | {figures['peak_rss_mb']:,.0f} MB | {phases} |",
                flush=True,
            )
        report = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "load_average_before": load,
            "load_average_after": os.getloadavg()[0],
            "engine": rows[0]["engine"] if rows else "",
            "scenes_from": source,
            "results": rows,
        }
        print(f"engine: {report['engine']}; load average after {report['load_average_after']:.2f}")
        if args.out:
            args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _tiny_checkpoint(root: Path) -> Path:
    from eurosat_pipeline.core.config import Config
    from eurosat_pipeline.data.dataset import prepare_dataset
    from eurosat_pipeline.data.split import split_archive
    from eurosat_pipeline.training.train import TrainPaths, train

    config = Config(
        data_source="synthetic",
        synthetic_images_per_class=10,
        model_name="test_efficientnet",
        pretrained=False,
        image_size=32,
        batch_size=16,
        phase1_epochs=0,
        phase2_epochs=1,
        tsne_interval=0,
        wandb_mode="disabled",
        resume=False,
        accelerator="cpu",
    )
    data = root / "data"
    prepare_dataset("synthetic", data / "eurosat.zip", data / "dataset.json", config.synthetic_images_per_class)
    split_archive(data / "eurosat.zip", data / "split.csv", 0.1, 0.1, 42)
    paths = TrainPaths.under(data, root / "models", root / "reports")
    started = time.perf_counter()
    train(config, paths)
    print(f"tiny stand-in model trained in {time.perf_counter() - started:.0f} s (timing only)")
    return paths.best


if __name__ == "__main__":
    sys.exit(main())
