"""A file's bands are matched to the model's by their Sentinel-2 names, in any order; by position
only when the file names none, and never against names that contradict the model's."""

from __future__ import annotations

import pytest

from eurosat_pipeline.core.bands import EUROSAT_MS_BANDS, S2_BAND_NAMES, sentinel2_band
from eurosat_pipeline.core.dataspec import BandMatch, DataSpec
from eurosat_pipeline.core.errors import DatasetError

CLASSES = ("a", "b")


def unnamed_rgb() -> DataSpec:
    """Three unnamed 8-bit bands: red, green, blue (B04, B03, B02) by convention."""
    return DataSpec(CLASSES, (1, 2, 3), None, "uint8", 64)


def unnamed_multispectral() -> DataSpec:
    """All 13 bands of EuroSAT's multispectral GeoTIFFs, which carry no band descriptions."""
    return DataSpec(CLASSES, tuple(range(1, 14)), None, "uint16", 64, data_bands=13)


def rgb_nir() -> DataSpec:
    return DataSpec(CLASSES, (1, 2, 3, 4), ("B04", "B03", "B02", "B08"), "uint16", 64, data_bands=4)


def test_sentinel2_names_have_one_canonical_form() -> None:
    names = ("B04", "b4", "red", "B04_10m", "nir08", "B8A", "T33UUP_2023_B11_20m", "TCI", "B13", None, "")
    assert [sentinel2_band(n) for n in names] == ["B04", "B04", "B04", "B04", "B8A", "B8A", "B11"] + [None] * 4
    assert set(S2_BAND_NAMES) == set(EUROSAT_MS_BANDS)


@pytest.mark.parametrize(
    ("names", "positions"),
    [
        (["B02", "B03", "B04"], [2, 1, 0]),
        (["blue", "green", "red"], [2, 1, 0]),
        (["B4", "B3", "B2"], [0, 1, 2]),
        (["B04_10m", "B02_10m", "B03_10m"], [0, 2, 1]),
    ],
)
def test_an_rgb_models_bands_are_found_by_name_in_any_order(names: list[str], positions: list[int]) -> None:
    assert unnamed_rgb().match_bands(names, 3) == BandMatch(positions, by_position=False)


def test_names_that_do_not_hold_the_models_bands_are_refused_naming_both_lists() -> None:
    with pytest.raises(DatasetError, match=r"the file's bands \(B08, B11, B12\).*the model's.*B04.*B03.*B02"):
        unnamed_rgb().match_bands(["B08", "B11", "B12"], 3)  # no silent fall-back to position


@pytest.mark.parametrize("names", [None, [], [None, None, None], ["", " ", None]])
def test_only_a_file_without_names_is_read_by_position(names: list[str | None] | None) -> None:
    assert unnamed_rgb().match_bands(names, 3) == BandMatch([0, 1, 2], by_position=True)
    assert rgb_nir().match_bands(names, 4) == BandMatch([0, 1, 2, 3], by_position=True)
    assert unnamed_rgb().match_bands(names, 5) is None


def test_a_13_band_model_without_names_finds_shuffled_sentinel2_bands() -> None:
    shuffled = ["B8A", "B12", "B11", "B10", "B09", "B08", "B07", "B06", "B05", "B04", "B03", "B02", "B01"]
    match = unnamed_multispectral().match_bands(shuffled, 13)
    assert match is not None and not match.by_position
    assert [shuffled[i] for i in match.positions] == list(EUROSAT_MS_BANDS)


def test_a_named_model_finds_its_bands_under_their_common_names() -> None:
    assert rgb_nir().match_bands(["red", "green", "blue", "nir"], 4) == BandMatch([0, 1, 2, 3], by_position=False)
    assert rgb_nir().match_bands(["nir", "blue", "green", "red", "swir16"], 5) == BandMatch([3, 2, 1, 0], False)


def test_a_selection_of_the_training_bands_is_found_by_position_in_the_training_layout() -> None:
    """The model takes B08 and B04 of 4 unnamed training bands: a 4-band file without names gives
    them by the training data's layout; a 2-band one as exactly the model's bands."""
    spec = DataSpec(CLASSES, (4, 1), ("B08", "B04"), "uint16", 64, data_bands=4)
    assert spec.match_bands(None, 4) == BandMatch([3, 0], by_position=True)
    assert spec.match_bands(None, 2) == BandMatch([0, 1], by_position=True)
    assert spec.match_bands(["B02", "B03", "B04", "B08"], 4) == BandMatch([3, 2], by_position=False)


def test_names_outside_sentinel2_match_as_written_ignoring_case() -> None:
    spec = DataSpec(CLASSES, (1, 2, 3, 4), ("red", "green", "blue", "band 4"), "uint8", 64, data_bands=4)
    assert spec.match_bands(["Band 4", "blue", "green", "red"], 4) == BandMatch([3, 2, 1, 0], by_position=False)
    with pytest.raises(DatasetError, match=r"the file's bands \(red, green, blue, alpha\)"):
        spec.match_bands(["red", "green", "blue", "alpha"], 4)
