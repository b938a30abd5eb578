"""`make bench` works on a fresh clone: every suite runs end to end (tiny model, no timings checked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .conftest import REPO_ROOT


def smoke_run(script: str, out: Path) -> subprocess.CompletedProcess[str]:
    """``benchmarks/<script> --smoke --out <out>``, which must succeed."""
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / script), "--smoke", "--out", str(out)],
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
    suites = [row["suite"] for row in report["results"]]
    assert suites.count("loader") >= 3 and suites.count("train") == 4 and suites.count("recipe") == 5
    assert all(row["images_per_s"] > 0 for row in report["results"] if "images_per_s" in row)
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
    assert all(row["images_per_s"] > 0 and row["share_of_peak"] > 0 for row in report["results"])
    assert "load average" in result.stdout


def test_map_benchmark_smoke_run_times_whole_commands(tmp_path: Path) -> None:
    out = tmp_path / "map.json"
    smoke_run("map_speed.py", out)
    report = json.loads(out.read_text())
    assert [row["scene"] for row in report["results"]] == ["rgb-smoke", "uint16-smoke"]
    for row in report["results"]:
        assert row["tiles"] > 0 and row["whole_command_s"] > 0 and row["peak_rss_mb"] > 0
        assert {"reading", "classifying", "preview"} <= set(row["phases_s"])


def test_phase2_profile_smoke_run_compares_the_pipeline_step_with_the_bare_one(tmp_path: Path) -> None:
    out = tmp_path / "phase2.json"
    result = smoke_run("phase2_profile.py", out)
    report = json.loads(out.read_text())
    assert all(rate > 0 for rate in report["images_per_s"].values())
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
