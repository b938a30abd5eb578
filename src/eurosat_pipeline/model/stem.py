"""A pretrained backbone for N input bands: the stem convolution adapted, band by band.

timm's own ``in_chans`` adaptation (``adapt_input_conv``) repeats the RGB filters cyclically,
which gives the filter of red to whatever band comes first. Here the band's role decides:

- a band that is red, green or blue (by name: Sentinel-2's B04, B03, B02, or the colour) keeps
  that colour's pretrained filter;
- every other band starts from a random filter of the RGB filters' spread, its own (seeded): two
  new bands never share a filter, so their differences cannot cancel (``NEW_BANDS_START``).

Such a stem then learns (it is never frozen; :mod:`eurosat_pipeline.training.module`): the new
filters have no pretrained meaning. Every filter is scaled by 3 / N, timm's rule: for inputs that
are similar across bands (as normalised spectral bands largely are), the stem's output, a sum over
input bands, keeps the range the pretrained layers after it expect. Three RGB bands in RGB order change nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

RGB_FILTERS = 3


def stem_conv_name(backbone: nn.Module) -> str:
    """The first convolution's module name, as timm's pretrained config names it."""
    name = (getattr(backbone, "pretrained_cfg", None) or {}).get("first_conv")
    if isinstance(name, (list, tuple)):
        name = name[0]
    if not name:
        raise ValueError(f"{type(backbone).__name__}: timm names no first convolution for this model")
    return str(name)


# How a band without a pretrained filter starts (benchmarks/extra_bands.py's ``_init=`` measures the
# others; docs/your-own-data.md has the numbers). "random": each new band's filter drawn with the
# RGB filters' spread, seeded per band. No two new bands share a filter, so opposite contrasts in two
# of them (one brighter, one darker) cannot cancel at the stem, and a new band's level reaches every
# output channel in a direction of its own, not only the channels that carry the image's brightness:
# the frozen network's features (what a cached phase 1 trains the head on) show it from the start.
# "signs" (the mean RGB filter with a seeded sign per output channel) also avoids the cancelling,
# but reaches only the brightness channels; "mean" (timm's rule, the rule before) gives every new
# band the same filter, so two of them with opposite contrasts cancel exactly; "zero" leaves the
# new bands out of the frozen features altogether.
NEW_BANDS_START = "random"
NEW_BANDS_SEED = 42
NEW_BANDS_WORDS = {
    "random": f"random filters of the RGB filters' spread (seeded, {NEW_BANDS_SEED} + n for the n-th)",
    "signs": "the mean RGB filter with a seeded random sign per output channel, its own for each",
    "mean": "the mean RGB filter",
    "zero": "zero filters",
}


def new_band_filters(weight: Tensor, count: int, start: str = "") -> list[Tensor]:
    """``count`` filters (``out x k x k``) for the bands without a pretrained one, in band order. The
    n-th new band's filter depends only on n and the pretrained weight: the same every time."""
    start = start or NEW_BANDS_START
    mean_filter = weight.mean(dim=1)
    if start == "mean":
        return [mean_filter] * count
    if start == "zero":
        return [torch.zeros_like(mean_filter)] * count
    filters = []
    for number in range(count):
        generator = torch.Generator().manual_seed(NEW_BANDS_SEED + number)
        if start == "random":
            filters.append(torch.randn(mean_filter.shape, generator=generator).to(weight) * weight.std())
        elif start == "signs":
            signs = torch.randint(0, 2, (weight.shape[0], 1, 1), generator=generator).to(weight) * 2 - 1
            filters.append(mean_filter * signs)
        else:
            raise ValueError(f"NEW_BANDS_START {start!r}: expected random, signs, mean or zero")
    return filters


def adapted_weight(weight: Tensor, roles: Sequence[int | None]) -> Tensor:
    """The stem's ``out x N x k x k`` weight for the bands in ``roles`` (0/1/2 = red/green/blue,
    None = other): red, green and blue keep their filters, the others start as
    :func:`new_band_filters` says, every filter scaled by 3 / N."""
    if weight.shape[1] != RGB_FILTERS:
        raise ValueError(f"the stem takes {weight.shape[1]} bands; expected a 3-band (RGB) pretrained stem")
    new = iter(new_band_filters(weight, sum(role is None for role in roles)))
    columns = [weight[:, role] if role is not None else next(new) for role in roles]
    if NEW_BANDS_START == "zero":  # the RGB filters as they are; new bands add nothing yet
        kept = len(roles) - sum(role is None for role in roles)
        return torch.stack(columns, dim=1) * (RGB_FILTERS / kept if 0 < kept < RGB_FILTERS else 1.0)
    return torch.stack(columns, dim=1) * (RGB_FILTERS / len(roles))


def stem_must_learn(pretrained: bool, roles: Sequence[int | None]) -> bool:
    """Whether the stem has filters without a pretrained meaning (bands that are not red, green or
    blue): those must learn, so the stem is never frozen."""
    return pretrained and any(role is None for role in roles)


def describe_adaptation(roles: Sequence[int | None], names: Sequence[str]) -> str:
    """What was done, in words, for the model card and the summary."""
    if tuple(roles) == (0, 1, 2):
        return "none: 3 bands in red, green, blue order keep the pretrained stem as it is"
    colour = {0: "red", 1: "green", 2: "blue"}
    kept = [f"{name} <- {colour[role]}" for name, role in zip(names, roles, strict=True) if role is not None]
    others = [name for name, role in zip(names, roles, strict=True) if role is None]
    parts = [f"pretrained filters kept for {', '.join(kept)}"] if kept else ["no red, green or blue band"]
    if others:
        parts.append(f"{', '.join(others)} start from {NEW_BANDS_WORDS[NEW_BANDS_START]}")
    return f"stem adapted to {len(roles)} bands: " + "; ".join(parts) + f"; every filter scaled by 3/{len(roles)}"
