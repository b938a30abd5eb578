"""EuroSAT RGB in the other forms users bring: renamed class subsets, PNG, and uint16 GeoTIFF.

For the real-data checks of "Your own data" (docs/your-own-data.md, tests/test_realdata.py): the
pipeline must reach the same accuracy on these as on the JPEGs. Nothing here is committed; the
forms are written to a folder you name.

- ``jpeg``: the JPEGs as they are, in plain class folders (with ``--per-class``: a subset).
- ``renamed``: some classes only, under other folder names, JPEG bytes as they are.
- ``png``: every JPEG decoded with libjpeg-turbo (torchvision, as the pipeline decodes JPEGs) and
  saved as a lossless 8-bit PNG: exactly the same pixels, so the decoded array is identical.
- ``geotiff``: every image as a uint16 GeoTIFF of Sentinel-2 Level-1C digital numbers, the inverse
  of EuroSAT's own stretch (DN 0..2750 -> 1..255): ``DN = round((v - 1) * 2750 / 254)``, 0 where
  ``v`` is 0; bands described as B04, B03, B02.

    python benchmarks/own_data_forms.py --zip ../shared/eurosat/EuroSAT.zip --form geotiff --out /tmp/eurosat-geotiff
"""

from __future__ import annotations

import argparse
import io
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from eurosat_pipeline.maps.mapping import S2_DN_MAX

FORMS = ("jpeg", "renamed", "png", "geotiff")
RENAMED = {"AnnualCrop": "crops", "Forest": "woodland", "Highway": "roads", "Residential": "houses", "SeaLake": "water"}


def members(source: Path, per_class: int | None) -> Iterator[tuple[str, str, bytes]]:
    """``(class, file stem, JPEG bytes)``; at most ``per_class`` of each class, in name order."""
    taken: dict[str, int] = {}
    with zipfile.ZipFile(source) as archive:
        for name in sorted(n for n in archive.namelist() if n.lower().endswith(".jpg")):
            class_name, file_name = name.split("/")[-2:]
            if per_class is not None and taken.get(class_name, 0) >= per_class:
                continue
            taken[class_name] = taken.get(class_name, 0) + 1
            yield class_name, Path(file_name).stem, archive.read(name)


def decoded(jpeg: bytes) -> np.ndarray:
    import torch
    from torchvision.io import decode_jpeg

    return decode_jpeg(torch.frombuffer(bytearray(jpeg), dtype=torch.uint8)).numpy()


def png_of(jpeg: bytes) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(decoded(jpeg).transpose(1, 2, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def reflectance_of(jpeg: bytes) -> np.ndarray:
    """The Level-1C digital numbers EuroSAT's stretch turns into these 8-bit pixels."""
    pixels = decoded(jpeg).astype(np.float64)
    return np.where(pixels >= 1, np.rint((pixels - 1) * S2_DN_MAX / 254), 0).astype(np.uint16)


def geotiff_of(jpeg: bytes) -> bytes:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.io import MemoryFile

    pixels = reflectance_of(jpeg)
    profile = {"driver": "GTiff", "width": 64, "height": 64, "count": 3, "dtype": "uint16"}
    warnings.simplefilter("ignore", NotGeoreferencedWarning)
    with rasterio.Env(GDAL_PAM_ENABLED="NO"), MemoryFile() as memory:
        with memory.open(**{**profile, "width": pixels.shape[2], "height": pixels.shape[1]}) as dst:
            dst.write(pixels)
            for band, name in enumerate(("B04", "B03", "B02"), start=1):
                dst.set_band_description(band, name)
        return memory.read()


def write_form(source: Path, form: str, out: Path, per_class: int | None = None) -> int:
    """Write ``out/<class>/<file>`` in ``form``; returns how many images were written."""
    count = 0
    for class_name, stem, jpeg in members(source, per_class):
        if form == "jpeg":
            target, data = out / class_name / f"{stem}.jpg", jpeg
        elif form == "renamed":
            if class_name not in RENAMED:
                continue
            target, data = out / RENAMED[class_name] / f"{stem}.jpg", jpeg
        elif form == "png":
            target, data = out / class_name / f"{stem}.png", png_of(jpeg)
        else:
            target, data = out / class_name / f"{stem}.tif", geotiff_of(jpeg)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zip", type=Path, default=Path("../shared/eurosat/EuroSAT.zip"))
    parser.add_argument("--form", choices=FORMS, required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder to write the class folders into")
    parser.add_argument("--per-class", type=int, help="at most this many images of each class")
    args = parser.parse_args()
    written = write_form(args.zip, args.form, args.out, args.per_class)
    print(f"{written} images as {args.form} -> {args.out}")


if __name__ == "__main__":
    main()
