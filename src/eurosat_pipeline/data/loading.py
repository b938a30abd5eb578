"""Batches gathered from the decoded array (``images.npy``), never the dataset held in RAM.

The download stage decodes every image once into ``images.npy`` (:mod:`eurosat_pipeline.data.dataset`).
Here it is opened as a read-only memory map: a batch is one gather of its rows (the pages it
touches are read; the kernel's page cache, not this process, holds them), with only the model's
bands. On a GPU, a split that fits comfortably in free GPU memory is uploaded once, so batches
never cross the PCIe bus; a larger one is gathered on the host and copied through pinned memory.
All pixel work happens batched on the device in :mod:`eurosat_pipeline.model.augment`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from eurosat_pipeline.core.dataspec import DataSpec
from eurosat_pipeline.core.errors import DatasetError
from eurosat_pipeline.data.dataset import archive_members, images_path_for, open_images
from eurosat_pipeline.data.imagefile import as_torch_integers
from eurosat_pipeline.data.split import read_split

UPLOAD_CHUNK = 4096  # images per host-to-GPU copy when a split is uploaded
log = logging.getLogger(__name__)


@dataclass
class ImageSet:
    """Images of one split: ``rows`` of ``source`` (``N x bands x H x W``: a memory map or a tensor)
    with the ``bands`` (0-based) the model takes, their class indices and archive paths."""

    source: np.ndarray | torch.Tensor
    rows: np.ndarray
    labels: torch.Tensor
    paths: list[str]
    bands: list[int] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def device(self) -> torch.device:
        return self.source.device if isinstance(self.source, torch.Tensor) else torch.device("cpu")

    @property
    def nbytes(self) -> int:
        """What the set's images take as tensors (16-bit values become 32-bit ones: see below)."""
        first = self.gather([0]) if len(self) else torch.empty(0)
        return len(self) * first.nelement() * first.element_size()

    def gather(self, positions: Sequence[int] | np.ndarray | slice) -> torch.Tensor:
        """The images at ``positions`` (of this set) as one tensor on the set's device."""
        rows = self.rows[positions]
        if isinstance(self.source, torch.Tensor):
            index = torch.as_tensor(rows, dtype=torch.long).to(self.source.device, non_blocking=True)
            batch = self.source.index_select(0, index)
            return batch if self.bands is None else batch[:, self.bands]
        batch = self.source[rows] if self.bands is None else self.source[rows][:, self.bands]
        return as_torch_integers(batch)

    def __getitem__(self, positions: slice) -> torch.Tensor:
        return self.gather(positions)

    @property
    def images(self) -> torch.Tensor:
        """Every image of the set at once: for small sets and tests; training gathers batches."""
        return self.gather(slice(None))

    def subset(self, positions: slice) -> ImageSet:
        return ImageSet(self.source, self.rows[positions], self.labels[positions], self.paths[positions], self.bands)

    def to(self, device: torch.device | str) -> ImageSet:
        """On a GPU: the set's images (its bands only) uploaded in chunks, through pinned memory."""
        device = torch.device(device)
        if device.type != "cuda":
            return self
        first = self.gather([0]) if len(self) else torch.empty(0)
        uploaded = torch.empty((len(self), *first.shape[1:]), dtype=first.dtype, device=device)
        for start in range(0, len(self), UPLOAD_CHUNK):
            chunk = self.gather(slice(start, start + UPLOAD_CHUNK))
            uploaded[start : start + len(chunk)].copy_(chunk.pin_memory(), non_blocking=True)
        return ImageSet(uploaded, np.arange(len(self)), self.labels.to(device), self.paths)


def tensor_set(images: torch.Tensor, labels: torch.Tensor, paths: list[str]) -> ImageSet:
    """An :class:`ImageSet` over images already in a tensor (features, tests)."""
    return ImageSet(images, np.arange(len(images)), labels, paths)


def _check_listed(rows: Sequence[Any], members: Any, split_csv: str | Path, archive: str | Path) -> None:
    missing = [r.path for r in rows if r.path not in members]
    if missing:
        raise DatasetError(
            f"{split_csv} lists {len(missing)} image(s) not in {archive} (e.g. {missing[0]}): "
            "the split is stale; run `dvc repro split`."
        )


def _rows_of(rows: Sequence[Any], name: str, split_csv: str | Path) -> list[Any]:
    chosen = [r for r in rows if r.split == name]
    if not chosen:
        raise DatasetError(f"{split_csv} has no '{name}' images; check the split fractions.")
    return chosen


def load_splits(
    archive: str | Path,
    split_csv: str | Path,
    names: Sequence[str],
    data: DataSpec,
    images: str | Path | None = None,
) -> dict[str, ImageSet]:
    """The named splits over the decoded array, with ``data``'s classes and bands. Nothing is read
    until a batch is gathered."""
    rows = read_split(split_csv, data.classes)
    classes = list(data.classes)
    members = archive_members(archive)
    row_of = {path: index for index, path in enumerate(members)}
    _check_listed(rows, row_of, split_csv, archive)
    array = open_images(images or images_path_for(archive), len(members))
    bands = [b - 1 for b in data.bands]
    if max(bands) >= array.shape[1]:
        raise DatasetError(
            f"the model takes band {max(bands) + 1}, but {images or images_path_for(archive)} has "
            f"{array.shape[1]} band(s): the data changed since training; run `dvc repro`."
        )
    sets = {}
    for name in names:
        chosen = _rows_of(rows, name, split_csv)
        sets[name] = ImageSet(
            array,
            np.array([row_of[r.path] for r in chosen], dtype=np.int64),
            torch.tensor([classes.index(r.label) for r in chosen], dtype=torch.long),
            [r.path for r in chosen],
            None if bands == list(range(array.shape[1])) else bands,
        )
    return sets


class InMemoryImages(Dataset):
    """A map-style dataset whose batches are one gather, not ``batch_size`` lookups."""

    def __init__(self, images: ImageSet) -> None:
        self.set = images

    def __len__(self) -> int:
        return len(self.set)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.set.gather([index])[0], self.set.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        source = self.set.source
        if isinstance(source, torch.Tensor) and self.set.bands is None and len(self.set.rows) == len(source):
            # Uploaded sets and features: rows are 0..N-1, so a batch is one gather where they live.
            index = index_tensor(indices, source.device)
            return source.index_select(0, index), self.set.labels[index]
        return self.set.gather(np.asarray(indices)), self.set.labels[torch.as_tensor(indices)]


def index_tensor(indices: list[int], device: torch.device) -> torch.Tensor:
    """The batch's indices on ``device``. To a GPU they go from pinned memory without blocking: a
    tensor made on the GPU straight from a Python list is a synchronous copy, a host sync per step."""
    index = torch.tensor(indices, dtype=torch.long)
    if device.type != "cuda":
        return index
    return index.pin_memory().to(device, non_blocking=True)


def _already_batched(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch


def batch_loader(
    images: ImageSet, batch_size: int, shuffle: bool = False, drop_last: bool = False, **loader: Any
) -> DataLoader:
    """Batches of the in-memory images; ``loader`` goes to the DataLoader (sampler, generator)."""
    return DataLoader(
        InMemoryImages(images),
        batch_size=batch_size,
        shuffle=shuffle if loader.get("sampler") is None else None,
        drop_last=drop_last,
        collate_fn=_already_batched,
        **loader,
    )
