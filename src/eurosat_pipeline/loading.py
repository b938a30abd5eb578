"""Decode the archive once into a uint8 tensor and serve index batches from memory.

27,000 images of 3x64x64 are 332 MB: small enough to keep in RAM, or on the GPU when there is
one. Batches are gathered by index (no per-sample Python work, no worker processes); all pixel
work happens batched on the device in :mod:`eurosat_pipeline.augment`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torchvision.io import decode_jpeg

from eurosat_pipeline.config import Config
from eurosat_pipeline.dataset import CLASSES, read_archive
from eurosat_pipeline.errors import ConfigError, DatasetError
from eurosat_pipeline.inference import backbone_features, feature_format
from eurosat_pipeline.preprocessing import Preprocessing
from eurosat_pipeline.split import EncodedSet, read_split

DECODE_CHUNK = 4096
log = logging.getLogger(__name__)


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


def read_splits(archive: str | Path, split_csv: str | Path, names: Sequence[str]) -> dict[str, EncodedSet]:
    """The JPEG bytes and labels of the named splits; the archive is read once."""
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
        sets[name] = EncodedSet(
            [blobs[r.path] for r in chosen], [CLASSES.index(r.label) for r in chosen], [r.path for r in chosen]
        )
    return sets


def decode_set(encoded: EncodedSet) -> ImageSet:
    return ImageSet(decode_jpegs(encoded.blobs), torch.tensor(encoded.labels, dtype=torch.long), encoded.paths)


def load_splits(archive: str | Path, split_csv: str | Path, names: Sequence[str]) -> dict[str, ImageSet]:
    """Decode the images of the named splits into uint8 tensors."""
    return {name: decode_set(encoded) for name, encoded in read_splits(archive, split_csv, names).items()}


class InMemoryImages(Dataset):
    """A map-style dataset whose batches are one tensor gather, not ``batch_size`` lookups."""

    def __init__(self, images: ImageSet) -> None:
        self.set = images

    def __len__(self) -> int:
        return len(self.set)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.set.images[index], self.set.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = index_tensor(indices, self.set.images.device)
        return self.set.images[index], self.set.labels[index]


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
    """Train and validation batches: decoded once and kept on the training device (``device``),
    or the original recipe's per-sample PIL pipeline (``per_sample``, kept for comparison)."""

    def __init__(
        self, archive: str | Path, split_csv: str | Path, config: Config, preprocessing: Preprocessing
    ) -> None:
        super().__init__()
        self.archive, self.split_csv, self.config = archive, split_csv, config
        self.preprocessing = preprocessing  # used by the per-sample pipeline, which normalises itself
        self.datasets: dict[str, Dataset] = {}
        self.cached_features: dict[str, InMemoryImages] = {}
        self.feature_seconds = 0.0

    def setup(self, stage: str) -> None:
        if self.datasets:
            return
        encoded = read_splits(self.archive, self.split_csv, ("train", "val"))
        if len(encoded["train"].labels) < self.config.batch_size:
            raise ConfigError(
                f"batch_size ({self.config.batch_size}) is larger than the training set "
                f"({len(encoded['train'].labels)} images); lower batch_size or use more data."
            )
        if self.config.input_pipeline == "per_sample":
            from eurosat_pipeline.per_sample import PerSampleImages

            self.datasets = {
                name: PerSampleImages(s, self.config, self.preprocessing, train=name == "train")
                for name, s in encoded.items()
            }
            return
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        # On a GPU the whole set fits in memory; batches then never cross the PCIe bus.
        self.datasets = {
            name: InMemoryImages(decode_set(s).to(device) if device.type == "cuda" else decode_set(s))
            for name, s in encoded.items()
        }

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
            # drop_last: a final batch of one sample would break the head's BatchNorm.
            return batch_loader(dataset.set, self.config.batch_size, drop_last=train, **sampling)
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
            features = self._compute_features(images.images)
            self.cached_features[name] = InMemoryImages(ImageSet(features, images.labels, images.paths))
            elapsed = time.perf_counter() - started
            self.feature_seconds += elapsed
            log.info("phase 1: backbone features of %d %s images computed once (%.0f s)", len(images), name, elapsed)
        return self.cached_features[name]

    def _compute_features(self, images: torch.Tensor) -> torch.Tensor:
        """Every image's features: on a GPU in the run's precision (autocast under bf16/16-mixed), on
        a CPU in the inference format (bf16 where the CPU has it natively). Under DDP each rank
        computes one shard and the shards are gathered, so the pass costs 1/world each."""
        model = self.trainer.lightning_module.model
        world, rank = self._world()
        fmt = feature_format(images.device) if images.device.type == "cpu" else None
        shard = -(-len(images) // world)
        with self.trainer.precision_plugin.forward_context():
            part = backbone_features(
                model, images[rank * shard : (rank + 1) * shard], channels_last=self.config.channels_last, fmt=fmt
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
