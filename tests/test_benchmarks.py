"""`make bench` works on a fresh clone: every suite runs end to end (tiny model, no timings checked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO_ROOT


def smoke_run(script: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``benchmarks/<script> --smoke --out <out> [extra]``, which must succeed."""
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / script), "--smoke", "--out", str(out), *extra],
        capture_output=True,
        text=True,
        env={**os.environ, "WANDB_MODE": "disabled"},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_benchmark_smoke_run_writes_every_suite(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = smoke_run("run.py", out)
    report = json.loads(out.read_text())
    rows = {
        suite: [row for row in report["results"] if row["suite"] == suite] for suite in ("loader", "train", "recipe")
    }
    workers = sorted({0, os.cpu_count() or 1})
    assert [row["name"] for row in rows["loader"]] == [
        *(f"original per-sample PIL, num_workers={n}" for n in workers),
        "ours: decoded once, batched transform",
        "ours: the transform alone, in a fresh process (random pixels)",
    ]
    baseline = rows["loader"][0]["images_per_s"]
    for row in rows["loader"]:  # every ratio is against the original loader with no workers
        assert row["vs_original_workers0"] == pytest.approx(row["images_per_s"] / baseline)
    assert {(row["name"], row["batch_size"]) for row in rows["train"]} == {
        (f"phase {phase}, {loader} loader", 8) for phase in (1, 2) for loader in ("per_sample", "device")
    }
    recipe = {row["name"]: row for row in rows["recipe"]}
    assert len(recipe) == 3 and all(row["epochs"] == 2 and row["device"] == "cpu" for row in recipe.values())
    # On a CPU "auto" is 32-true: the first two variants are one configuration, trained alike.
    assert recipe["ours, 32-true, channels_last"]["best_val_acc"] == recipe["ours, fp32, channels_last"]["best_val_acc"]
    assert "SYNTHETIC" in report["data"]
    assert "| loader | original per-sample PIL, num_workers=0 | cpu |" in result.stdout


def test_cpu_benchmark_smoke_run_measures_every_engine_against_the_peak(tmp_path: Path) -> None:
    out = tmp_path / "cpu.json"
    result = smoke_run("cpu.py", out)
    report = json.loads(out.read_text())
    assert report["peak_gflops"]["fp32"] > 0 and report["peak_gflops"]["bf16"] > 0
    engines = {(row["kind"], row["engine"], row["dtype"]) for row in report["results"]}
    assert ("inference", "pipeline: ONNX Runtime", "fp32") in engines
    assert ("inference", "pipeline: PyTorch", "bf16") in engines and ("train", "pytorch", "bf16") in engines
    native_bf16 = report["machine"]["native_bf16"]
    for row in report["results"]:  # each figure follows from the measured rate and the model's cost
        assert row["gflops_per_s"] == pytest.approx(row["images_per_s"] * row["gflop_per_image"])
        # Emulated bf16 runs on the fp32 units: its limit is the fp32 peak.
        peak = report["peak_gflops"]["bf16" if row["dtype"] == "bf16" and native_bf16 else "fp32"]
        assert row["share_of_peak"] == pytest.approx(row["gflops_per_s"] / peak)
        assert row["emulated"] == (row["dtype"] == "bf16" and not native_bf16), row
    train = [row for row in report["results"] if row["kind"] == "train"]
    full = {row["gflop_per_image"] for row in train if row.get("frozen_stages", 0) == 0}
    frozen = {row["gflop_per_image"] for row in train if row.get("frozen_stages", 0) > 0}
    assert len(full) == 1 and frozen and max(frozen) < min(full), "frozen stages skip their backward pass"
    assert "load average" in result.stdout


def test_map_benchmark_smoke_run_times_whole_commands(map_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "map.json"
    smoke_run("map_speed.py", out, "--checkpoint", str(map_model))  # the suite's tiny model: no second training
    report = json.loads(out.read_text())
    assert [row["scene"] for row in report["results"]] == ["rgb-smoke", "uint16-smoke"]
    for row in report["results"]:
        assert row["tiles"] > 0 and row["peak_rss_mb"] > 0
        assert row["tiles_per_s_whole_command"] == pytest.approx(row["tiles"] / row["whole_command_s"])
        assert {"reading", "classifying", "preview"} <= set(row["phases_s"])
        # The phases are parts of the whole command (each rounded to 0.1 s).
        assert sum(row["phases_s"].values()) <= row["whole_command_s"] + 0.05 * len(row["phases_s"])


def test_stride_benchmark_smoke_run_maps_a_shifted_mosaic_at_each_stride(map_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "stride.json"
    # The suite's tiny map model, not the smoke run's own: training one more took half of this test.
    result = smoke_run("map_stride.py", out, "--checkpoint", str(map_model))
    report = json.loads(out.read_text())
    assert [row["stride"] for row in report["results"]] == [64, 32, 16]
    for row in report["results"]:
        assert 0.0 <= row["pixel_accuracy"] <= 1.0 and row["seconds"] > 0
        assert row["time_vs_64"] == pytest.approx(row["seconds"] / report["results"][0]["seconds"])
    assert "| stride | per-pixel accuracy |" in result.stdout


def test_change_example_smoke_run_scores_the_change_map_against_its_truth(map_model: Path, tmp_path: Path) -> None:
    """Synthetic tiles and the suite's tiny model: the claims are about the bookkeeping (every cell
    of the grid scored once, the cloud excluded, the truth's transitions counted), not the model."""
    result = smoke_run("change_example.py", tmp_path, "--checkpoint", str(map_model))
    report = json.loads((tmp_path / "report.json").read_text())
    true_cells = sum(row["cells"] for row in report["true_transitions"].values())
    assert report["unchanged_cells"] + true_cells + report["excluded_cells"] == report["rows"] * report["cols"]
    assert report["excluded_cells"] == 6  # the cloud's 4 cells and the 2 of its shadow inside the scene
    assert true_cells > 0 and all(0 <= row["found"] <= row["cells"] for row in report["true_transitions"].values())
    assert report["synthetic"] is True and "masked after" in result.stdout


def test_phase2_profile_smoke_run_compares_the_pipeline_step_with_the_bare_one(tmp_path: Path) -> None:
    out = tmp_path / "phase2.json"
    result = smoke_run("phase2_profile.py", out)
    report = json.loads(out.read_text())
    assert list(report["images_per_s"]) == [
        "bare step (forward, backward, AdamW)",
        "pipeline step (the same, in Lightning, with logging)",
        "pipeline step + next batch and its augmentation",
        "the train epoch as the history records it",
    ]
    assert report["step_ms"] > 0 and report["gap_ms"] >= 0
    assert report["cpu"] and "self_cpu_time_total" not in result.stderr
    assert "| bare step (forward, backward, AdamW) |" in result.stdout and "Self CPU" in report["profile"]


def test_gather_benchmark_compares_the_memory_map_with_ram(tmp_path: Path) -> None:
    import numpy as np

    for dtype in ("uint8", "uint16"):
        np.save(tmp_path / f"{dtype}.npy", np.zeros((100, 3, 8, 8), dtype=dtype))
    arrays = [str(tmp_path / "uint8.npy"), str(tmp_path / "uint16.npy")]
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "gather.py"), *arrays], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4 and all("images/s" in line for line in lines)
    assert "uint16  memory map" in lines[2]


def test_tta_benchmark_measures_every_view_count_on_both_splits(map_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "tta.json"
    data = map_model.parents[1] / "data"
    script = str(REPO_ROOT / "benchmarks" / "tta.py")
    result = subprocess.run(
        [sys.executable, script, "--checkpoint", str(map_model), "--data", str(data), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["split"], r["views"]) for r in rows] == [(s, v) for s in ("val", "test") for v in (1, 2, 4, 8)]
    assert all(0 <= r["acc"] <= 1 and r["images"] > 0 and r["seconds"] > 0 for r in rows)
    assert "| test | 8 |" in result.stdout


def test_region_benchmark_smoke_run_times_whole_commands_per_way(map_model: Path, tmp_path: Path) -> None:
    """Two of its four ways (the sequential loop and a Dask LocalCluster: the others differ only in
    --processes), on three tiny scenes of per-band COGs behind a STAC ItemCollection."""
    out = tmp_path / "region.json"
    ways = "sequential,Dask LocalCluster of 2 workers"
    script = [sys.executable, str(REPO_ROOT / "benchmarks" / "region_speed.py"), "--smoke", "--ways", ways]
    result = subprocess.run(
        [*script, "--checkpoint", str(map_model), "--out", str(out)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report["results"]
    assert [row["way"] for row in rows] == ways.split(",") and report["cores"] >= 1 and report["cpu"]
    for row in rows:
        assert row["scenes"] == 3 and row["tiles"] == 3 * 25  # 320 px: 5 x 5 whole tiles, none nodata
        assert row["scenes_per_minute"] == pytest.approx(3 / row["wall_s"] * 60, rel=1e-2)
    assert rows[0]["vs_sequential"] == 1.0
    speed_up = rows[1]["scenes_per_minute"] / rows[0]["scenes_per_minute"]
    assert rows[1]["vs_sequential"] == pytest.approx(speed_up, rel=1e-2)
    assert "| Dask LocalCluster of 2 workers |" in result.stdout


def test_serve_load_benchmark_compares_the_service_with_its_engine(map_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "serve.json"
    script = str(REPO_ROOT / "benchmarks" / "serve_load.py")
    result = subprocess.run(
        [sys.executable, script, "--smoke", "--checkpoint", str(map_model), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {row["server"].split(" (")[0]: row for row in report["results"]}
    assert list(rows) == ["micro-batching", "no batching"]
    for row in rows.values():
        assert row["failed_requests"] == 0 and row["requests"] == 12
        assert 0 < row["p50_ms"] <= row["p99_ms"] and row["rss_mb_end"] > 0
        assert row["ratio_to_engine"] == pytest.approx(row["images_per_s"] / report["engine"]["images_per_s"])
    assert rows["no batching"]["images_per_engine_call"] == 1.0
    assert "| server | p50 | p99 |" in result.stdout and "load average" in result.stdout


def test_augment_cost_benchmark_times_the_transform_with_and_without_turns() -> None:
    script = REPO_ROOT / "benchmarks" / "augment_cost.py"
    result = subprocess.run(
        [sys.executable, str(script), "--sizes", "32", "--batches", "2", "--batch-size", "4"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        f"32 px, random_quarter_turns={turns}" for turns in ("false", "true", "false", "true")
    ]
