"""`make bench` works on a fresh clone: every suite runs end to end (tiny model, no timings checked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .conftest import REPO_ROOT


def test_benchmark_smoke_run_writes_every_suite(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "run.py"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "WANDB_MODE": "disabled"},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    suites = [row["suite"] for row in report["results"]]
    assert suites.count("loader") >= 3 and suites.count("train") == 4 and suites.count("recipe") == 5
    assert all(row["images_per_s"] > 0 for row in report["results"] if "images_per_s" in row)
    assert "SYNTHETIC" in report["data"]
    assert "| loader | original per-sample PIL, num_workers=0 | cpu |" in result.stdout
