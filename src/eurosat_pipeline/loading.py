"""Batches gathered from the decoded array (``images.npy``), never the dataset held in RAM.

The download stage decodes every image once into ``images.npy`` (:mod:`eurosat_pipeline.dataset`).
Here it is opened as a read-only memory map: a batch is one gather of its rows (the pages it
touches are read; the kernel's page cache, not this process, holds them), with only the model's
bands. On a GPU, a split that fits comfortably in free GPU memory is uploaded once, so batches
never cross the PCIe bus; a larger one is gathered on the host and copied through pinned memory.
All pixel work happens batched on the device in :mod:`eurosat_pipeline.augment`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from eurosat_pipeline.config import Config
from eurosat_pipeline.dataset import archive_members, images_path_for, open_images, read_archive
from eurosat_pipeline.dataspec import DataSpec
from eurosat_pipeline.errors import ConfigError, DatasetError
from eurosat_pipeline.imagefile import as_torch_integers
from eurosat_pipeline.inference import backbone_features, feature_format
from eurosat_pipeline.preprocessing import Preprocessing
from eurosat_pipeline.split import EncodedSet, read_split

UPLOAD_CHUNK = 4096  # images per host-to-GPU copy when a split is uploaded
GPU_SHARE = 0.5  # a split is uploaded when it takes at most this share of the free GPU memory
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


def read_splits(
    archive: str | Path, split_csv: str | Path, names: Sequence[str], classes: Sequence[str] | None = None
) -> dict[str, EncodedSet]:
    """The encoded bytes and labels of the named splits (the per-sample pipeline decodes them itself)."""
    rows = read_split(split_csv, classes)
    classes = list(classes) if classes else sorted({r.label for r in rows})
    blobs = read_archive(archive)
    _check_listed(rows, blobs, split_csv, archive)
    sets = {}
    for name in names:
        chosen = _rows_of(rows, name, split_csv)
        sets[name] = EncodedSet(
            [blobs[r.path] for r in chosen], [classes.index(r.label) for r in chosen], [r.path for r in chosen]
        )
    return sets


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
    data: DataSpec | None = None,
    images: str | Path | None = None,
) -> dict[str, ImageSet]:
    """The named splits over the decoded array, with ``data``'s classes and bands (all bands and the
    split's class names when not given). Nothing is read until a batch is gathered."""
    rows = read_split(split_csv, data.classes if data else None)
    classes = list(data.classes) if data else sorted({r.label for r in rows})
    members = archive_members(archive)
    row_of = {path: index for index, path in enumerate(members)}
    _check_listed(rows, row_of, split_csv, archive)
    array = open_images(images or images_path_for(archive), len(members))
    bands = [b - 1 for b in data.bands] if data else None
    if bands is not None and max(bands) >= array.shape[1]:
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


class EuroSATDataModule(L.LightningDataModule):
    """Train and validation batches gathered from the decoded array (``device``: on a GPU uploaded
    when they fit), or the original recipe's per-sample PIL pipeline (``per_sample``, kept for
    comparison, 8-bit RGB only)."""

    def __init__(
        self,
        archive: str | Path,
        split_csv: str | Path,
        config: Config,
        preprocessing: Preprocessing,
        data: DataSpec | None = None,
        images: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.archive, self.split_csv, self.config = archive, split_csv, config
        self.images = images
        self.data = data or DataSpec.eurosat_rgb()
        self.preprocessing = preprocessing  # used by the per-sample pipeline, which normalises itself
        self.datasets: dict[str, Dataset] = {}
        self.cached_features: dict[str, InMemoryImages] = {}
        self.feature_seconds = 0.0
        self.placement: dict[str, str] = {}  # per split: where its images are gathered from

    def setup(self, stage: str) -> None:
        if self.datasets:
            return
        if self.config.input_pipeline == "per_sample":
            self._setup_per_sample()
            return
        sets = load_splits(self.archive, self.split_csv, ("train", "val"), self.data, self.images)
        self._check_batch_size(len(sets["train"]))
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        self.datasets = {name: InMemoryImages(self._place(name, s, device)) for name, s in sets.items()}

    def _place(self, name: str, images: ImageSet, device: torch.device) -> ImageSet:
        """On a GPU: uploaded when the split takes at most half the free GPU memory, else gathered
        on the host and copied through pinned memory (the loader pins each batch)."""
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            size = images.nbytes
            if size <= GPU_SHARE * free:
                self.placement[name] = f"uploaded to {device} ({size / 2**20:,.0f} MiB)"
                return images.to(device)
            self.placement[name] = (
                f"gathered on the host through pinned memory ({size / 2**20:,.0f} MiB > "
                f"{GPU_SHARE:.0%} of {free / 2**20:,.0f} MiB free on {device})"
            )
        else:
            self.placement[name] = "gathered from the memory-mapped array"
        log.info("%s images: %s", name, self.placement[name])
        return images

    def _setup_per_sample(self) -> None:
        from eurosat_pipeline.per_sample import PerSampleImages

        if not self.data.is_rgb8 or self.data.in_chans != 3:
            raise ConfigError(
                f"key 'input_pipeline': per_sample is the original recipe's PIL loader for 8-bit RGB images; this "
                f"model takes {self.data.in_chans} {self.data.dtype} band(s) ({', '.join(self.data.shown_bands())}). "
                "Use input_pipeline: device."
            )
        encoded = read_splits(self.archive, self.split_csv, ("train", "val"), self.data.classes)
        self._check_batch_size(len(encoded["train"].labels))
        self.datasets = {
            name: PerSampleImages(s, self.config, self.preprocessing, train=name == "train")
            for name, s in encoded.items()
        }

    def _check_batch_size(self, train_images: int) -> None:
        if train_images < self.config.batch_size:
            raise ConfigError(
                f"batch_size ({self.config.batch_size}) is larger than the training set "
                f"({train_images} images); lower batch_size or use more data."
            )

    def _loader(self, name: str, train: bool) -> DataLoader:
        dataset = self._features_of(name) if self._in_cached_phase() else self.datasets[name]
        if not self._in_cached_phase():
            self.cached_features.clear()  # phase 2 trains on images; free the features
        sampling = {
            "sampler": self._train_sampler(dataset) if train else self._validation_sampler(dataset),
            # The loader's own generator: creating its iterator must not draw from the global RNG,
            # which the module reseeds every epoch for augmentation and dropout.
            "generator": torch.Generator().manual_seed(self.config.seed),
        }
        if isinstance(dataset, InMemoryImages):
            # drop_last: a final batch of one sample would break the head's BatchNorm. Host batches
            # for a GPU are pinned, so their copy overlaps the previous step.
            pin = dataset.set.device.type == "cpu" and torch.cuda.is_available() and self._on_gpu()
            return batch_loader(dataset.set, self.config.batch_size, drop_last=train, pin_memory=pin, **sampling)
        workers = self.config.num_workers
        return DataLoader(
            dataset,
            batch_size=self.config.batch_size,
            drop_last=train,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            **sampling,
        )

    def _on_gpu(self) -> bool:
        return bool(self.trainer) and self.trainer.strategy.root_device.type == "cuda"

    def _world(self) -> tuple[int, int]:
        return (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)

    def _train_sampler(self, dataset: Dataset) -> Sampler:
        """Each rank's shard of a shuffle that depends only on (seed, epoch): Lightning calls
        ``set_epoch``, so a resumed run sees the same order as an uninterrupted one."""
        world, rank = self._world()
        return DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.config.seed)

    def _validation_sampler(self, dataset: Dataset) -> Sampler | None:
        """Under DDP, shards that are not padded with repeated images: the validation accuracy is
        then exactly the single-process accuracy."""
        world, rank = self._world()
        return (
            UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False) if world > 1 else None
        )

    def _in_cached_phase(self) -> bool:
        """Phase 1 with ``phase1_cached_features``: the loaders serve backbone features, not images.

        A frozen backbone in eval mode is a fixed function of its input, so without augmentation
        its features are the same every epoch: computed once, phase 1 costs one forward pass.
        """
        epoch = self.trainer.current_epoch if self.trainer else 0
        return self.config.phase1_cached_features and epoch < self.config.phase1_epochs

    def _features_of(self, name: str) -> InMemoryImages:
        if name not in self.cached_features:
            started = time.perf_counter()
            images = self.datasets[name].set
            features = self._compute_features(images)
            self.cached_features[name] = InMemoryImages(tensor_set(features, images.labels, images.paths))
            elapsed = time.perf_counter() - started
            self.feature_seconds += elapsed
            log.info("phase 1: backbone features of %d %s images computed once (%.0f s)", len(images), name, elapsed)
        return self.cached_features[name]

    def _compute_features(self, images: ImageSet) -> torch.Tensor:
        """Every image's features: on a GPU in the run's precision (autocast under bf16/16-mixed), on
        a CPU in the inference format (bf16 where the CPU has it natively). Under DDP each rank
        computes one shard and the shards are gathered, so the pass costs 1/world each."""
        model = self.trainer.lightning_module.model
        world, rank = self._world()
        device = self.trainer.strategy.root_device
        fmt = feature_format(device) if device.type == "cpu" else None
        shard = -(-len(images) // world)
        with self.trainer.precision_plugin.forward_context():
            part = backbone_features(
                model,
                images.subset(slice(rank * shard, (rank + 1) * shard)),
                channels_last=self.config.channels_last,
                fmt=fmt,
                device=device,
            )
        if world == 1:
            return part
        # all_gather needs equal shapes: the last shard is padded, and the padding dropped after.
        padded = torch.zeros(shard, part.shape[1], dtype=part.dtype, device=part.device)
        padded[: len(part)] = part
        shards = [torch.empty_like(padded) for _ in range(world)]
        torch.distributed.all_gather(shards, padded)
        return torch.cat(shards)[: len(images)]

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)
