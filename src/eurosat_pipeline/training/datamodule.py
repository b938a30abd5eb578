"""Lightning's view of the decoded array: train and validation loaders, placed on the device.

A split that fits comfortably in free GPU memory is uploaded once (batches never cross the PCIe
bus); a larger one is gathered on the host and copied through pinned memory. With
``phase1_cached_features`` the frozen backbone's features are computed once and served instead.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torchmetrics.utilities.distributed import gather_all_tensors

from eurosat_pipeline.core.config import Config
from eurosat_pipeline.core.dataspec import DataSpec
from eurosat_pipeline.core.errors import ConfigError
from eurosat_pipeline.data.loading import ImageSet, InMemoryImages, batch_loader, load_splits, tensor_set
from eurosat_pipeline.model.inference import backbone_features, feature_format

GPU_SHARE = 0.5  # a split is uploaded when it takes at most this share of the free GPU memory
log = logging.getLogger(__name__)


class EuroSATDataModule(L.LightningDataModule):
    """Train and validation batches gathered from the decoded array (on a GPU uploaded when they fit)."""

    def __init__(
        self,
        archive: str | Path,
        split_csv: str | Path,
        config: Config,
        data: DataSpec,
        images: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.archive, self.split_csv, self.config = archive, split_csv, config
        self.images = images
        self.data = data
        self.datasets: dict[str, InMemoryImages] = {}
        self.cached_features: dict[str, InMemoryImages] = {}
        self.feature_seconds = 0.0
        self.placement: dict[str, str] = {}  # per split: where its images are gathered from

    def setup(self, stage: str) -> None:
        if self.datasets:
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
        # drop_last: a final batch of one sample would break the head's BatchNorm. Host batches for
        # a GPU are pinned, so their copy overlaps the previous step.
        pin = dataset.set.device.type == "cpu" and torch.cuda.is_available() and self._on_gpu()
        return batch_loader(dataset.set, self.config.batch_size, drop_last=train, pin_memory=pin, **sampling)

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
        # Shards differ in length by up to one image; gather_all_tensors pads and trims them.
        return torch.cat(gather_all_tensors(part))[: len(images)]

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)
