"""`eurosat change`: two dates of one place mapped, aligned, cross-tabulated, with the change that
classifier error alone would show. The command's tests compare its table with the two maps as read
back (never with the tiny model's accuracy); the alignment, exclusions and spurious change are
checked on maps built cell by cell, against numbers worked out by hand."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from eurosat_pipeline.change.grid import ChangeError, Footprint, align, check_overlap
from eurosat_pipeline.change.outputs import ChangeOutputs, DateRecord, change_item, check_class_count
from eurosat_pipeline.change.table import (
    ChangeTable,
    cross_tabulate,
    expected_transitions,
    mapped_given_true,
    poisson_tail,
    stands_out,
)
from eurosat_pipeline.cli.main import main as cli
from eurosat_pipeline.core.classes import CLASSES
from eurosat_pipeline.maps.accuracy import ErrorMatrix
from eurosat_pipeline.maps.outputs import read_map
from eurosat_pipeline.maps.result import NODATA, TILE, LandUseMap

from .test_map import UTM33, grid_of_labels, mosaic, read_csv, write_raster
from .test_map_outputs import land_use_map, offline_validator, per_class_csv, validate

__all__ = ["offline_validator"]  # a fixture, used by name

K = len(CLASSES)
ROWS, COLS = 3, 4
ORIGIN = (500_000, 5_300_000)
SWAPPED = [(0, 1), (1, 2), (2, 3)]  # cells whose tile AFTER replaces with another class's


def scene_pair(tiles: dict[str, list[np.ndarray]], folder: Path) -> tuple[Path, Path, np.ndarray]:
    """BEFORE (a mosaic of labelled tiles) and AFTER: the same pixels with the SWAPPED cells' tiles of
    another class, and the last cell empty (nodata 0). Returns both files and AFTER's labels."""
    labels = grid_of_labels(ROWS, COLS, seed=3)
    before = mosaic(tiles, labels)
    after, after_labels = before.copy(), labels.copy()
    for r, c in SWAPPED:
        after_labels[r, c] = (labels[r, c] + 5) % K
        after[:, r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE] = tiles[CLASSES[after_labels[r, c]]][-1]
    before[before == 0] = 1  # 0 is nodata in both files
    after[after == 0] = 1
    after[:, (ROWS - 1) * TILE :, (COLS - 1) * TILE :] = 0
    folder.mkdir(parents=True, exist_ok=True)
    transform = from_origin(*ORIGIN, 10, 10)
    return (
        write_raster(folder / "before.tif", before, transform=transform, nodata=0),
        write_raster(folder / "after.tif", after, transform=transform, nodata=0),
        after_labels,
    )


def crosstab(before: LandUseMap, after: LandUseMap) -> dict[tuple[str, str], int]:
    """The transitions of two maps on one grid, counted here the plain way."""
    both = (before.classes != NODATA) & (after.classes != NODATA)
    found: dict[tuple[str, str], int] = {}
    for i, j in zip(before.classes[both], after.classes[both], strict=True):
        key = (CLASSES[i], CLASSES[j])
        found[key] = found.get(key, 0) + 1
    return found


def run(*args: object) -> int:
    return cli(["change", *map(str, args), "--processes", "0"])


# ---------------------------------------------------------------------------------------------
# The command


def test_a_pair_is_the_cross_tabulation_of_its_two_maps_and_a_rerun_reuses_them(
    map_model: Path,
    synthetic_tiles: dict[str, list[np.ndarray]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    offline_validator: object,
) -> None:
    from rio_cogeo.cogeo import cog_validate

    before, after, _ = scene_pair(synthetic_tiles, tmp_path / "scenes")
    out = tmp_path / "out" / "change.tif"
    accuracy = per_class_csv(tmp_path / "per_class.csv", CLASSES, (np.eye(K, dtype=int) * 8 + 1).tolist())
    arguments = (before, after, "--out", out, "--checkpoint", map_model, "--accuracy", accuracy)
    assert run(*arguments) == 0
    printed = capsys.readouterr().out

    maps = out.parent / "change.maps"
    first, second = read_map(maps / "before.tif"), read_map(maps / "after.tif")
    expected = crosstab(first, second)
    rows = read_csv(out.with_suffix(".csv"))
    transitions = {(r["from"], r["to"]): int(r["cells"]) for r in rows if r["from"] != "excluded"}
    assert transitions == expected
    excluded = {r["to"]: int(r["cells"]) for r in rows if r["from"] == "excluded"}
    assert excluded["nodata after"] == 1 and sum(excluded.values()) == 1  # AFTER's empty corner
    assert sum(transitions.values()) + 1 == ROWS * COLS
    for row in rows:
        if row["from"] not in ("excluded", row["to"]):  # a change: expected from error, and a verdict
            assert float(row["expected_hectares"]) > 0 and row["stands_out"] in ("yes", "no")
            assert float(row["hectares"]) == pytest.approx(int(row["cells"]) * TILE * TILE * 100 / 10_000)

    with rasterio.open(out) as src:
        codes = src.read(1)
        assert src.tags()["change_classes"] == ",".join(CLASSES) and src.nodata == NODATA
        colours = src.colormap(1)
    both = (first.classes != NODATA) & (second.classes != NODATA)
    np.testing.assert_array_equal(codes[both], first.classes[both].astype(int) * K + second.classes[both])
    assert (codes[~both] == NODATA).all()
    # A cell only changes where its tile was swapped (the other cells are the same pixels).
    changed = both & (first.classes != second.classes)
    assert {tuple(map(int, cell)) for cell in np.argwhere(changed)} <= set(SWAPPED)
    assert colours[0] == (220, 220, 220, 255) and colours[1] == (0xFF, 0x7F, 0x0E, 255)  # -> Forest's colour
    assert cog_validate(out) == (True, [], [])

    item = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    validate(item, offline_validator)
    assert item["id"] == "before__after" and item["properties"]["eurosat:before"]["map"] == "before.tif"
    assert item["properties"]["eurosat:model_sha256"] and item["properties"]["eurosat:settings"]["views"] == 1
    assert {a["href"] for a in item["assets"].values()} == {"./change.tif", "./change.csv", "./change.png"}
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert f"{int(changed.sum())} changed" in printed and "excluded cells: nodata after 1" in printed
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporaries left

    stamps = {p.name: p.stat().st_mtime_ns for p in maps.iterdir()}
    assert run(*arguments) == 0
    assert "reused the map(s) of before, after" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in maps.iterdir()} == stamps


def test_an_after_scene_shifted_by_whole_cells_is_aligned_onto_before(
    map_model: Path, synthetic_tiles: dict[str, list[np.ndarray]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = grid_of_labels(ROWS, COLS + 1, seed=5)
    image = mosaic(synthetic_tiles, labels)
    image[image == 0] = 1
    before = write_raster(tmp_path / "early.tif", image[:, :, : COLS * TILE], transform=from_origin(*ORIGIN, 10, 10))
    # AFTER: the same ground one cell (640 m) east, one more cell beyond BEFORE's edge.
    east = from_origin(ORIGIN[0] + TILE * 10, ORIGIN[1], 10, 10)
    after = write_raster(tmp_path / "late.tif", image[:, :, TILE:], transform=east)
    out = tmp_path / "shift.tif"
    assert run(before, after, "--out", out, "--checkpoint", map_model, "--min-overlap", "0.7") == 0
    assert "no expected change from classifier error" in capsys.readouterr().out  # no --accuracy

    first, second = read_map(tmp_path / "shift.maps" / "early.tif"), read_map(tmp_path / "shift.maps" / "late.tif")
    with rasterio.open(out) as src:
        codes = src.read(1)
    assert (codes[:, 0] == NODATA).all()  # BEFORE's first column: outside AFTER
    np.testing.assert_array_equal(codes[:, 1:], first.classes[:, 1:].astype(int) * K + second.classes[:, : COLS - 1])
    excluded = {r["to"]: int(r["cells"]) for r in read_csv(out.with_suffix(".csv")) if r["from"] == "excluded"}
    assert excluded["outside after"] == ROWS


def test_clouds_at_one_date_are_masked_in_its_map_and_counted_as_excluded(
    map_model: Path, synthetic_tiles: dict[str, list[np.ndarray]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before, after, _ = scene_pair(synthetic_tiles, tmp_path / "scenes")
    cells = TILE // 2  # SCL's 20 m pixels per cell side
    scl = np.full((1, ROWS * cells, COLS * cells), 4, dtype=np.uint8)  # vegetation
    scl[:, :cells, :cells] = 9  # cloud, high probability, over cell (0, 0)
    mask = write_raster(tmp_path / "scenes" / "after_scl.tif", scl, transform=from_origin(*ORIGIN, 20, 20))
    out = tmp_path / "clouds.tif"
    assert run(before, after, "--out", out, "--checkpoint", map_model, "--after-mask", mask) == 0
    assert "excluded cells: masked after 1, nodata after 1" in capsys.readouterr().out
    excluded = {r["to"]: int(r["cells"]) for r in read_csv(out.with_suffix(".csv")) if r["from"] == "excluded"}
    assert excluded["masked after"] == 1 and excluded["masked before"] == 0
    with rasterio.open(out) as src:
        assert src.read(1)[0, 0] == NODATA
    assert run(before, after, "--out", out, "--checkpoint", map_model, "--mask", mask) == 2
    assert "one mask file would put one date's clouds on both" in capsys.readouterr().err


def test_scenes_that_do_not_overlap_get_a_one_line_error_and_nothing_is_written(
    map_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = np.full((3, 2 * TILE, 2 * TILE), 100, dtype=np.uint8)
    before = write_raster(tmp_path / "here.tif", image, transform=from_origin(*ORIGIN, 10, 10))
    after = write_raster(tmp_path / "there.tif", image, crs="EPSG:32632", transform=from_origin(*ORIGIN, 10, 10))
    out = tmp_path / "out" / "change.tif"
    assert run(before, after, "--out", out, "--checkpoint", map_model) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith(
        "error: BEFORE here.tif (500000, 5298720, 501280, 5300000 in EPSG:32633)"
    )
    assert "in EPSG:32633) and AFTER there.tif" in error and "in EPSG:32632) overlap by 0%" in error
    assert not out.parent.exists()


def test_the_command_line_form_is_checked_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(["change", "a.tif", "b.tif"]) == 2
    assert "give BEFORE AFTER --out CHANGE.tif" in capsys.readouterr().err
    assert cli(["change", "--pairs", "p.csv", "--out", "x.tif"]) == 2
    assert "--pairs PAIRS.CSV takes --out-dir DIR" in capsys.readouterr().err
    assert cli(["change", "a.tif", "b.tif", "--out", "x.tif", "--min-overlap", "1.5"]) == 2
    assert "--min-overlap 1.5" in capsys.readouterr().err
    assert cli(["change", str(tmp_path / "none.tif"), "b.tif", "--out", str(tmp_path / "c.tif")]) == 2
    assert f"{tmp_path / 'none.tif'}: not found" in capsys.readouterr().err


def test_many_pairs_map_each_scene_once_and_a_failing_pair_fails_alone(
    map_model: Path, synthetic_tiles: dict[str, list[np.ndarray]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scene_pair(synthetic_tiles, tmp_path / "scenes")
    write_raster(
        tmp_path / "scenes" / "far.tif",
        np.full((3, TILE, TILE), 9, dtype=np.uint8),
        transform=from_origin(0, 0, 10, 10),
    )
    pairs = tmp_path / "scenes" / "pairs.csv"
    pairs.write_text("before,after\nbefore.tif,after.tif\nafter.tif,before.tif\nbefore.tif,far.tif\n")
    out = tmp_path / "changes"
    assert (
        cli(
            ["change", "--pairs", str(pairs), "--out-dir", str(out), "--checkpoint", str(map_model), "--processes", "0"]
        )
        == 1
    )
    captured = capsys.readouterr()
    assert "mapping 2 scene(s)" in captured.out  # far.tif's pair fails before mapping
    assert "error: before__far: BEFORE before.tif" in captured.err and "1 of 3 pair(s) failed" in captured.err

    rows = {r["pair"]: r for r in read_csv(out / "changes.csv")}
    assert [rows[p]["status"] for p in ("before__after", "after__before", "before__far")] == ["done", "done", "failed"]
    assert "overlap by 0%" in rows["before__far"]["error"]
    assert sorted(p.name for p in (out / "maps").glob("*.tif") if p.name.count(".") == 1) == ["after.tif", "before.tif"]
    forth, back = (read_csv(out / f"{name}.change.csv") for name in ("before__after", "after__before"))
    there = {(r["from"], r["to"]): r["cells"] for r in forth if r["from"] != "excluded"}
    assert there == {(r["to"], r["from"]): r["cells"] for r in back if r["from"] != "excluded"}
    assert not (out / "before__far.change.tif").exists()


# ---------------------------------------------------------------------------------------------
# Alignment and exclusions, on maps built cell by cell


def on_grid(classes: np.ndarray, crs: str, origin: tuple[float, float], **layers: np.ndarray) -> LandUseMap:
    result = land_use_map(classes, crs=crs)
    result.transform = from_origin(*origin, 640, 640)
    for name, layer in layers.items():
        setattr(result, name, layer.astype(np.uint8))
    return result


def test_a_map_in_another_crs_and_shifted_by_whole_cells_lands_on_the_same_cells() -> None:
    classes = np.arange(20).reshape(4, 5) % K
    before = on_grid(classes, UTM33, (300_000, 5_300_000))
    # ETRS89 / UTM 33N: another CRS, the same ground to well under a cell; the grid two cells east, one south.
    after = on_grid((classes[1:, 2:] + 1) % K, "EPSG:25833", (300_000 + 2 * 640, 5_300_000 - 640))
    pair = align(before, after)
    np.testing.assert_array_equal(pair.after_classes[1:, 2:], (classes[1:, 2:] + 1) % K)
    assert (pair.after_classes[0, :] == NODATA).all() and (pair.after_classes[:, :2] == NODATA).all()
    table, codes = cross_tabulate(pair, None)
    assert table.compared == 9 and table.excluded["outside after"] == 11 and table.changed == 9
    assert codes[1, 2] == classes[1, 2] * K + (classes[1, 2] + 1) % K


def test_masked_uncertain_and_nodata_cells_are_excluded_and_counted_under_their_first_reason() -> None:
    classes = np.zeros((2, 4), dtype=np.uint8)
    before_classes = classes.copy()
    before_classes[0, :2] = NODATA  # (0, 0) masked by clouds, (0, 1) uncertain
    before_confidence = np.where(before_classes == NODATA, NODATA, 90)
    before_confidence[0, 1] = 30
    clear = np.full(classes.shape, 100)
    clear[0, 0] = 10
    before = on_grid(before_classes, UTM33, (300_000, 5_300_000), confidence=before_confidence, clear=clear)
    after_classes = np.ones_like(classes)
    after_classes[:, 0] = NODATA  # masked after too: (0, 0) counts as masked before only
    after_classes[1, 3] = NODATA  # uncertain after
    after_confidence = np.where(after_classes == NODATA, NODATA, 90)
    after_confidence[1, 3] = 20
    after_clear = np.where(after_classes == NODATA, 0, 100)
    after_clear[1, 3] = 100
    after = on_grid(after_classes, UTM33, (300_000, 5_300_000), confidence=after_confidence, clear=after_clear)
    table, _ = cross_tabulate(align(before, after), None)
    assert table.excluded == {
        "masked before": 1,
        "uncertain before": 1,
        "nodata before": 0,
        "outside after": 0,
        "masked after": 1,
        "uncertain after": 1,
        "nodata after": 0,
    }
    assert table.compared == 4 and table.counts[0, 1] == 4
    assert table.compared + sum(table.excluded.values()) == classes.size


def test_two_maps_of_other_classes_or_too_many_classes_are_refused(tmp_path: Path) -> None:
    from eurosat_pipeline.change.grid import check_classes

    first = land_use_map(np.zeros((1, 2)), names=("Forest", "SeaLake"))
    second = land_use_map(np.zeros((1, 2)), names=("SeaLake", "Forest"))
    with pytest.raises(ChangeError, match=r"has the classes Forest, SeaLake but b\.tif has SeaLake, Forest"):
        check_classes(first, second, ("a.tif", "b.tif"))
    with pytest.raises(ChangeError, match="16 classes"):
        check_class_count(tuple(f"c{i}" for i in range(16)))


def test_overlap_is_the_share_of_befores_footprint_and_below_the_minimum_is_refused() -> None:
    before = Footprint("a.tif", (0.0, 0.0, 1000.0, 1000.0), rasterio.crs.CRS.from_string(UTM33))
    after = Footprint("b.tif", (600.0, 0.0, 1600.0, 1000.0), rasterio.crs.CRS.from_string(UTM33))
    assert check_overlap(before, after, 0.4) == pytest.approx(0.4)
    with pytest.raises(ChangeError, match=r"overlap by 40% of BEFORE's footprint, below --min-overlap 0.5"):
        check_overlap(before, after, 0.5)
    with pytest.raises(ChangeError, match=r"b\.tif: has no CRS"):
        check_overlap(before, Footprint("b.tif", after.bounds, None), 0.5)


# ---------------------------------------------------------------------------------------------
# Spurious change, by hand


def test_the_expected_spurious_change_matches_a_two_class_example_worked_by_hand() -> None:
    # Test split, map x reference: of 10 true A, 8 mapped A and 2 mapped B; of 20 true B, 3 A and 17 B.
    matrix = ErrorMatrix(("A", "B"), ((8, 3), (2, 17)), "hand")
    np.testing.assert_allclose(mapped_given_true(np.array(matrix.counts)), [[0.8, 0.15], [0.2, 0.85]])
    # 100 cells compared: mapped A 60, B 40 before; 50, 50 after. Olofsson: p_t = sum_i W_i n_it / n_i.
    # (row A of the matrix: 8, 3 of 11; row B: 2, 17 of 19).
    before_a = 0.6 * 8 / 11 + 0.4 * 2 / 19  # 0.4785
    after_a = 0.5 * 8 / 11 + 0.5 * 2 / 19  # 0.4163
    true_a = (before_a + after_a) / 2  # 0.4474
    true_b = 1 - true_a
    # No real change, errors independent: A -> B where one date errs one way and the other does not.
    by_hand = 100 * (true_a * 0.8 * 0.2 + true_b * 0.15 * 0.85)
    assert by_hand == pytest.approx(14.20395, abs=1e-5)
    expected = expected_transitions(matrix, np.array([60, 40]), np.array([50, 50]))
    np.testing.assert_allclose(expected, [[0.0, by_hand], [by_hand, 0.0]])
    # Stands out where the Poisson tail P(X >= observed | mean E) is below 0.00135 (3 sigma, one-sided).
    tail = 1 - sum(math.exp(-by_hand) * by_hand**x / math.factorial(x) for x in range(28))  # P(X >= 28)
    assert 0.00135 > tail > 0.0005  # ... 28 cells stand out from 14.2 expected, 27 do not:
    assert 1 - sum(math.exp(-by_hand) * by_hand**x / math.factorial(x) for x in range(27)) > 0.00135
    assert stands_out(28, by_hand) and not stands_out(27, by_hand)
    assert poisson_tail(28, by_hand) == pytest.approx(tail, rel=1e-9)


def test_a_single_cell_stands_out_only_where_even_one_is_unlikely() -> None:
    # P(X >= 1) = 1 - e^-E: 8.6 % for E = 0.09 (the normal rule E + 3 sqrt(E) = 0.99 would flag it), 0.1 % for 0.001.
    assert not stands_out(1, 0.09) and stands_out(1, 0.001)
    # P(X >= 2) = 1 - e^-E (1 + E): 0.00121 for E = 0.05, 0.00172 for 0.06.
    assert stands_out(2, 0.05) and not stands_out(2, 0.06)
    assert not stands_out(0, 0.0) and stands_out(1, 0.0) and not stands_out(3, 5.0)


def test_the_table_marks_a_transition_beyond_the_noise_and_says_how_to_get_the_matrix_without_one() -> None:
    counts = np.array([[30, 30], [0, 40]])  # A -> B 30 cells: 60 A and 40 B before, 30 and 70 after
    matrix = ErrorMatrix(("A", "B"), ((8, 3), (2, 17)), "hand")
    expected = expected_transitions(matrix, counts.sum(axis=1), counts.sum(axis=0))
    table = ChangeTable(("A", "B"), counts, {}, 640.0 * 640.0, expected)
    assert poisson_tail(30, expected[0, 1]) < 0.00135
    assert table.stands_out(0, 1) is True and table.stands_out(1, 0) is False and table.stands_out(0, 0) is None
    assert ChangeTable(("A", "B"), counts, {}, None).stands_out(0, 1) is None


def test_the_item_of_two_stac_dates_has_their_start_and_end(tmp_path: Path, offline_validator: object) -> None:
    grid = land_use_map(np.zeros((2, 2)))
    table = ChangeTable(CLASSES, np.zeros((K, K), dtype=int), {}, 640.0 * 640.0)
    dates = (
        DateRecord("S2A_late", "2023-06-12T10:16:03+00:00", "late.tif", "ab" * 32, {"views": 1}),
        DateRecord("S2A_early", "2021-06-12T10:16:03+00:00", "early.tif", "ab" * 32, {"views": 1}),
    )
    item = change_item(table, grid, ChangeOutputs.for_target(tmp_path / "c.tif"), dates)
    validate(item, offline_validator)
    properties = item["properties"]
    assert properties["datetime"] is None and properties["start_datetime"].startswith("2021-06-12")
    assert properties["end_datetime"].startswith("2023-06-12") and item["id"] == "S2A_late__S2A_early"
    classes = {c["value"]: c for c in item["assets"]["data"]["classification:classes"]}
    assert classes[K + 1]["description"] == "Forest -> Forest" and classes[1]["name"] == "AnnualCrop_to_Forest"
    assert dt.datetime.fromisoformat(properties["start_datetime"]) < dt.datetime.fromisoformat(
        properties["end_datetime"]
    )
    assert os.path.basename(item["assets"]["data"]["href"]) == "c.tif"


def test_pairs_on_a_dask_local_cluster_give_the_changes_of_the_maps_it_made(
    map_model: Path, synthetic_tiles: dict[str, list[np.ndarray]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("distributed")
    scene_pair(synthetic_tiles, tmp_path / "scenes")
    pairs = tmp_path / "scenes" / "pairs.csv"
    pairs.write_text("before,after\nbefore.tif,after.tif\n")
    out = tmp_path / "changes"
    command = ["change", "--pairs", str(pairs), "--out-dir", str(out), "--checkpoint", str(map_model)]
    assert cli([*command, "--dask-local", "1"]) == 0
    assert "mapping 2 scene(s): Dask" in capsys.readouterr().out
    first, second = read_map(out / "maps" / "before.tif"), read_map(out / "maps" / "after.tif")
    rows = read_csv(out / "before__after.change.csv")
    assert {(r["from"], r["to"]): int(r["cells"]) for r in rows if r["from"] != "excluded"} == crosstab(first, second)
    assert read_csv(out / "changes.csv")[0]["status"] == "done"
