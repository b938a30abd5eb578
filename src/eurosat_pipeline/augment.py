"""Batched pixel work on the training device: flips, colour jitter, normalisation, resize.

The recipe's per-sample PIL pipeline (resize 64 -> 224, random flips, ColorJitter(0.2, 0.2, 0.2,
0.1), normalisation with the backbone's own mean and std) done on whole uint8 batches, where the
batch lives. Deliberate
differences from the per-sample version, measured for accuracy in benchmarks/README.md:

- Flips and jitter run at the native 64 px, before the resize: 12x fewer pixels. Flips, the
  linear colour maps and normalisation commute exactly with bilinear resizing.
- Colour jitter is one fused per-image colour transform (as NVIDIA DALI's ColorTwist): brightness,
  contrast and saturation use torchvision's formulas and factor ranges, composed in a random order
  (one order per batch, as Kornia does) into a 3x3 matrix plus offset per image, clamped to [0, 1]
  once at the end rather than after each step. Hue is a rotation about the grey axis in YIQ space
  (a linear stand-in for torchvision's HSV hue shift). It costs two small matrix products per batch
  instead of an RGB -> HSV -> RGB round trip, which made the jitter the slowest step on a CPU.
"""

from __future__ import annotations

import math

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode

from eurosat_pipeline.preprocessing import Preprocessing

# ITU-R 601 luma, the grey torchvision's contrast and saturation blend towards.
LUMA = (0.2989, 0.587, 0.114)
RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


class ColorJitterBatch(nn.Module):
    """Per-image random brightness, contrast, saturation and hue, applied as one fused transform."""

    def __init__(self, brightness: float, contrast: float, saturation: float, hue: float) -> None:
        super().__init__()
        self.strengths = (brightness, contrast, saturation, hue)
        self.register_buffer("luma", torch.tensor(LUMA), persistent=False)
        rgb_to_yiq = torch.tensor(RGB_TO_YIQ)
        self.register_buffer("rgb_to_yiq", rgb_to_yiq, persistent=False)
        self.register_buffer("yiq_to_rgb", torch.linalg.inv(rgb_to_yiq), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        n, device = images.shape[0], images.device
        factors = []
        for index, strength in enumerate(self.strengths):
            low, high = (-strength, strength) if index == HUE else (max(0.0, 1 - strength), 1 + strength)
            factors.append(torch.empty(n, device=device).uniform_(low, high))
        order = [i for i in torch.randperm(4).tolist() if self.strengths[i] > 0]
        return self.apply(images, *factors, order=order)

    def apply(
        self, images: Tensor, brightness: Tensor, contrast: Tensor, saturation: Tensor, hue: Tensor, order: list[int]
    ) -> Tensor:
        """Apply the given per-image factors in ``order`` (indices BRIGHTNESS .. HUE); images in [0, 1]."""
        n = images.shape[0]
        eye = torch.eye(3, device=images.device, dtype=images.dtype).expand(n, 3, 3)
        matrix, offset = eye, torch.zeros(n, 3, device=images.device, dtype=images.dtype)
        mean_rgb = images.mean(dim=(2, 3))
        for step in order:
            if step == BRIGHTNESS:
                a, b = brightness.view(n, 1, 1) * eye, torch.zeros_like(offset)
            elif step == CONTRAST:
                # torchvision blends with the mean grey of the image as it is at this point.
                current_mean = (matrix @ mean_rgb.unsqueeze(-1)).squeeze(-1) + offset
                grey = current_mean @ self.luma
                a, b = contrast.view(n, 1, 1) * eye, ((1 - contrast) * grey).unsqueeze(-1).expand(n, 3)
            elif step == SATURATION:
                to_grey = self.luma.expand(3, 3)
                a = saturation.view(n, 1, 1) * eye + (1 - saturation).view(n, 1, 1) * to_grey
                b = torch.zeros_like(offset)
            else:
                a, b = self._hue_rotation(hue), torch.zeros_like(offset)
            matrix, offset = a @ matrix, (a @ offset.unsqueeze(-1)).squeeze(-1) + b
        flat = torch.baddbmm(offset.unsqueeze(-1), matrix, images.flatten(2))
        return flat.view_as(images).clamp_(0, 1)

    def _hue_rotation(self, hue: Tensor) -> Tensor:
        angle = 2 * math.pi * hue
        cos, sin = angle.cos(), angle.sin()
        rotation = torch.zeros(hue.shape[0], 3, 3, device=hue.device, dtype=self.rgb_to_yiq.dtype)
        rotation[:, 0, 0] = 1
        rotation[:, 1, 1], rotation[:, 1, 2] = cos, -sin
        rotation[:, 2, 1], rotation[:, 2, 2] = sin, cos
        return self.yiq_to_rgb @ rotation @ self.rgb_to_yiq


def random_flips(images: Tensor) -> Tensor:
    """Independent horizontal and vertical flips, each with probability 0.5 per image.

    Both flips are one gather of pixel positions: a single pass over the batch, no host sync.
    """
    n, channels, height, width = images.shape
    device = images.device
    horizontal = torch.rand(n, 1, 1, device=device) < 0.5
    vertical = torch.rand(n, 1, 1, device=device) < 0.5
    rows = torch.arange(height, device=device).view(1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, width)
    rows = torch.where(vertical, height - 1 - rows, rows)
    cols = torch.where(horizontal, width - 1 - cols, cols)
    source = (rows * width + cols).view(n, 1, height * width).expand(n, channels, height * width)
    return images.flatten(2).gather(2, source).view_as(images)


class BatchTransform(nn.Module):
    """uint8 ``B x 3 x h x w`` in, normalised float ``B x 3 x S x S`` out."""

    def __init__(
        self,
        preprocessing: Preprocessing,
        random_flips: bool = True,
        jitter: tuple[float, float, float, float] = (0.2, 0.2, 0.2, 0.1),
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.preprocessing = preprocessing
        self.image_size = preprocessing.image_size
        self.interpolation = InterpolationMode(preprocessing.interpolation)
        self.flips = random_flips
        self.channels_last = channels_last
        self.jitter = ColorJitterBatch(*jitter) if any(jitter) else None
        self.register_buffer("mean", torch.tensor(preprocessing.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preprocessing.std).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: Tensor, train: bool) -> Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"BatchTransform takes uint8 images, got {images.dtype}")
        x = images.float().div_(255)  # a new tensor: the in-place steps below never touch the input
        if train and self.flips:
            x = random_flips(x)
        if train and self.jitter is not None:
            x = self.jitter(x)
        # Normalising before the resize is exact (both are linear, and the resize kernels sum to
        # one) and touches 12x fewer pixels.
        x = resize(x.sub_(self.mean).div_(self.std), self.image_size, self.interpolation)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def eval_transform(preprocessing: Preprocessing, channels_last: bool = False) -> BatchTransform:
    """Validation and inference preprocessing: resize and normalise, nothing random."""
    return BatchTransform(preprocessing, random_flips=False, jitter=(0.0, 0.0, 0.0, 0.0), channels_last=channels_last)


def resize(x: Tensor, size: int, interpolation: InterpolationMode = InterpolationMode.BILINEAR) -> Tensor:
    if x.shape[-2:] == (size, size):
        return x
    shrinking = x.shape[-1] > size or x.shape[-2] > size
    return TF.resize(x, [size, size], interpolation=interpolation, antialias=shrinking)
