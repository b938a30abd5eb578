"""A stratified, seeded train/val/test split, written as a CSV anyone can audit.

The split is its own DVC stage that reads only the split params, so it stays byte-identical
while training params change.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from sklearn.model_selection import train_test_split

from eurosat_pipeline.classes import CLASSES
from eurosat_pipeline.dataset import read_archive
from eurosat_pipeline.errors import ConfigError, DatasetError
from eurosat_pipeline.files import write_text

SPLITS = ("train", "val", "test")
HEADER = ("path", "label", "split")


@dataclass(frozen=True)
class SplitRow:
    path: str
    label: str
    split: str


@dataclass
class EncodedSet:
    """Images of one split still as JPEG bytes (what the per-sample pipeline decodes each epoch)."""

    blobs: list[bytes]
    labels: list[int]
    paths: list[str]


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


def split_archive(
    archive: str | Path, out: str | Path, val_fraction: float, test_fraction: float, seed: int
) -> list[SplitRow]:
    paths = sorted(read_archive(archive))
    labels = [path.split("/", 1)[0] for path in paths]
    rows = make_split(paths, labels, val_fraction, test_fraction, seed)
    write_split(rows, out)
    return rows


def write_split(rows: list[SplitRow], out: str | Path) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HEADER)
    writer.writerows((row.path, row.label, row.split) for row in rows)
    write_text(out, buffer.getvalue())


def read_split(path: str | Path) -> list[SplitRow]:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path} not found: run `dvc repro split` first.")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = tuple(next(reader, ()))
        if header != HEADER:
            raise DatasetError(f"{path}: expected the header {','.join(HEADER)}, got {header}.")
        rows = [SplitRow(*row) for row in reader if row]
    bad = [r for r in rows if r.split not in SPLITS or r.label not in CLASSES]
    if bad:
        raise DatasetError(
            f"{path}: {len(bad)} row(s) with an unknown split or label, e.g. {bad[0]}; run `dvc repro -f split`."
        )
    return rows
