"""DVC stage: the self-contained HTML report."""

from __future__ import annotations

import argparse
from pathlib import Path

from eurosat_pipeline.core.stage import run_stage
from eurosat_pipeline.reporting.report import ReportPaths, build_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in (
        "history",
        "train-summary",
        "eval-metrics",
        "per-class",
        "lr-dir",
        "tsne",
        "split",
        "out",
        "model-card",
        "checkpoint",
    ):
        parser.add_argument(f"--{name}", required=True, type=Path)
    args = parser.parse_args()
    print(f"report -> {build_report(ReportPaths(**vars(args)))}")


if __name__ == "__main__":
    run_stage(main)
