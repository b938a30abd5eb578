"""Decode the archive once into a uint8 tensor and serve index batches from memory.

27,000 images of 3x64x64 are 332 MB: small enough to keep in RAM, or on the GPU when there is
one. Batches are gathered by index (no per-sample Python work, no worker processes); all pixel
work happens batched on the device in :mod:`eurosat_pipeline.augment`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.io import decode_jpeg

from eurosat_pipeline.dataset import CLASSES, read_archive
from eurosat_pipeline.errors import ConfigError, DatasetError
from eurosat_pipeline.split import read_split

DECODE_CHUNK = 4096


@dataclass
class ImageSet:
    """Images of one split as ``N x 3 x H x W`` uint8, with class indices and archive paths."""

    images: torch.Tensor
    labels: torch.Tensor
    paths: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def to(self, device: torch.device | str) -> ImageSet:
        return ImageSet(self.images.to(device), self.labels.to(device), self.paths)


def decode_jpegs(blobs: Sequence[bytes]) -> torch.Tensor:
    """Decode JPEG bytes into one ``N x 3 x H x W`` uint8 tensor (libjpeg-turbo, batched)."""
    out = []
    for start in range(0, len(blobs), DECODE_CHUNK):
        chunk = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs[start : start + DECODE_CHUNK]]
        out.extend(decode_jpeg(chunk))
    return torch.stack(out) if out else torch.empty(0, 3, 64, 64, dtype=torch.uint8)


def load_splits(archive: str | Path, split_csv: str | Path, names: Sequence[str]) -> dict[str, ImageSet]:
    """Decode the images of the named splits; the archive is read once."""
    rows = read_split(split_csv)
    blobs = read_archive(archive)
    missing = [r.path for r in rows if r.path not in blobs]
    if missing:
        raise DatasetError(
            f"{split_csv} lists {len(missing)} image(s) not in {archive} (e.g. {missing[0]}): "
            "the split is stale; run `dvc repro split`."
        )
    sets = {}
    for name in names:
        chosen = [r for r in rows if r.split == name]
        if not chosen:
            raise DatasetError(f"{split_csv} has no '{name}' images; check the split fractions.")
        images = decode_jpegs([blobs[r.path] for r in chosen])
        labels = torch.tensor([CLASSES.index(r.label) for r in chosen], dtype=torch.long)
        sets[name] = ImageSet(images, labels, [r.path for r in chosen])
    return sets


class InMemoryImages(Dataset):
    """A map-style dataset whose batches are one tensor gather, not ``batch_size`` lookups."""

    def __init__(self, images: ImageSet) -> None:
        self.set = images

    def __len__(self) -> int:
        return len(self.set)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.set.images[index], self.set.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, device=self.set.images.device)
        return self.set.images[index], self.set.labels[index]


def _already_batched(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch


def batch_loader(images: ImageSet, batch_size: int, shuffle: bool, drop_last: bool = False) -> DataLoader:
    return DataLoader(
        InMemoryImages(images),
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        collate_fn=_already_batched,
    )


class EuroSATDataModule(L.LightningDataModule):
    """Train and validation images, decoded once and kept on the training device."""

    def __init__(self, archive: str | Path, split_csv: str | Path, batch_size: int) -> None:
        super().__init__()
        self.archive, self.split_csv, self.batch_size = archive, split_csv, batch_size
        self.sets: dict[str, ImageSet] = {}

    def setup(self, stage: str) -> None:
        if self.sets:
            return
        sets = load_splits(self.archive, self.split_csv, ("train", "val"))
        if len(sets["train"]) < self.batch_size:
            raise ConfigError(
                f"batch_size ({self.batch_size}) is larger than the training set "
                f"({len(sets['train'])} images); lower batch_size or use more data."
            )
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        # On a GPU the whole set fits in memory; batches then never cross the PCIe bus.
        self.sets = {name: s.to(device) if device.type == "cuda" else s for name, s in sets.items()}

    def train_dataloader(self) -> DataLoader:
        # drop_last: a final batch of one sample would break the head's BatchNorm.
        return batch_loader(self.sets["train"], self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return batch_loader(self.sets["val"], self.batch_size, shuffle=False)
