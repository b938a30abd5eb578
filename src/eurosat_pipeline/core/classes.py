"""EuroSAT's facts (the ten classes in label order, the image size, one colour per class) and colours for any classes.

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


def class_colours_of(names: tuple[str, ...] | list[str]) -> dict[str, str]:
    """One fixed colour per class, for any class names: EuroSAT's own colours for EuroSAT's ten,
    else matplotlib's tab10 (up to 10 classes), tab20 (up to 20) or evenly spaced hues."""
    names = list(names)
    if set(names) <= set(CLASS_COLOURS):
        return {name: CLASS_COLOURS[name] for name in names}
    from matplotlib import colormaps, colors

    if len(names) <= 20:
        palette = colormaps["tab10" if len(names) <= 10 else "tab20"].colors
        return {name: colors.to_hex(palette[i]) for i, name in enumerate(names)}
    hsv = colormaps["hsv"]
    return {name: colors.to_hex(hsv(i / len(names))) for i, name in enumerate(names)}
