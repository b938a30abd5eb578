"""The original recipe's input pipeline, kept as ``input_pipeline: per_sample`` for comparisons.

Every epoch, every image is decoded with PIL and resized, flipped and jittered on its own, in the
data-loader process(es): exactly the reference tutorial's loader, which a GPU outruns many times.
"""

from __future__ import annotations

import io

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from eurosat_pipeline.config import Config
from eurosat_pipeline.preprocessing import Preprocessing
from eurosat_pipeline.split import EncodedSet


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
