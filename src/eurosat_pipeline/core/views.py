"""Test-time augmentation over EuroSAT's symmetries: the flips and quarter-turns of a patch.

A satellite patch has no "up": its 8 rotations and mirror images (the dihedral group D4) are all
images the model could have been shown. Averaging the class probabilities over several of them
removes part of the model's orientation noise without training anything. The views are folded
into the batch, so an engine runs once on ``views x N`` images, not ``views`` times.

Each view is a transpose of the two pixel axes (or not) followed by a flip of the rows and/or
the columns. The order is chosen so that the first 2 views are the identity and the left-right
mirror, the first 4 the flips (a group of their own), and all 8 the whole D4 group. This module
is the one table and the one averaging (:func:`mean_over_views`): the engines of
``eurosat predict``, ``map`` and ``serve`` and the evaluate stage all call it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

Images = TypeVar("Images")  # a NumPy array or a torch tensor, N x C x H x W
Probabilities = Any  # N x classes, of the kind ``classify`` returns

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


def view_of(images: Images, index: int) -> Images:
    """View ``index`` of :data:`VIEWS` of ``... x H x W`` images: a NumPy array or a torch tensor
    (both have ``swapaxes``; the flips are ``np.flip`` or the tensor's own ``flip``). Any shape: a
    non-square image's quarter-turns are ``W x H``, which the model's resize takes like any other."""
    transpose, flip_rows, flip_cols = VIEWS[index]
    if transpose:
        images = images.swapaxes(-1, -2)
    axes = tuple(axis for axis, flip in ((-2, flip_rows), (-1, flip_cols)) if flip)
    if not axes:
        return images
    return np.flip(images, axes) if isinstance(images, np.ndarray) else images.flip(axes)


def mean_over_views(classify: Callable[[Images], Probabilities], images: Images, views: int) -> Probabilities:
    """The mean of ``classify``'s class probabilities over the first ``views`` views of ``images``:
    the one test-time augmentation of every engine and of the evaluate stage. One view at a time
    goes to ``classify``, so memory stays what the caller's batch size chose."""
    check_view_count(views)
    total = classify(images)
    for index in range(1, views):
        total = total + classify(view_of(images, index))
    return total / views if views > 1 else total
