"""A pretrained backbone for N input bands: the stem convolution adapted, band by band.

timm's own ``in_chans`` adaptation (``adapt_input_conv``) repeats the RGB filters cyclically,
which gives the filter of red to whatever band comes first. Here the band's role decides:

- a band that is red, green or blue (by name: Sentinel-2's B04, B03, B02, or the colour) keeps
  that colour's pretrained filter;
- every other band starts from the mean of the three RGB filters.

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


# How a band without a pretrained filter starts. "mean" (timm's rule, measured against "zero"
# in benchmarks/extra_bands.py: neither better on both datasets, docs/your-own-data.md) feeds it in
# as one more luminance channel; "zero" leaves the pretrained RGB path undisturbed at the start.
NEW_BANDS_START = "mean"


def adapted_weight(weight: Tensor, roles: Sequence[int | None]) -> Tensor:
    """The stem's ``out x 3 x k x k`` weight for the bands in ``roles`` (0/1/2 = red/green/blue, None = other)."""
    if weight.shape[1] != RGB_FILTERS:
        raise ValueError(f"the stem takes {weight.shape[1]} bands; expected a 3-band (RGB) pretrained stem")
    if NEW_BANDS_START == "zero":  # the RGB filters as they are; new bands add nothing yet
        kept = sum(role is not None for role in roles)
        columns = [weight[:, role] if role is not None else torch.zeros_like(weight[:, 0]) for role in roles]
        return torch.stack(columns, dim=1) * (RGB_FILTERS / kept if 0 < kept < RGB_FILTERS else 1.0)
    mean_filter = weight.mean(dim=1)
    columns = [weight[:, role] if role is not None else mean_filter for role in roles]
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
        parts.append(f"{', '.join(others)} start from the mean RGB filter")
    return f"stem adapted to {len(roles)} bands: " + "; ".join(parts) + f"; every filter scaled by 3/{len(roles)}"
