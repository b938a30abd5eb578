"""What a model was trained on: its classes and its input bands, carried with the model.

Built by the train stage from ``dataset.json``, the split stage's band statistics and the
``bands`` and ``band_names`` params; stored in the checkpoint and the ONNX metadata, so that evaluate, predict, map,
the reports and the model card all read the classes and bands from the model itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from eurosat_pipeline.core.bands import EUROSAT_MS_BANDS, band_labels, resolve_bands, rgb_role, sentinel2_band
from eurosat_pipeline.core.classes import CLASSES, IMAGE_SIZE
from eurosat_pipeline.core.errors import ConfigError, DatasetError

RGB_ROLES = (0, 1, 2)
RGB_BANDS = ("B04", "B03", "B02")  # Sentinel-2's red, green, blue


@dataclass(frozen=True)
class BandMatch:
    """Where a model's bands are in a file: 0-based positions in the file, in the model's order;
    ``by_position`` when the file names no bands and the layout alone placed them."""

    positions: list[int]
    by_position: bool


@dataclass(frozen=True)
class DataSpec:
    """Classes (label order), the selected bands (1-based numbers in the data, and their names),
    the value type, the patch size, and the training split's mean and std of each selected band."""

    classes: tuple[str, ...]
    bands: tuple[int, ...]
    band_names: tuple[str, ...] | None
    dtype: str
    patch_size: int | None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    #: How many bands the training data had (``bands`` are positions among them).
    data_bands: int = 3

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        return len(self.bands)

    @property
    def rgb_roles(self) -> tuple[int | None, ...]:
        """Per input band: 0, 1, 2 where it is red, green, blue; None for any other band. Three unnamed
        8-bit bands are taken as red, green, blue (what a 3-band 8-bit image almost always is)."""
        if self.band_names:
            return tuple(rgb_role(n) for n in self.band_names)
        return RGB_ROLES if self.in_chans == 3 and self.dtype == "uint8" else (None,) * self.in_chans

    @property
    def is_rgb8(self) -> bool:
        """8-bit red, green, blue in that order: images an ImageNet backbone was trained on."""
        return self.dtype == "uint8" and self.rgb_roles == RGB_ROLES

    def sentinel2_bands(self) -> list[str | None]:
        """Per model band, its canonical Sentinel-2 name (None when unknown): from its name (``red``
        is B04), else by its place in EuroSAT's 13-band layout, else by its red, green, blue role."""
        found = []
        for index, band in enumerate(self.bands):
            canonical = sentinel2_band(self.band_names[index]) if self.band_names else None
            if canonical is None and self.band_names is None and self.data_bands == len(EUROSAT_MS_BANDS):
                canonical = EUROSAT_MS_BANDS[band - 1]
            role = self.rgb_roles[index]
            found.append(canonical or (RGB_BANDS[role] if role is not None else None))
        return found

    def match_bands(self, names: Sequence[str | None] | None, count: int) -> BandMatch | None:
        """Where the model's bands are in a file of ``count`` bands named ``names``.

        A file that names its bands is matched by name, in any order: by canonical Sentinel-2 name
        (``B4``, ``red`` and ``B04_10m`` are B04), else by the name as written (ignoring case); a
        model band the names lack is a :class:`DatasetError` naming both, never a guess by position.
        Only a file that names no band is read by position: the training data's layout, or exactly
        the model's bands in its order (None when neither fits).
        """
        if not any(n and n.strip() for n in names or ()):
            return self._by_position(count)
        positions = [_find_band(names, wanted, canonical) for wanted, canonical in self._wanted_bands()]
        if None in positions:
            raise DatasetError(
                f"the file's bands ({', '.join(n or 'unnamed' for n in names)}) do not hold the model's "
                f"({', '.join(self._described_bands())}), by name in any order; name the bands as the model "
                "does, or leave them unnamed to be read by position"
            )
        return BandMatch([p for p in positions if p is not None], by_position=False)

    def _by_position(self, count: int) -> BandMatch | None:
        if count == self.data_bands:
            return BandMatch([b - 1 for b in self.bands], by_position=True)
        if count == self.in_chans:
            return BandMatch(list(range(count)), by_position=True)
        return None

    def _wanted_bands(self) -> list[tuple[str | None, str | None]]:
        """Per model band: its name as written (None when unnamed) and its Sentinel-2 name."""
        written = self.band_names or (None,) * self.in_chans
        return list(zip(written, self.sentinel2_bands(), strict=True))

    def _described_bands(self) -> list[str]:
        """``red (B04)``, ``B08``, ``band 4``: each model band as the error messages show it."""
        shown = []
        for label, canonical in zip(self.shown_bands(), self.sentinel2_bands(), strict=True):
            if canonical in (None, label):
                shown.append(label)
            else:  # an unnamed band is only its Sentinel-2 name; a named one keeps its own
                shown.append(canonical if self.band_names is None else f"{label} ({canonical})")
        return shown

    def shown_bands(self) -> list[str]:
        return band_labels(self.band_names, self.in_chans) if self.band_names else [f"band {b}" for b in self.bands]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataSpec:
        def tuple_or_none(key: str, kind: type) -> tuple | None:
            value = data.get(key)
            return None if value is None else tuple(kind(v) for v in value)

        return cls(
            classes=tuple(str(c) for c in data["classes"]),
            bands=tuple(int(b) for b in data["bands"]),
            band_names=tuple_or_none("band_names", str),
            dtype=str(data["dtype"]),
            patch_size=None if data.get("patch_size") is None else int(data["patch_size"]),
            mean=tuple_or_none("mean", float),
            std=tuple_or_none("std", float),
            data_bands=int(data.get("data_bands", max(int(b) for b in data["bands"]))),
        )

    @classmethod
    def eurosat_rgb(cls, mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None) -> DataSpec:
        """The official EuroSAT RGB data: ten classes, 8-bit red, green, blue, 64 px, with the band
        statistics a model from scratch needs (tests and benchmarks name it; nothing falls back to it)."""
        return cls(CLASSES, (1, 2, 3), ("red", "green", "blue"), "uint8", IMAGE_SIZE, mean, std)


def _find_band(names: Sequence[str | None], written: str | None, canonical: str | None) -> int | None:
    """The position of the first of ``names`` that is this band: the same Sentinel-2 band, or the
    same name as written (ignoring case and surrounding spaces)."""
    folded = written.strip().casefold() if written else None
    for position, name in enumerate(names):
        if not name:
            continue
        if (canonical is not None and sentinel2_band(name) == canonical) or name.strip().casefold() == folded:
            return position
    return None


DATASET_KEYS = ("classes", "bands", "band_names", "dtype", "image_size")


def data_spec(
    info: Mapping[str, Any],
    stats: Mapping[str, Any],
    selection: Sequence[str | int],
    band_names: Sequence[str] = (),
) -> DataSpec:
    """The spec of a training run: dataset.json (``info``), the band statistics, ``bands`` and
    ``band_names`` (names for data whose files do not name their bands)."""
    missing = [key for key in DATASET_KEYS if key not in info]
    if missing:
        raise DatasetError(
            f"dataset.json has no {', '.join(missing)}: it was written by an older download stage; "
            "run `dvc repro download`."
        )
    count = int(info["bands"])
    names = named_bands(info["band_names"], band_names, count)
    chosen = resolve_bands(selection, names, count)
    per_band = stats.get("bands", [])
    if len(per_band) != count:
        raise DatasetError(
            f"the band statistics cover {len(per_band)} band(s) but the data has {count}: they are stale; "
            "run `dvc repro split`."
        )
    return DataSpec(
        classes=tuple(info["classes"]),
        bands=tuple(i + 1 for i in chosen),
        band_names=tuple(names[i] for i in chosen) if names else None,
        dtype=str(info["dtype"]),
        patch_size=info["image_size"],
        mean=tuple(float(per_band[i]["mean"]) for i in chosen),
        std=tuple(float(per_band[i]["std"]) for i in chosen),
        data_bands=count,
    )


def named_bands(found: Sequence[str] | None, given: Sequence[str], count: int) -> Sequence[str] | None:
    """The data's band names: the ``band_names`` param where it gives them (one per band, for files
    that name none), else what the files say. Names that contradict the files' own are refused."""
    if not given:
        return found
    if len(given) != count:
        raise ConfigError(
            f"key 'band_names': gives {len(given)} name(s) ({', '.join(given)}) but the data has {count} band(s); "
            f"name every band, in the files' order."
        )
    if found and [n.casefold() for n in found] == [n.casefold() for n in given]:
        return found
    if found:
        raise ConfigError(
            f"key 'band_names': the files already name their bands ({', '.join(found)}), differently; "
            "remove band_names (it is for data whose files name no bands) or fix the files' band descriptions."
        )
    return tuple(given)
