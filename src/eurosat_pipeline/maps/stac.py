"""STAC metadata of the maps (pystac): an Item beside each map (``MAP.json``) so a catalogue can index
it, and a Collection of a region's maps (``collection.json``).

The Item's footprint is the map's in WGS84 (none without a CRS); its id and datetime are the source
STAC item's when the scene came from one, else the map's file name and the time it was made
(``eurosat:datetime_from`` says which). The class map's asset carries the ``classification``
extension (v1.1.0: value, name, colour per class and the nodata value), so a client can draw and
label it without reading the GeoTIFF. Hrefs are relative: the files travel together.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eurosat_pipeline.core.classes import class_colours_of
from eurosat_pipeline.maps.result import NODATA, LandUseMap

if TYPE_CHECKING:
    import pystac


CLASSIFICATION = "https://stac-extensions.github.io/classification/v1.1.0/schema.json"
WGS84 = "EPSG:4326"
COG = "image/tiff; application=geotiff; profile=cloud-optimized"
SETTINGS = (
    "scale",
    "offset",
    "nodata",
    "bands",
    "stride",
    "views",
    "mask",
    "min_confidence",
)  # recorded when the map has them


@dataclass(frozen=True)
class MapRecord:
    """What a map was made from, beyond its pixels: for its STAC Item and its error-adjusted areas."""

    settings: dict[str, Any] = field(default_factory=dict)
    model_sha256: str | None = None
    item: tuple[str, str] | None = None  # the source STAC item's id and ISO datetime
    accuracy: Any = None  # maps.accuracy.ErrorMatrix: the test split's confusion matrix
    reference: Any = None  # maps.accuracy.ReferenceSamples: the user's samples of the mapped area

    @classmethod
    def of(cls, scene: object, settings: object, predictor: object) -> MapRecord:
        """From ``make_map``'s scene, settings and engine (each read by attribute, when it has it)."""
        values = {name: getattr(settings, name) for name in SETTINGS if hasattr(settings, name)}
        values["views"] = getattr(predictor, "views", 1)
        if values.get("bands") is not None:
            values["bands"] = list(values["bands"])
        if values.get("mask") is not None:  # which file (None: the scene's scl asset) and which classes
            values["mask"] = {"file": values["mask"].path, "classes": list(values["mask"].classes)}
        return cls(
            values,
            getattr(predictor, "sha256", None),
            getattr(scene, "item", None),
            getattr(settings, "accuracy", None),
            getattr(settings, "reference", None),
        )


def map_item(result: LandUseMap, files: dict[str, Path], record: MapRecord, made: dt.datetime) -> dict[str, Any]:
    """The map's STAC Item as a dict (see the module's docstring); ``files``: the map's files, keyed as
    ``MapOutputs.named`` keys them."""
    import pystac

    geometry, bbox = footprint(result)
    if record.item is not None:
        item_id, when, origin = record.item[0], parse_time(record.item[1]), "source item"
    else:
        item_id, when, origin = files["tif"].stem, made, "map"
    properties = {
        "eurosat:datetime_from": origin,
        "eurosat:model_sha256": record.model_sha256,
        "eurosat:settings": record.settings,
        "eurosat:map_cell_pixels": getattr(result, "stride", None) or result.tile,
    }
    item = pystac.Item(item_id, geometry, bbox, when, properties, stac_extensions=[CLASSIFICATION])
    item.add_asset("data", _class_asset(files["tif"], result.class_names))
    item.add_asset(
        "overview", pystac.Asset(relative_href(files["png"]), "preview", media_type="image/png", roles=["overview"])
    )
    item.add_asset(
        "areas", pystac.Asset(relative_href(files["csv"]), "areas per class", media_type="text/csv", roles=["metadata"])
    )
    if files.get("confidence") is not None:
        confidence = pystac.Asset(
            relative_href(files["confidence"]), "top-1 probability (%)", media_type=COG, roles=["data"]
        )
        confidence.extra_fields["nodata"] = NODATA
        item.add_asset("confidence", confidence)
    if files.get("clear") is not None:
        clear = pystac.Asset(relative_href(files["clear"]), "clear of the mask (%)", media_type=COG, roles=["data"])
        clear.extra_fields["nodata"] = NODATA
        item.add_asset("clear", clear)
    if files.get("probabilities") is not None:
        bands = [{"name": stac_class_name(name), "description": f"P({name}) x 255"} for name in result.class_names]
        probabilities = pystac.Asset(
            relative_href(files["probabilities"]), "class probabilities (0-255)", media_type=COG, roles=["data"]
        )
        probabilities.extra_fields["bands"] = bands
        item.add_asset("probabilities", probabilities)
    return item.to_dict(include_self_link=False, transform_hrefs=False)


def _class_asset(tif: Path, names: tuple[str, ...]) -> pystac.Asset:
    import pystac

    colours = class_colours_of(names)
    classes = [
        {
            "value": index,
            "name": stac_class_name(name),
            "description": name,
            "color_hint": colours[name].lstrip("#").upper(),
        }
        for index, name in enumerate(names)
    ]
    classes.append({"value": NODATA, "name": "nodata", "description": "not classified", "nodata": True})
    asset = pystac.Asset(relative_href(tif), "land-use classes", media_type=COG, roles=["data"])
    asset.extra_fields |= {"classification:classes": classes, "nodata": NODATA}
    return asset


def stac_class_name(name: str) -> str:
    """The extension's names are letters, digits, ``-`` and ``_``: other characters become ``_``."""
    return "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-_") else "_" for ch in name) or "class"


def relative_href(path: Path) -> str:
    return f"./{path.name}"


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def footprint(result: LandUseMap) -> tuple[dict[str, Any] | None, list[float] | None]:
    """The map's outline and bounds in WGS84; none without a CRS."""
    if result.crs is None:
        return None, None
    from rasterio.warp import transform_geom

    rows, cols = result.classes.shape
    t = result.transform
    corners = [
        (t.c + t.a * c + t.b * r, t.f + t.d * c + t.e * r)
        for c, r in ((0, 0), (cols, 0), (cols, rows), (0, rows), (0, 0))
    ]
    ring = {"type": "Polygon", "coordinates": [[list(xy) for xy in corners]]}
    geometry = transform_geom(result.crs, WGS84, ring, antimeridian_cutting=True)
    geometry = json.loads(json.dumps(geometry))  # plain lists, as JSON holds them
    points = [p for polygon in _polygons(geometry) for p in polygon[0]]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return geometry, [min(xs), min(ys), max(xs), max(ys)]


def _polygons(geometry: dict[str, Any]) -> list[Any]:
    return geometry["coordinates"] if geometry["type"] == "MultiPolygon" else [geometry["coordinates"]]


def write_item(path: Path, item: dict[str, Any]) -> None:
    path.write_text(json.dumps(item, indent=1) + "\n", encoding="utf-8")


def region_collection(collection_id: str, items: Sequence[Path], mosaic: Path | None) -> dict[str, Any]:
    """A STAC Collection linking the maps' Items (``items``: their files, in one folder), its extent
    the union of theirs, and the merged mosaic as an asset when there is one."""
    import pystac

    documents = [json.loads(path.read_text(encoding="utf-8")) for path in items]
    boxes = [d["bbox"] for d in documents if d.get("bbox")]
    bbox = (
        [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]
        if boxes
        else [-180.0, -90.0, 180.0, 90.0]
    )
    times = [parse_time(d["properties"]["datetime"]) for d in documents if d["properties"].get("datetime")]
    interval = [min(times), max(times)] if times else [None, None]
    extent = pystac.Extent(pystac.SpatialExtent([bbox]), pystac.TemporalExtent([interval]))
    collection = pystac.Collection(
        collection_id, f"Land-use maps of {len(documents)} scene(s) made by eurosat map", extent, license="other"
    )
    for path, document in zip(items, documents, strict=True):
        collection.add_link(pystac.Link("item", relative_href(path), pystac.MediaType.JSON, document["id"]))
    if mosaic is not None:
        collection.add_asset(
            "mosaic", pystac.Asset(relative_href(mosaic), "the maps merged", media_type=COG, roles=["data"])
        )
    return collection.to_dict(include_self_link=False, transform_hrefs=False)
