"""Batched pixel work on the training device: flips and quarter-turns, colour (or band) jitter,
normalisation, resize.

The recipe's per-sample PIL pipeline (resize 64 -> 224, random flips, ColorJitter(0.2, 0.2, 0.2,
0.1), normalisation with the backbone's own mean and std) done on whole uint8 batches, where the
batch lives, plus random quarter-turns (``random_quarter_turns``; docs/recipe.md says what they
gained). Deliberate differences from the per-sample version, measured for accuracy in
benchmarks/README.md:

- Flips, turns and jitter run at the native 64 px, before the resize: 12x fewer pixels. Flips,
  turns, the linear colour maps and normalisation commute exactly with bilinear resizing.
- Colour jitter is one fused per-image colour transform (as NVIDIA DALI's ColorTwist): brightness,
  contrast and saturation use torchvision's formulas and factor ranges, composed in a random order
  (one order per batch, as Kornia does) into a 3x3 matrix plus offset per image, clamped to [0, 1]
  once at the end rather than after each step. Hue is a rotation about the grey axis in YIQ space
  (a linear stand-in for torchvision's HSV hue shift). It costs two small matrix products per batch
  instead of an RGB -> HSV -> RGB round trip, which made the jitter the slowest step on a CPU.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode

from eurosat_pipeline.model.preprocessing import Preprocessing

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


class ViewDraw(NamedTuple):
    """Per image (``n x 1 x 1`` booleans): flip left-right, flip upside-down, then transpose."""

    horizontal: Tensor
    vertical: Tensor
    transpose: Tensor


def draw_views(n: int, device: torch.device, flips: bool = True, quarter_turns: bool = False) -> ViewDraw:
    """Which flip or quarter-turn each of ``n`` images gets.

    ``flips``: independent horizontal and vertical flips, each with probability 0.5 (the 4 views
    that keep rows as rows). ``quarter_turns``: a turn by 0, 90, 180 or 270 degrees, each with
    probability 1/4. Both: each of the 8 flips and quarter-turns (the views ``tta_views`` averages
    at test time) with probability 1/8. A scene seen from above has no "up", so every one of them
    is as real as the original.
    """
    horizontal, vertical, transpose = (torch.zeros(n, 1, 1, dtype=torch.bool, device=device) for _ in range(3))
    if flips:
        horizontal, vertical = torch.rand(n, 1, 1, device=device) < 0.5, torch.rand(n, 1, 1, device=device) < 0.5
    if quarter_turns:
        transpose = torch.rand(n, 1, 1, device=device) < 0.5
        if not flips:
            # Exactly one flip then a transpose is a quarter-turn; no transpose after none or both
            # flips is no turn or a half-turn: the transpose bit and one coin give the four turns.
            horizontal = torch.rand(n, 1, 1, device=device) < 0.5
            vertical = horizontal ^ transpose
    return ViewDraw(horizontal, vertical, transpose)


def apply_views(images: Tensor, draw: ViewDraw, transpose: bool = True) -> Tensor:
    """``draw``'s flips (and, with ``transpose``, its transposes: square images only) as one gather
    of pixel positions: a single pass over the batch, no host sync."""
    n, channels, height, width = images.shape
    if transpose and height != width:
        raise ValueError(f"a transposed {height} x {width} image is {width} x {height}: it cannot join the batch")
    device = images.device
    rows = torch.arange(height, device=device).view(1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, width)
    rows = torch.where(draw.vertical, height - 1 - rows, rows)  # n x H x 1
    cols = torch.where(draw.horizontal, width - 1 - cols, cols)  # n x 1 x W
    source = rows * width + cols
    if transpose:
        # Flip, then transpose: output[i, j] = flipped[j, i].
        source = torch.where(draw.transpose, rows.transpose(1, 2) * width + cols.transpose(1, 2), source)
    source = source.view(n, 1, height * width).expand(n, channels, height * width)
    return images.flatten(2).gather(2, source).view_as(images)


def random_flips(images: Tensor, flips: bool = True, quarter_turns: bool = False) -> Tensor:
    """Random flips and quarter-turns (:func:`draw_views`) of square images, per image."""
    return apply_views(images, draw_views(images.shape[0], images.device, flips, quarter_turns), quarter_turns)


class BandJitterBatch(nn.Module):
    """Band-agnostic jitter for data that is not 8-bit RGB: per image, one brightness factor for
    all bands (spectral ratios are kept), and a contrast factor per band that blends the band with
    its own mean. Hue and saturation only mean something for red, green and blue, so they are not
    applied. Values are raw (reflectance, counts); only negatives are clipped."""

    def __init__(self, brightness: float, contrast: float) -> None:
        super().__init__()
        self.brightness, self.contrast = brightness, contrast

    def forward(self, images: Tensor) -> Tensor:
        n, bands = images.shape[:2]
        if self.brightness > 0:
            low, high = max(0.0, 1 - self.brightness), 1 + self.brightness
            images = images * torch.empty(n, 1, 1, 1, device=images.device).uniform_(low, high)
        if self.contrast > 0:
            low, high = max(0.0, 1 - self.contrast), 1 + self.contrast
            factor = torch.empty(n, bands, 1, 1, device=images.device).uniform_(low, high)
            mean = images.mean(dim=(2, 3), keepdim=True)
            images = factor * images + (1 - factor) * mean
        return images.clamp_(min=0)


class BatchTransform(nn.Module):
    """Integer ``B x bands x h x w`` in, normalised float ``B x bands x S x S`` out.

    ``rgb``: the data is 8-bit red, green, blue, and gets the recipe's colour jitter (brightness,
    contrast, saturation, hue); any other data gets :class:`BandJitterBatch` (brightness and
    contrast only) with the same strengths.
    """

    def __init__(
        self,
        preprocessing: Preprocessing,
        random_flips: bool = True,
        jitter: tuple[float, float, float, float] = (0.2, 0.2, 0.2, 0.1),
        channels_last: bool = False,
        rgb: bool = True,
        quarter_turns: bool = False,
    ) -> None:
        super().__init__()
        self.preprocessing = preprocessing
        self.image_size = preprocessing.image_size
        self.interpolation = InterpolationMode(preprocessing.interpolation)
        self.flips = random_flips
        self.quarter_turns = quarter_turns
        self.channels_last = channels_last
        self.jitter: nn.Module | None = None
        if rgb and any(jitter):
            self.jitter = ColorJitterBatch(*jitter)
        elif not rgb and any(jitter[:2]):
            self.jitter = BandJitterBatch(*jitter[:2])
        # The colour jitter works on [0, 1] pixels (raw / 255); the band jitter on raw / value_scale.
        # mean and std are rescaled to that domain, so (x - mean) / std is the stored normalisation.
        self.input_scale = 255.0 if rgb else preprocessing.value_scale
        to_domain = preprocessing.value_scale / self.input_scale
        shape = (1, preprocessing.bands, 1, 1)
        mean = torch.tensor(preprocessing.mean, dtype=torch.float64) * to_domain
        std = torch.tensor(preprocessing.std, dtype=torch.float64) * to_domain
        self.register_buffer("mean", mean.float().view(shape), persistent=False)
        self.register_buffer("std", std.float().view(shape), persistent=False)

    @torch.no_grad()
    def forward(self, images: Tensor, train: bool) -> Tensor:
        if images.dtype.is_floating_point or images.dtype == torch.bool:
            raise TypeError(f"BatchTransform takes integer images (uint8, uint16), got {images.dtype}")
        if images.shape[1] != self.mean.shape[1]:
            raise ValueError(f"the model takes {self.mean.shape[1]} band(s), got images with {images.shape[1]}")
        x = images.float().div_(self.input_scale)  # a new tensor: the steps below never touch the input
        late_transpose = None
        if train and (self.flips or self.quarter_turns):
            draw = draw_views(x.shape[0], x.device, self.flips, self.quarter_turns)
            square = x.shape[-1] == x.shape[-2]
            x = apply_views(x, draw, transpose=self.quarter_turns and square)
            if self.quarter_turns and not square:
                late_transpose = draw.transpose.unsqueeze(1)
        if train and self.jitter is not None:
            x = self.jitter(x)
        # Normalising before the resize is exact (both are linear, and the resize kernels sum to
        # one) and touches 12x fewer pixels.
        x = resize(x.sub_(self.mean).div_(self.std), self.image_size, self.interpolation)
        if late_transpose is not None:
            # A non-square image turns after the resize to the model's square: resizing each axis
            # on its own commutes with swapping them, so this is the turned image, resized.
            x = torch.where(late_transpose, x.transpose(-1, -2), x)
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
