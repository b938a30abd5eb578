"""The original recipe's input pipeline, kept here only as the baseline the benchmarks compare with.

Every epoch, every image is decoded with PIL and resized, flipped and jittered on its own, in the
data-loader process(es): exactly the reference tutorial's loader, which a GPU outruns many times.
The pipeline itself never uses it (it decodes once and augments whole batches on the device).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from eurosat_pipeline.core.config import Config
from eurosat_pipeline.data.dataset import read_archive
from eurosat_pipeline.data.split import read_split
from eurosat_pipeline.model.preprocessing import Preprocessing
from eurosat_pipeline.training.module import LandUseClassifier

# The original tutorial normalised with ImageNet's statistics on values / 255.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_preprocessing(image_size: int) -> Preprocessing:
    """The original recipe's preprocessing: bilinear resize, ImageNet mean and std on raw / 255."""
    return Preprocessing(image_size, IMAGENET_MEAN, IMAGENET_STD, value_scale=255.0, interpolation="bilinear")


@dataclass
class EncodedSet:
    """Images of one split still as JPEG bytes (what the per-sample pipeline decodes each epoch)."""

    blobs: list[bytes]
    labels: list[int]
    paths: list[str]


def read_splits(
    archive: str | Path, split_csv: str | Path, names: Sequence[str], classes: Sequence[str] | None = None
) -> dict[str, EncodedSet]:
    """The encoded bytes and labels of the named splits (the per-sample pipeline decodes them itself)."""
    rows = read_split(split_csv, classes)
    classes = list(classes) if classes else sorted({r.label for r in rows})
    blobs = read_archive(archive)
    sets = {}
    for name in names:
        chosen = [r for r in rows if r.split == name]
        sets[name] = EncodedSet(
            [blobs[r.path] for r in chosen], [classes.index(r.label) for r in chosen], [r.path for r in chosen]
        )
    return sets


def original_transform(config: Config, preprocessing: Preprocessing, train: bool) -> T.Compose:
    """Resize -> (flips, ColorJitter) -> ToTensor -> Normalize, per PIL image, with the backbone's
    own interpolation and statistics."""
    size = (preprocessing.image_size, preprocessing.image_size)
    steps: list = [T.Resize(size, interpolation=T.InterpolationMode(preprocessing.interpolation))]
    if train:
        if config.random_flips:
            steps += [T.RandomHorizontalFlip(), T.RandomVerticalFlip()]
        steps.append(
            T.ColorJitter(config.jitter_brightness, config.jitter_contrast, config.jitter_saturation, config.jitter_hue)
        )
    # ToTensor gives raw / 255; the stored normalisation is on raw / value_scale.
    to_unit = preprocessing.value_scale / 255
    steps += [
        T.ToTensor(),
        T.Normalize([m * to_unit for m in preprocessing.mean], [s * to_unit for s in preprocessing.std]),
    ]
    return T.Compose(steps)


class PerSampleImages(Dataset):
    def __init__(self, encoded: EncodedSet, config: Config, preprocessing: Preprocessing, train: bool) -> None:
        self.encoded = encoded
        self.transform = original_transform(config, preprocessing, train)

    def __len__(self) -> int:
        return len(self.encoded.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = Image.open(io.BytesIO(self.encoded.blobs[index])).convert("RGB")
        return self.transform(image), self.encoded.labels[index]


class PerSampleDataModule(L.LightningDataModule):
    """Train and validation loaders of the original recipe: PIL per sample, ``workers`` processes."""

    def __init__(
        self, archive: Path, split_csv: Path, config: Config, preprocessing: Preprocessing, workers: int
    ) -> None:
        super().__init__()
        self.archive, self.split_csv, self.config = archive, split_csv, config
        self.preprocessing, self.workers = preprocessing, workers
        self.per_sample: dict[str, PerSampleImages] = {}

    def setup(self, stage: str) -> None:
        encoded = read_splits(self.archive, self.split_csv, ("train", "val"))
        self.per_sample = {
            name: PerSampleImages(s, self.config, self.preprocessing, train=name == "train")
            for name, s in encoded.items()
        }

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def _loader(self, name: str, train: bool) -> DataLoader:
        return DataLoader(
            self.per_sample[name],
            batch_size=self.config.batch_size,
            shuffle=train,
            drop_last=train,
            num_workers=self.workers,
            persistent_workers=self.workers > 0,
            pin_memory=torch.cuda.is_available(),
            generator=torch.Generator().manual_seed(self.config.seed),
        )


class PerSampleClassifier(LandUseClassifier):
    """The pipeline's module fed by the per-sample loader: its batches arrive already resized,
    jittered and normalised, so the batched device transform is skipped."""

    def on_after_batch_transfer(self, batch: tuple[Tensor, Tensor], dataloader_idx: int) -> tuple[Tensor, Tensor]:
        images, labels = batch
        return images.contiguous(memory_format=self._memory_format), labels
