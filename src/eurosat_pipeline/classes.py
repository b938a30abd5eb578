"""EuroSAT's fixed facts: the ten classes in label order, the image size, one colour per class.

The lowest layer of the package (it imports nothing of ours), so the data sources, the model, the
reports and the maps can all share these names without importing each other.
"""

from __future__ import annotations

# Label index = position here; checkpoints, split files and reports all use this order.
CLASSES: tuple[str, ...] = (
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
)
IMAGE_SIZE = 64  # EuroSAT patches are 64 x 64 pixels (10 m each)

# matplotlib's tab10, one entry per class in CLASSES order: every class always gets its colour.
CLASS_COLOURS: dict[str, str] = dict(
    zip(
        CLASSES,
        ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"),
        strict=True,
    )
)
