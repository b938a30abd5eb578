from __future__ import annotations

import collections
from pathlib import Path

import pytest

from eurosat_pipeline.core.classes import CLASSES
from eurosat_pipeline.core.errors import ConfigError, DatasetError
from eurosat_pipeline.data.split import make_split, read_split, split_archive


def fake_dataset(per_class: dict[str, int]) -> tuple[list[str], list[str]]:
    paths = [f"{name}/{name}_{i}.jpg" for name, n in per_class.items() for i in range(n)]
    return paths, [p.split("/")[0] for p in paths]


def test_split_is_stratified_disjoint_and_complete() -> None:
    counts = {name: 200 + 50 * i for i, name in enumerate(CLASSES)}
    paths, labels = fake_dataset(counts)
    rows = make_split(paths, labels, val_fraction=0.1, test_fraction=0.2, seed=42)
    assert sorted(r.path for r in rows) == sorted(paths)
    per = collections.Counter((r.split, r.label) for r in rows)
    for name, n in counts.items():
        assert per[("val", name)] == pytest.approx(0.1 * n, abs=1)
        assert per[("test", name)] == pytest.approx(0.2 * n, abs=1)
        assert per[("train", name)] + per[("val", name)] + per[("test", name)] == n


def test_split_depends_only_on_its_seed_and_fractions() -> None:
    paths, labels = fake_dataset({name: 40 for name in CLASSES})
    first = make_split(paths, labels, 0.1, 0.1, seed=42)
    assert make_split(paths, labels, 0.1, 0.1, seed=42) == first
    assert make_split(paths, labels, 0.1, 0.1, seed=7) != first


def test_split_file_round_trips_and_is_sorted(prepared_data: Path) -> None:
    rows = read_split(prepared_data / "split.csv")
    assert [r.path for r in rows] == sorted(r.path for r in rows)
    assert (prepared_data / "split.csv").read_text().splitlines()[0] == "path,label,split"
    text = (prepared_data / "split.csv").read_text()
    split_archive(prepared_data / "eurosat.zip", prepared_data / "again.csv", 0.1, 0.1, 42)
    assert (prepared_data / "again.csv").read_text() == text, "same inputs must give the same bytes"


def test_too_few_images_for_the_fractions_is_a_config_error() -> None:
    paths, labels = fake_dataset({name: 3 for name in CLASSES})
    with pytest.raises(ConfigError, match=r"Cannot split 30 images with val_fraction=0\.05"):
        make_split(paths, labels, 0.05, 0.05, seed=1)


def test_tampered_split_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "split.csv"
    path.write_text("path,label,split\nForest/a.jpg,Forest,holdout\n")
    with pytest.raises(DatasetError, match="unknown split or label"):
        read_split(path)
    path.write_text("file,class\n")
    with pytest.raises(DatasetError, match="expected the header path,label,split"):
        read_split(path)
