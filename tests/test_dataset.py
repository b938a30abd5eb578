from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from eurosat_pipeline.core.classes import CLASSES
from eurosat_pipeline.core.errors import DatasetError
from eurosat_pipeline.data.dataset import prepare_dataset, read_archive
from eurosat_pipeline.data.sources import eurosat as official
from eurosat_pipeline.data.sources.eurosat import Download

from .conftest import jpeg_bytes, make_eurosat_folder


def prepare(source: Path | str, out: Path, per_class: int = 12) -> dict:
    return prepare_dataset(str(source), out / "eurosat.zip", out / "dataset.json", per_class)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_synthetic_source_is_complete_labelled_and_deterministic(tmp_path: Path) -> None:
    info = prepare("synthetic", tmp_path / "a", per_class=15)
    prepare("synthetic", tmp_path / "b", per_class=15)
    members = read_archive(tmp_path / "a" / "eurosat.zip")
    assert len(members) == 150
    assert {m.split("/")[0] for m in members} == set(CLASSES)
    assert info["synthetic"] is True and "SYNTHETIC" in info["warning"]
    assert json.loads((tmp_path / "a" / "dataset.json").read_text())["synthetic"] is True
    digest = [hashlib.md5((tmp_path / d / "eurosat.zip").read_bytes()).hexdigest() for d in "ab"]
    assert digest[0] == digest[1], "same source must give the same bytes (and DVC hash)"


def test_local_zip_in_official_layout_is_repacked(tmp_path: Path, eurosat_zip: Path) -> None:
    info = prepare(eurosat_zip, tmp_path / "out")
    members = read_archive(tmp_path / "out" / "eurosat.zip")
    assert "Forest/Forest_1.jpg" in members and len(members) == 30
    assert info["synthetic"] is False
    assert info["source_md5"] == hashlib.md5(eurosat_zip.read_bytes()).hexdigest()
    assert info["class_counts"] == {name: 3 for name in CLASSES}


def test_jpeg_bytes_are_kept_as_they_came(tmp_path: Path, eurosat_folder: Path) -> None:
    prepare(eurosat_folder, tmp_path / "out")
    original = (eurosat_folder / "2750" / "River" / "River_2.jpg").read_bytes()
    assert read_archive(tmp_path / "out" / "eurosat.zip")["River/River_2.jpg"] == original


@pytest.mark.parametrize("prefix", ["", "2750", "EuroSAT/2750"])
def test_local_folder_at_any_depth(tmp_path: Path, prefix: str) -> None:
    source = make_eurosat_folder(tmp_path / "src", per_class=2, prefix=prefix)
    assert prepare(source, tmp_path / "out")["num_images"] == 20


def test_finder_and_macos_litter_is_ignored(tmp_path: Path, eurosat_folder: Path) -> None:
    (eurosat_folder / "2750" / "Forest" / ".DS_Store").write_bytes(b"\0junk")
    assert prepare(eurosat_folder, tmp_path / "out")["num_images"] == 30


def test_class_folders_are_whatever_the_source_has_and_empty_ones_are_named(
    tmp_path: Path, eurosat_folder: Path
) -> None:
    root = eurosat_folder / "2750"
    for image in (root / "River").iterdir():
        image.unlink()
    (root / "River").rmdir()
    (root / "Forest").rename(root / "Forests")
    info = prepare(eurosat_folder, tmp_path / "ok")
    assert info["classes"] == sorted(set(CLASSES) - {"River", "Forest"} | {"Forests"})
    for image in (root / "SeaLake").iterdir():
        image.unlink()
    with pytest.raises(DatasetError) as err:
        prepare(eurosat_folder, tmp_path / "out")
    assert "class folder 'SeaLake' has no images" in str(err.value)


def test_all_bad_images_are_reported_at_once(tmp_path: Path, eurosat_folder: Path) -> None:
    root = eurosat_folder / "2750"
    (root / "Forest" / "Forest_1.jpg").write_bytes(jpeg_bytes(1)[:300])
    (root / "Forest" / "Forest_2.jpg").write_bytes(jpeg_bytes(2, fmt="PNG"))  # a PNG by another name: fine
    (root / "Highway" / "notes.jpg").write_text("not an image")
    (root / "River" / "River_1.jpg").write_bytes(jpeg_bytes(3, size=(128, 64)))  # resized to 64 x 64
    (root / "Pasture" / "Pasture_1.jpg").write_bytes(jpeg_bytes(4, mode="L"))
    (root / "Pasture" / "Pasture_2.jpg").write_bytes(jpeg_bytes(5, mode="CMYK"))
    with pytest.raises(DatasetError) as err:
        prepare(eurosat_folder, tmp_path / "out")
    message = str(err.value)
    assert "4 problem(s)" in message
    assert "2750/Forest/Forest_1.jpg: cannot be decoded" in message
    assert "2750/Highway/notes.jpg: cannot be decoded" in message
    assert "2750/Pasture/Pasture_2.jpg: is a CMYK JPEG" in message
    assert (
        "band counts differ between images (3: 27 image(s); 1: 1 image(s) (e.g. 2750/Pasture/Pasture_1.jpg))" in message
    )
    assert leftovers(tmp_path / "out") == []


def test_long_lists_of_problems_are_capped(tmp_path: Path) -> None:
    source = make_eurosat_folder(tmp_path / "src", per_class=3, prefix="")
    for index, image in enumerate(sorted(source.rglob("*.jpg"))):
        image.write_bytes(b"broken %d" % index)
    with pytest.raises(DatasetError, match=r"30 problem\(s\)(.|\n)*and 10 more"):
        prepare(source, tmp_path / "out")


def test_zip_entry_escaping_the_folder_is_refused(tmp_path: Path, eurosat_zip: Path) -> None:
    with zipfile.ZipFile(eurosat_zip, "a") as archive:
        archive.writestr("2750/Forest/../../../evil.jpg", jpeg_bytes(9))
        archive.writestr("/abs/path.jpg", jpeg_bytes(9))
    with pytest.raises(DatasetError) as err:
        prepare(eurosat_zip, tmp_path / "out")
    assert "2750/Forest/../../../evil.jpg: entry path escapes the archive folder" in str(err.value)
    assert "/abs/path.jpg: entry path escapes" in str(err.value)
    assert not (tmp_path / "evil.jpg").exists() and not (tmp_path / "out" / "eurosat.zip").exists()


def test_symlink_out_of_the_source_folder_is_refused(tmp_path: Path, eurosat_folder: Path) -> None:
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(jpeg_bytes(5))
    os.symlink(secret, eurosat_folder / "2750" / "Forest" / "Forest_99.jpg")
    with pytest.raises(DatasetError, match=r"Forest_99\.jpg: symbolic link points outside the source folder"):
        prepare(eurosat_folder, tmp_path / "out")


def test_symlink_inside_the_source_folder_is_followed(tmp_path: Path, eurosat_folder: Path) -> None:
    target = eurosat_folder / "2750" / "Forest" / "Forest_1.jpg"
    os.symlink(target, eurosat_folder / "2750" / "Forest" / "Forest_99.jpg")
    assert prepare(eurosat_folder, tmp_path / "out")["class_counts"]["Forest"] == 4


def test_truncated_zip_is_a_clear_error(tmp_path: Path, eurosat_zip: Path) -> None:
    truncated = tmp_path / "cut.zip"
    truncated.write_bytes(eurosat_zip.read_bytes()[: eurosat_zip.stat().st_size // 2])
    with pytest.raises(DatasetError, match=r"not a readable zip archive.*truncated or corrupt"):
        prepare(truncated, tmp_path / "out")


def test_corrupt_member_in_zip_is_named(tmp_path: Path, eurosat_folder: Path) -> None:
    archive = tmp_path / "deflated.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as out:
        for path in sorted(eurosat_folder.rglob("*.jpg")):
            out.write(path, path.relative_to(eurosat_folder).as_posix())
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as z:
        info = z.getinfo("2750/Forest/Forest_1.jpg")
    start = info.header_offset + 30 + len(info.filename) + 10
    data[start : start + 40] = bytes(40)
    archive.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"2750/Forest/Forest_1\.jpg: cannot be read from the archive"):
        prepare(archive, tmp_path / "out")


def test_missing_local_source_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"data_source '.*nowhere.zip' does not exist.*'eurosat'"):
        prepare(tmp_path / "nowhere.zip", tmp_path / "out")


def test_failure_keeps_the_previous_output_and_leaves_no_temporaries(tmp_path: Path, eurosat_zip: Path) -> None:
    out = tmp_path / "out"
    prepare("synthetic", out)
    before = (out / "eurosat.zip").read_bytes(), (out / "dataset.json").read_text()
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 nothing else")
    with pytest.raises(DatasetError):
        prepare(broken, out)
    assert ((out / "eurosat.zip").read_bytes(), (out / "dataset.json").read_text()) == before
    assert leftovers(out) == []


@pytest.mark.parametrize("previous", [False, True], ids=["first-run", "rerun"])
def test_a_download_killed_while_storing_the_images_leaves_no_new_description(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, previous: bool
) -> None:
    """dataset.json is written last: a description of images that are not there would be trusted."""
    out = tmp_path / "out"
    if previous:
        prepare("synthetic", out, per_class=3)
    before = (out / "dataset.json").read_bytes() if previous else None
    replace = os.replace

    def killed_at_the_images(src: str | Path, dst: str | Path) -> None:
        if Path(dst).name == "images.npy":
            raise KeyboardInterrupt
        replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_at_the_images)
    with pytest.raises(KeyboardInterrupt):
        prepare("synthetic", out, per_class=4)
    monkeypatch.undo()
    description = out / "dataset.json"
    assert (description.read_bytes() if description.exists() else None) == before
    assert leftovers(out) == []


class QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # torchvision's redirect probe hangs up mid-response; that is expected


@pytest.fixture
def served_zip(tmp_path: Path, eurosat_zip: Path) -> Iterator[tuple[str, str]]:
    """Serve the test zip over HTTP on the loopback interface."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(eurosat_zip.parent))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{eurosat_zip.name}"
        yield url, hashlib.md5(eurosat_zip.read_bytes()).hexdigest()
    finally:
        server.shutdown()
        server.server_close()


def test_official_download_is_verified_and_repacked(
    tmp_path: Path, served_zip: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, md5 = served_zip
    monkeypatch.setattr(official, "EUROSAT_RGB", Download("EuroSAT.zip", url, md5, "eurosat"))
    info = prepare("eurosat", tmp_path / "out")
    assert info["num_images"] == 30 and info["url"] == url and info["source_md5"] == md5
    assert leftovers(tmp_path / "out") == [], "the download's temporary folder must be removed"


def test_official_download_with_wrong_md5_is_refused(
    tmp_path: Path, served_zip: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, md5 = served_zip
    monkeypatch.setattr(official, "EUROSAT_RGB", Download("EuroSAT.zip", url, "0" * 32, "eurosat"))
    with pytest.raises(DatasetError, match=f"has md5 {md5}, expected 0{{32}}"):
        prepare("eurosat", tmp_path / "out")
    assert not (tmp_path / "out" / "eurosat.zip").exists()
    assert leftovers(tmp_path / "out") == []


def test_unreachable_download_says_how_to_work_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    unreachable = Download("EuroSAT.zip", "http://127.0.0.1:9/EuroSAT.zip", official.EUROSAT_RGB.md5, "eurosat")
    monkeypatch.setattr(official, "EUROSAT_RGB", unreachable)
    with pytest.raises(DatasetError, match=r"Could not download EuroSAT.*set data_source to its local path"):
        prepare("eurosat", tmp_path / "out")


def test_official_multispectral_download_is_verified_and_its_bands_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EuroSAT's 13-band release: its zip's layout, 13-band uint16 GeoTIFFs without descriptions."""
    import numpy as np

    from .own_data import tiff_bytes

    served = tmp_path / "served"
    served.mkdir()
    archive = served / "EuroSATallBands.zip"
    base = "ds/images/remote_sensing/otherDatasets/sentinel_2/tif"
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(archive, "w") as out:
        for name in ("Forest", "River", "SeaLake"):
            for number in range(1, 4):
                pixels = rng.integers(1, 4000, size=(13, 16, 16)).astype(np.uint16)
                out.writestr(f"{base}/{name}/{name}_{number}.tif", tiff_bytes(pixels))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = QuietServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{archive.name}"
        md5 = hashlib.md5(archive.read_bytes()).hexdigest()
        monkeypatch.setattr(official, "EUROSAT_MS", Download(archive.name, url, md5, "eurosat_ms"))
        info = prepare("eurosat_ms", tmp_path / "out")
    finally:
        server.shutdown()
        server.server_close()
    assert info["source"] == "eurosat_ms" and info["source_md5"] == md5
    assert info["classes"] == ["Forest", "River", "SeaLake"] and info["dtype"] == "uint16"
    assert info["band_names"] == [
        "B01",
        "B02",
        "B03",
        "B04",
        "B05",
        "B06",
        "B07",
        "B08",
        "B09",
        "B10",
        "B11",
        "B12",
        "B8A",
    ]
    assert leftovers(tmp_path / "out") == []
