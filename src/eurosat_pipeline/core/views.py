"""Test-time augmentation over EuroSAT's symmetries: the flips and quarter-turns of a patch.

A satellite patch has no "up": its 8 rotations and mirror images (the dihedral group D4) are all
images the model could have been shown. Averaging the class probabilities over several of them
removes part of the model's orientation noise without training anything. The views are folded
into the batch, so an engine runs once on ``views x N`` images, not ``views`` times.

Each view is a transpose of the two pixel axes (or not) followed by a flip of the rows and/or
the columns. The order is chosen so that the first 2 views are the identity and the left-right
mirror, the first 4 the flips (a group of their own), and all 8 the whole D4 group. This module
is the one table; the NumPy predictors and the PyTorch evaluation both walk it.
"""

from __future__ import annotations

import numpy as np

# (transpose the pixel axes, flip the rows, flip the columns), in the order counts take them.
VIEWS: tuple[tuple[bool, bool, bool], ...] = (
    (False, False, False),  # as is
    (False, False, True),  # mirrored left-right
    (False, True, False),  # mirrored top-bottom
    (False, True, True),  # turned 180 degrees
    (True, False, False),  # transposed
    (True, True, False),  # turned 90 degrees (one way)
    (True, False, True),  # turned 90 degrees (the other way)
    (True, True, True),  # anti-transposed
)
VIEW_COUNTS = (1, 2, 4, 8)
# Measured on the real EuroSAT test split (docs/results.md, "Test-time augmentation"): all 8 views
# gain the most, and a patch costs 8 model passes, which predict and evaluate can afford.
DEFAULT_VIEWS = 8


def check_view_count(views: int, where: str = "--views") -> int:
    """``views`` if it is one of :data:`VIEW_COUNTS`; a clear ``ValueError`` otherwise."""
    if views not in VIEW_COUNTS:
        raise ValueError(
            f"{where} {views}: choose one of {', '.join(map(str, VIEW_COUNTS))} "
            "(1 = no test-time augmentation, 2 = with the mirror image, 4 = the flips, 8 = flips and quarter-turns)"
        )
    return views


def with_views(images: np.ndarray, views: int) -> np.ndarray:
    """``views x N x ... x H x W``, flattened to ``(views * N) x ... x H x W``: view 0 of every image first."""
    if views == 1:
        return images
    if views > 4 and images.shape[-1] != images.shape[-2]:
        raise ValueError(
            f"{views} views turn the images a quarter, which needs square ones (these are "
            f"{images.shape[-2]} x {images.shape[-1]}): use 4 views or fewer"
        )
    return np.concatenate([_view(images, *VIEWS[index]) for index in range(views)])


def average_views(probabilities: np.ndarray, views: int) -> np.ndarray:
    """``N x classes``: the mean over views of ``(views * N) x classes`` probabilities from :func:`with_views`."""
    if views == 1:
        return probabilities
    return probabilities.reshape(views, -1, probabilities.shape[-1]).mean(axis=0)


def _view(images: np.ndarray, transpose: bool, flip_rows: bool, flip_cols: bool) -> np.ndarray:
    if transpose:
        images = images.swapaxes(-1, -2)
    if flip_rows:
        images = images[..., ::-1, :]
    if flip_cols:
        images = images[..., ::-1]
    return images
