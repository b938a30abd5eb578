"""Batched pixel work on the training device: flips, colour jitter, resize, normalisation.

The recipe's per-sample PIL pipeline (resize 64 -> 224, flips, ColorJitter(0.2, 0.2, 0.2, 0.1),
ImageNet normalisation) done on whole uint8 batches with Kornia, whose ``ColorJitter`` uses
torchvision's formulas with per-sample factors. One deliberate difference: flips and jitter run
at the native 64 px, before the resize, which is 12x fewer pixels to touch. Flips and the linear
parts of jitter commute with bilinear resizing; only clamping and the hue shift do not, and the
accuracy effect was measured (see benchmarks/README.md).
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
import torchvision.transforms.v2.functional as TF
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BatchTransform(nn.Module):
    """uint8 ``B x 3 x h x w`` in, normalised float ``B x 3 x S x S`` out."""

    def __init__(
        self,
        image_size: int,
        random_flips: bool = True,
        jitter: tuple[float, float, float, float] = (0.2, 0.2, 0.2, 0.1),
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.image_size = image_size
        self.channels_last = channels_last
        steps: list[nn.Module] = []
        if random_flips:
            steps += [K.RandomHorizontalFlip(p=0.5), K.RandomVerticalFlip(p=0.5)]
        if any(jitter):
            steps.append(K.ColorJitter(*jitter, p=1.0))
        self.augment = nn.Sequential(*steps)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        x = images.float().div_(255)
        if train and len(self.augment):
            x = self.augment(x)
        # Normalising before the resize is exact (both are linear) and touches 12x fewer pixels.
        x = (x - self.mean) / self.std
        x = resize(x, self.image_size)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    shrinking = x.shape[-1] > size or x.shape[-2] > size
    return TF.resize(x, [size, size], antialias=shrinking)
