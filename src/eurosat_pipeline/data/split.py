"""A stratified, seeded train/val/test split, written as a CSV anyone can audit, and the training
split's mean and std of every band (what models that do not use a backbone's RGB statistics are
normalised with).

The split is its own DVC stage that reads only the split params, so it stays byte-identical
while training params change.
"""

from __future__ import annotations

import collections
import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from eurosat_pipeline.core.bands import band_labels
from eurosat_pipeline.core.errors import ConfigError, DatasetError
from eurosat_pipeline.core.files import read_json, write_csv, write_json
from eurosat_pipeline.data.dataset import archive_members, images_path_for, open_images

SPLITS = ("train", "val", "test")
HEADER = ("path", "label", "split")
MIN_PER_CLASS = 3
STATS_CHUNK = 1024  # images per read while summing band statistics


@dataclass(frozen=True)
class SplitRow:
    path: str
    label: str
    split: str


def make_split(
    paths: list[str], labels: list[str], val_fraction: float, test_fraction: float, seed: int
) -> list[SplitRow]:
    """Assign every image to a split, keeping class proportions in each."""
    try:
        rest, test = train_test_split(
            list(zip(paths, labels, strict=True)), test_size=test_fraction, stratify=labels, random_state=seed
        )
        rest_labels = [label for _, label in rest]
        train, val = train_test_split(
            rest,
            test_size=val_fraction / (1 - test_fraction),
            stratify=rest_labels,
            random_state=seed,
        )
    except ValueError as err:
        raise ConfigError(
            f"Cannot split {len(paths)} images with val_fraction={val_fraction} and "
            f"test_fraction={test_fraction}: {err} Use more images or larger fractions."
        ) from err
    parts = zip(SPLITS, (train, val, test), strict=True)
    rows = [SplitRow(path, label, name) for name, part in parts for path, label in part]
    return sorted(rows, key=lambda row: row.path)


def stats_path_for(split_csv: str | Path) -> Path:
    """Where the band statistics of ``split_csv`` live unless a stage names them: beside it."""
    return Path(split_csv).with_name("band_stats.json")


def split_archive(
    archive: str | Path,
    out: str | Path,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    images: str | Path | None = None,
    stats: str | Path | None = None,
    info: str | Path | None = None,
) -> list[SplitRow]:
    """Split the archive's images, then write the split and the training split's band statistics."""
    paths = archive_members(archive)
    ordered = sorted(paths)
    labels = [path.split("/", 1)[0] for path in ordered]
    check_class_sizes(labels, val_fraction, test_fraction)
    rows = make_split(ordered, labels, val_fraction, test_fraction, seed)
    array = open_images(images or images_path_for(archive), len(paths))
    info = Path(info) if info else Path(archive).with_name("dataset.json")
    names = read_json(info).get("band_names") if info.is_file() else None
    row_of = {path: index for index, path in enumerate(paths)}
    train_rows = [row_of[r.path] for r in rows if r.split == "train"]
    write_json(stats or stats_path_for(out), band_statistics(array, train_rows, names))
    write_split(rows, out)
    return rows


def check_class_sizes(labels: Sequence[str], val_fraction: float, test_fraction: float) -> None:
    """Every class needs enough images to appear in all three splits."""
    needed = max(MIN_PER_CLASS, math.ceil(1 / min(val_fraction, test_fraction)))
    counts = collections.Counter(labels)
    small = sorted((name, count) for name, count in counts.items() if count < needed)
    if small:
        listed = ", ".join(f"'{name}' has {count}" for name, count in small)
        raise DatasetError(
            f"too few images in {len(small)} class folder(s): {listed}. With val_fraction {val_fraction} and "
            f"test_fraction {test_fraction} every class needs at least {needed} images (one in each split); "
            "add images, remove the class folder, or raise both fractions."
        )


def band_statistics(array: np.ndarray, rows: Sequence[int], names: Sequence[str] | None) -> dict[str, Any]:
    """Mean and std of every band over ``rows`` of the decoded array, read a chunk at a time."""
    bands = array.shape[1]
    total = np.zeros(bands, dtype=np.float64)
    squares = np.zeros(bands, dtype=np.float64)
    ordered = np.sort(np.asarray(rows, dtype=np.int64))  # sorted: the memory map is read front to back
    for start in range(0, len(ordered), STATS_CHUNK):
        chunk = array[ordered[start : start + STATS_CHUNK]].astype(np.float64)
        total += chunk.sum(axis=(0, 2, 3))
        squares += np.square(chunk).sum(axis=(0, 2, 3))
    pixels = max(1, len(ordered) * array.shape[2] * array.shape[3])
    mean = total / pixels
    std = np.sqrt(np.maximum(squares / pixels - mean**2, 0.0))
    return {
        "split": "train",
        "images": len(ordered),
        "units": "raw values as stored (uint8 or uint16)",
        "bands": [
            {"band": label, "mean": float(m), "std": float(s)}
            for label, m, s in zip(band_labels(names, bands), mean, std, strict=True)
        ],
    }


def write_split(rows: list[SplitRow], out: str | Path) -> None:
    write_csv(out, HEADER, ((row.path, row.label, row.split) for row in rows))


def read_split(path: str | Path, classes: Sequence[str] | None = None) -> list[SplitRow]:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path} not found: run `dvc repro split` first.")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = tuple(next(reader, ()))
        if header != HEADER:
            raise DatasetError(f"{path}: expected the header {','.join(HEADER)}, got {header}.")
        rows = [SplitRow(*row) for row in reader if row]
    bad = [r for r in rows if r.split not in SPLITS or (classes is not None and r.label not in classes)]
    if bad:
        raise DatasetError(
            f"{path}: {len(bad)} row(s) with an unknown split or label, e.g. {bad[0]}; run `dvc repro -f split`."
        )
    return rows
