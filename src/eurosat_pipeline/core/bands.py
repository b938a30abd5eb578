"""Band names and the ``bands`` param: which of the data's bands the model sees, and which of them
are red, green and blue (those keep their pretrained stem filters, :mod:`eurosat_pipeline.model.stem`).

Names come from the data: a GeoTIFF's band descriptions, the colour interpretation of JPEG and
PNG files (red, green, blue; gray), or EuroSAT's multispectral layout (13 bands without
descriptions, in the order below). ``bands`` selects by name where the data has names, else by
1-based index; an empty list selects every band. Sentinel-2's bands have one canonical name each
(``B04`` for ``B4``, ``red``, ``B04_10m``: :func:`sentinel2_band`), by which a file's bands are
matched to a model's (:meth:`eurosat_pipeline.core.dataspec.DataSpec.match_bands`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from eurosat_pipeline.core.errors import ConfigError

# The official EuroSAT multispectral GeoTIFFs: 13 Sentinel-2 L1C bands, B8A last.
EUROSAT_MS_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A")
# Sentinel-2's bands by their canonical names, with the common names that STAC (eo:common_name)
# and other tools use for them: the one table every reader of band names goes through.
S2_BAND_NAMES: dict[str, tuple[str, ...]] = {
    "B01": ("coastal",),
    "B02": ("blue",),
    "B03": ("green",),
    "B04": ("red",),
    "B05": ("rededge1", "rededge071"),
    "B06": ("rededge2", "rededge075"),
    "B07": ("rededge3", "rededge078"),
    "B08": ("nir",),
    "B8A": ("nir08", "nir narrow"),
    "B09": ("nir09",),
    "B10": ("cirrus",),
    "B11": ("swir16",),
    "B12": ("swir22",),
}
_ALIASES = {alias: band for band, aliases in S2_BAND_NAMES.items() for alias in aliases}
# A band as a word of a file name: B04, B4, B8A (after a start, _, -, . or space; before an end or one of them).
_BAND_WORD = re.compile(r"(?:^|[_\-. ])(B(?:0?[1-9]|1[0-2]|8A))(?=$|[_\-. ])", re.IGNORECASE)
RED, GREEN, BLUE = 0, 1, 2
_ROLES = {
    "red": RED, "r": RED, "b04": RED, "b4": RED,
    "green": GREEN, "g": GREEN, "b03": GREEN, "b3": GREEN,
    "blue": BLUE, "b": BLUE, "b02": BLUE, "b2": BLUE,
}  # fmt: skip


def rgb_role(name: str | None) -> int | None:
    """0, 1, 2 for a band named as red, green, blue (colour names or Sentinel-2's B04, B03, B02)."""
    return None if name is None else _ROLES.get(name.strip().casefold())


def sentinel2_band(name: str | None) -> str | None:
    """``B04`` for ``B04``, ``b4``, ``red`` or ``B04_10m``; None for anything that is not one band of Sentinel-2."""
    if not name:
        return None
    text = name.strip().casefold()
    if text in _ALIASES:
        return _ALIASES[text]
    return band_word_in(name)


def band_word_in(text: str) -> str | None:
    """The one Sentinel-2 band named as a word in ``text`` (a file name: ``T32TPT_..._B04_10m``), or None."""
    words = {_canonical(m) for m in _BAND_WORD.findall(text)}
    return words.pop() if len(words) == 1 else None


def without_band_words(text: str) -> str:
    """``text`` with its band words taken out (what sister files of one scene share)."""
    return _BAND_WORD.sub("", text)


def _canonical(word: str) -> str:
    word = word.upper()
    return word if word == "B8A" or len(word) == 3 else f"B0{word[1]}"


def band_labels(names: Sequence[str] | None, count: int) -> list[str]:
    """How bands are shown: their names, or ``band 1`` .. ``band N``."""
    return list(names) if names else [f"band {i}" for i in range(1, count + 1)]


def resolve_bands(selection: Sequence[str | int], names: Sequence[str] | None, count: int) -> list[int]:
    """0-based indices of the selected bands, in the order given; every entry must exist once."""
    if not selection:
        return list(range(count))
    indices = [_index_of(entry, names, count) for entry in selection]
    repeated = sorted({band_labels(names, count)[i] for i in indices if indices.count(i) > 1})
    if repeated:
        raise ConfigError(f"key 'bands': {', '.join(repeated)} selected more than once.")
    return indices


def _index_of(entry: str | int, names: Sequence[str] | None, count: int) -> int:
    if isinstance(entry, int) and not isinstance(entry, bool):
        if not 1 <= entry <= count:
            raise ConfigError(f"key 'bands': band {entry} does not exist; the data has bands 1..{count} (1-based).")
        return entry - 1
    if names:
        folded = [n.casefold() for n in names]
        if str(entry).casefold() in folded:
            return folded.index(str(entry).casefold())
        raise ConfigError(
            f"key 'bands': '{entry}' is not a band of this data; it has {', '.join(names)} (or give 1-based numbers)."
        )
    raise ConfigError(
        f"key 'bands': '{entry}' is a name, but this data's {count} band(s) have no names "
        f"(no GeoTIFF band descriptions): select them by 1-based number, 1..{count}."
    )
