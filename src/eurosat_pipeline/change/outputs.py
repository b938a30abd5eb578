"""The files of a change between two dates, each written to a temporary name and renamed only when
all are complete (as a map's are), and the table the command prints:

- ``CHANGE.tif``: a cloud-optimised GeoTIFF on BEFORE's map grid, uint8 ``from * K + to`` per cell
  for K classes (K at most 15, so every code is below 255), 255 where the cell was not compared; a
  colour table (unchanged cells light grey, changed cells the colour of the class they became) and
  tags naming the coding (``change_coding``) and the classes (``change_classes``: not ``classes``,
  so the file is never read as a land-use map);
- ``CHANGE.csv``: ``from, to, cells, hectares, expected_cells, expected_hectares, stands_out`` per
  transition, the biggest first, then one ``excluded`` row per reason;
- ``CHANGE.png``: the change map beside a bar chart of the main transitions, the change expected
  from classifier error marked on each bar;
- ``CHANGE.json``: a STAC Item: both dates' source items (or map files), the model's sha256, the
  settings, start and end datetimes when both dates come from STAC items; relative hrefs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eurosat_pipeline.change.grid import ChangeError
from eurosat_pipeline.change.table import ChangeTable
from eurosat_pipeline.core.classes import class_colours_of
from eurosat_pipeline.core.errors import MapError
from eurosat_pipeline.core.files import atomic_path, csv_text, writing
from eurosat_pipeline.maps.outputs import cog_writer, rgb_of
from eurosat_pipeline.maps.result import NODATA, LandUseMap
from eurosat_pipeline.maps.stac import CLASSIFICATION, COG, footprint, parse_time, relative_href, stac_class_name

MAX_CLASSES = 15  # 15 x 15 codes fit below the nodata value 255
UNCHANGED = (220, 220, 220, 255)  # light grey
CSV_COLUMNS = ("from", "to", "cells", "hectares", "expected_cells", "expected_hectares", "stands_out")
SHOWN = 12  # transitions in the printed table and the chart


@dataclass(frozen=True)
class ChangeOutputs:
    tif: Path
    csv: Path
    png: Path
    item: Path

    @classmethod
    def for_target(cls, out: str | Path) -> ChangeOutputs:
        out = Path(out)
        if out.suffix.lower() not in (".tif", ".tiff"):
            raise MapError(f"--out {out}: the change map is a GeoTIFF; give a name ending in .tif")
        if out.is_dir():
            raise MapError(f"--out {out}: is a folder; give the change map's file name, e.g. {out / 'change.tif'}")
        return cls(out, out.with_suffix(".csv"), out.with_suffix(".png"), out.with_suffix(".json"))

    def named(self) -> dict[str, Path]:
        return {"tif": self.tif, "csv": self.csv, "png": self.png, "item": self.item}

    def all(self) -> list[Path]:
        return list(self.named().values())


@dataclass(frozen=True)
class DateRecord:
    """One date as its map's STAC Item (``MAP.json``) tells it: the source item's id and datetime
    (else the map's file name and no datetime), the model's sha256 and the settings."""

    id: str
    datetime: str | None
    map_file: str
    model_sha256: str | None = None
    settings: dict[str, Any] | None = None

    @classmethod
    def of_map(cls, tif: Path) -> DateRecord:
        try:
            item = json.loads(tif.with_suffix(".json").read_text(encoding="utf-8"))
            properties = item["properties"]
        except (OSError, ValueError, KeyError, TypeError):
            return cls(tif.stem, None, tif.name)
        from_item = properties.get("eurosat:datetime_from") == "source item"
        return cls(
            str(item.get("id", tif.stem)),
            properties.get("datetime") if from_item else None,
            tif.name,
            properties.get("eurosat:model_sha256"),
            properties.get("eurosat:settings"),
        )

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "datetime": self.datetime, "map": self.map_file}


def check_class_count(names: tuple[str, ...]) -> None:
    """Every ``from * K + to`` code must fit in the change map's byte, below its nodata value."""
    if len(names) > MAX_CLASSES:
        raise ChangeError(
            f"the model has {len(names)} classes: a change code (from * K + to) fits in a byte for at most "
            f"{MAX_CLASSES}"
        )


def write_change(
    table: ChangeTable, codes: np.ndarray, grid: LandUseMap, outputs: ChangeOutputs, dates: tuple[DateRecord, ...]
) -> None:
    """Every output, each to a temporary renamed onto it only when all are written (``grid``: BEFORE's
    map, whose grid the change lies on)."""
    import rasterio

    with contextlib.ExitStack() as stack:
        try:
            temporaries = {key: stack.enter_context(atomic_path(path)) for key, path in outputs.named().items()}
        except OSError as err:
            raise MapError(f"{outputs.tif}: cannot write there ({err.strerror or err})") from err
        with rasterio.Env(GDAL_PAM_ENABLED="NO"), writing(outputs.tif):
            write_change_tif(temporaries["tif"], codes.astype(np.uint8), grid, table.class_names)
        with writing(outputs.csv):
            temporaries["csv"].write_text(csv_text(CSV_COLUMNS, table_rows(table)), encoding="utf-8")
        with writing(outputs.png):
            write_picture(temporaries["png"], table, codes, f"{dates[0].id} -> {dates[1].id}")
        with writing(outputs.item):
            item = change_item(table, grid, outputs, dates)
            temporaries["item"].write_text(json.dumps(item, indent=1) + "\n", encoding="utf-8")


def code_colours(names: tuple[str, ...]) -> dict[int, tuple[int, int, int, int]]:
    """The change map's colour table: unchanged light grey, changed the colour of the class it became."""
    colours = class_colours_of(names)
    k = len(names)
    table = {}
    for i in range(k):
        for j, name in enumerate(names):
            table[i * k + j] = UNCHANGED if i == j else (*rgb_of(colours[name]), 255)
    table[NODATA] = (0, 0, 0, 0)
    return table


def write_change_tif(path: Path, codes: np.ndarray, grid: LandUseMap, names: tuple[str, ...]) -> None:
    """The codes as a COG on BEFORE's grid (overviews by mode: a block's most common code)."""
    with cog_writer(path, codes, (grid.crs, grid.transform), "mode", NODATA) as dst:
        dst.update_tags(
            change_classes=",".join(names),
            change_coding=f"from * {len(names)} + to, class indices in change_classes' order; {NODATA}: not compared",
        )
        dst.write_colormap(1, code_colours(names))


def _number(value: float | None, digits: int = 4) -> float | str:
    return "" if value is None else round(float(value), digits)


def table_rows(table: ChangeTable) -> list[dict[str, Any]]:
    """The CSV's rows: each transition with cells (the biggest first), then the excluded cells by reason."""
    names = table.class_names
    rows = []
    for i, j in table.transitions():
        cells = int(table.counts[i, j])
        expected = None if table.expected is None or i == j else float(table.expected[i, j])
        verdict = table.stands_out(i, j)
        rows.append(
            {
                "from": names[i],
                "to": names[j],
                "cells": cells,
                "hectares": _number(table.hectares(cells)),
                "expected_cells": _number(expected, 2),
                "expected_hectares": _number(None if expected is None else table.hectares(expected)),
                "stands_out": "" if verdict is None else ("yes" if verdict else "no"),
            }
        )
    for reason, cells in table.excluded.items():
        rows.append({"from": "excluded", "to": reason, "cells": cells, "hectares": _number(table.hectares(cells))})
    return rows


def summary(table: ChangeTable, outputs: ChangeOutputs) -> str:
    """What the command prints: the totals, the main transitions beside the change expected from
    error, the excluded cells, the notes and the files."""
    area = (lambda cells: f"{table.hectares(cells):,.1f} ha") if table.cell_m2 else (lambda cells: f"{cells} cells")
    share = table.changed / table.compared if table.compared else 0.0
    lines = [
        f"{table.compared} cell(s) compared ({area(table.compared)}); {table.changed} changed "
        f"({area(table.changed)}, {share:.1%})"
    ]
    changes = table.transitions(changed_only=True)
    if changes:
        lines.append(f"  {'from':<22} {'to':<22} {'observed':>14} {'expected':>14}  stands out")
    for i, j in changes[:SHOWN]:
        expected = "" if table.expected is None else area(float(table.expected[i, j]))
        verdict = {None: "", True: "yes", False: "no"}[table.stands_out(i, j)]
        observed = area(int(table.counts[i, j]))
        lines.append(
            f"  {table.class_names[i]:<22} {table.class_names[j]:<22} {observed:>14} {expected:>14}  {verdict}"
        )
    if len(changes) > SHOWN:
        lines.append(f"  ... {len(changes) - SHOWN} more transition(s) in {outputs.csv}")
    excluded = ", ".join(f"{reason} {cells}" for reason, cells in table.excluded.items() if cells)
    lines.append(f"excluded cells: {excluded or 'none'}")
    lines += [f"note: {note}" for note in table.notes]
    lines.append("wrote " + ", ".join(map(str, outputs.all())))
    return "\n".join(lines)


def write_picture(path: Path, table: ChangeTable, codes: np.ndarray, title: str) -> None:
    """The change map (grey: unchanged, else the colour of the class it became) beside a bar chart of
    the main transitions, each with the change expected from classifier error marked."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.colors import ListedColormap

    names = table.class_names
    k = len(names)
    palette = code_colours(names)
    cmap = ListedColormap([np.array(palette[c]) / 255 for c in range(k * k)]).with_extremes(bad="white")
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5), dpi=100, width_ratios=(1, 1.2))
    left.imshow(np.ma.masked_equal(codes, NODATA), cmap=cmap, vmin=-0.5, vmax=k * k - 0.5, interpolation="nearest")
    left.set_xticks([])
    left.set_yticks([])
    left.set_title("change (light grey: unchanged; else the class it became; white: not compared)", fontsize=9)
    _bars(right, table)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)


def _bars(ax: Any, table: ChangeTable) -> None:
    """The main changes as bars (hectares, else cells), each with its expected-from-error mark."""
    changes = table.transitions(changed_only=True)[:SHOWN][::-1]
    unit = "ha" if table.cell_m2 else "cells"
    value = (lambda cells: table.hectares(cells)) if table.cell_m2 else (lambda cells: cells)
    colours = class_colours_of(table.class_names)
    marks = {True: " *", False: "", None: ""}  # *: more change than classifier error explains
    labels = [f"{table.class_names[i]} -> {table.class_names[j]}{marks[table.stands_out(i, j)]}" for i, j in changes]
    ax.barh(
        range(len(changes)),
        [value(int(table.counts[c])) for c in changes],
        color=[colours[table.class_names[j]] for _, j in changes],
    )
    if table.expected is not None and changes:
        ax.scatter(
            [value(float(table.expected[c])) for c in changes],
            range(len(changes)),
            marker="|",
            s=300,
            c="black",
            label="expected from classifier error",
        )
        ax.legend(fontsize=8, loc="lower right")
    ax.set_yticks(range(len(changes)), labels, fontsize=8)
    ax.set_xlabel(unit)
    title = "main transitions" + (" (*: stands out from classifier error)" if table.expected is not None else "")
    ax.set_title(title if changes else "no change", fontsize=9)


def change_item(
    table: ChangeTable, grid: LandUseMap, outputs: ChangeOutputs, dates: tuple[DateRecord, ...]
) -> dict[str, Any]:
    """The change's STAC Item as a dict (see the module's docstring)."""
    import pystac

    before, after = dates
    geometry, bbox = footprint(grid)
    properties: dict[str, Any] = {
        "eurosat:before": before.as_dict(),
        "eurosat:after": after.as_dict(),
        "eurosat:model_sha256": before.model_sha256,
        "eurosat:settings": before.settings,
        "eurosat:change_coding": f"from * {len(table.class_names)} + to",
        "eurosat:compared_cells": table.compared,
        "eurosat:changed_cells": table.changed,
    }
    when: dt.datetime | None = None
    if before.datetime and after.datetime:
        start, end = sorted((parse_time(before.datetime), parse_time(after.datetime)))
        properties |= {"start_datetime": start.isoformat(), "end_datetime": end.isoformat()}
    else:
        when = dt.datetime.now(dt.timezone.utc)
        properties["eurosat:datetime_from"] = "change"
    item = pystac.Item(f"{before.id}__{after.id}", geometry, bbox, when, properties, stac_extensions=[CLASSIFICATION])
    item.add_asset("data", _code_asset(outputs.tif, table.class_names))
    item.add_asset(
        "table", pystac.Asset(relative_href(outputs.csv), "from-to table", media_type="text/csv", roles=["metadata"])
    )
    item.add_asset(
        "overview",
        pystac.Asset(relative_href(outputs.png), "change picture", media_type="image/png", roles=["overview"]),
    )
    return item.to_dict(include_self_link=False, transform_hrefs=False)


def _code_asset(tif: Path, names: tuple[str, ...]) -> Any:
    import pystac

    palette = code_colours(names)
    classes = []
    for i, before in enumerate(names):
        for j, after in enumerate(names):
            code = i * len(names) + j
            classes.append(
                {
                    "value": code,
                    "name": stac_class_name(f"{before}_to_{after}"),
                    "description": f"{before} -> {after}",
                    "color_hint": "".join(f"{v:02X}" for v in palette[code][:3]),
                }
            )
    classes.append({"value": NODATA, "name": "not_compared", "description": "not compared", "nodata": True})
    asset = pystac.Asset(relative_href(tif), "from-to change codes", media_type=COG, roles=["data"])
    asset.extra_fields |= {"classification:classes": classes, "nodata": NODATA}
    return asset
