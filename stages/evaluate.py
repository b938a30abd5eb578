"""DVC stage: the best checkpoint on the test split; metrics, per-class scores, predictions."""

from __future__ import annotations

import argparse
from pathlib import Path

from eurosat_pipeline.core.config import load_config
from eurosat_pipeline.core.stage import run_stage
from eurosat_pipeline.reporting.evaluation import EvalPaths, evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    for name in ("checkpoint", "archive", "split", "dataset-info", "metrics", "per-class", "confusion"):
        parser.add_argument(f"--{name}", required=True, type=Path)
    parser.add_argument("--images", type=Path, help="the decoded array (default: images.npy beside the archive)")
    args = parser.parse_args()
    config = load_config(args.params)
    metrics = evaluate(EvalPaths(**{k: v for k, v in vars(args).items() if k != "params"}), config.tta_views)
    tta = metrics["test_tta"]
    print(
        f"test accuracy {metrics['test']['acc']:.4f} on {metrics['test']['images']} images; "
        f"{tta['acc']:.4f} with {tta['views']} views averaged"
    )


if __name__ == "__main__":
    run_stage(main)
