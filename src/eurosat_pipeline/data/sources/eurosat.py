"""EuroSAT's official downloads: RGB (the default data source) and the 13-band multispectral set.

Both come from the pinned revisions torchgeo uses, are checked against their md5 before anything
is read, and are then read like any local zip with one folder per class.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from torchvision.datasets.utils import calculate_md5, download_url

from eurosat_pipeline.core.errors import DatasetError
from eurosat_pipeline.data.sources.base import Listing
from eurosat_pipeline.data.sources.local import open_zip


@dataclass(frozen=True)
class Download:
    """One official archive: its file name, where it is, its md5, and its data_source name."""

    name: str
    url: str
    md5: str
    source: str


EUROSAT_RGB = Download(
    "EuroSAT.zip",
    "https://huggingface.co/datasets/torchgeo/eurosat/resolve/c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip",
    "c8fa014336c82ac7804f0398fcb19387",
    "eurosat",
)
EUROSAT_MS = Download(
    "EuroSATallBands.zip",
    "https://hf.co/datasets/torchgeo/eurosat/resolve/1ce6f1bfb56db63fd91b6ecc466ea67f2509774c/EuroSATallBands.zip",
    "5ac12b3b2557aa56e1826e981e8e200e",
    "eurosat_ms",
)


@dataclass(frozen=True)
class DownloadSource:
    download: Download

    @contextlib.contextmanager
    def open(self, work_dir: Path) -> Iterator[Listing]:
        work_dir.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=".download-", dir=work_dir))
        try:
            zip_path = fetch(self.download, folder)
            description = {
                "source": self.download.source,
                "url": self.download.url,
                "source_md5": self.download.md5,
            }
            with open_zip(zip_path, description) as listing:
                yield listing
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def fetch(download: Download, folder: Path) -> Path:
    """Download into ``folder`` and check the md5; a failure names the address and what to do."""
    zip_path = folder / download.name
    try:
        download_url(download.url, root=str(folder), filename=zip_path.name)
    except (urllib.error.URLError, OSError) as err:
        raise DatasetError(
            f"Could not download {download.name} from {download.url}: {err}. Check the network, or "
            f"download {download.name} elsewhere and set data_source to its local path."
        ) from err
    actual = calculate_md5(zip_path)
    if actual != download.md5:
        raise DatasetError(
            f"The download from {download.url} has md5 {actual}, expected {download.md5}: it is "
            "corrupt or was changed upstream. Run the download stage again; if it keeps "
            f"failing, fetch {download.name} by hand and set data_source to its path."
        )
    return zip_path
