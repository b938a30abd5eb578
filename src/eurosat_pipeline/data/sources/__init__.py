"""Data sources, one small module each, behind one interface (:class:`~.base.Source`).

``data_source`` in params.yaml picks one: ``eurosat`` (official RGB download), ``eurosat_ms``
(official 13-band download), ``synthetic`` (offline demo data), or the path of a local folder or
zip with one folder per class (:mod:`.local`).
"""

from __future__ import annotations

from pathlib import Path

from eurosat_pipeline.data.sources import eurosat as official
from eurosat_pipeline.data.sources.base import Source
from eurosat_pipeline.data.sources.eurosat import DownloadSource
from eurosat_pipeline.data.sources.local import LocalSource
from eurosat_pipeline.data.sources.synthetic import SyntheticSource


def source_for(spec: str, synthetic_images_per_class: int = 100) -> Source:
    """The source ``data_source`` names (the official addresses are read now: tests point them elsewhere)."""
    if spec == "synthetic":
        return SyntheticSource(synthetic_images_per_class)
    if spec == "eurosat":
        return DownloadSource(official.EUROSAT_RGB)
    if spec == "eurosat_ms":
        return DownloadSource(official.EUROSAT_MS)
    return LocalSource(Path(spec).expanduser())
