"""DVC stage: two-phase fine-tuning; writes checkpoints, history, DVCLive metrics and a summary."""

from __future__ import annotations

import argparse
from pathlib import Path

from eurosat_pipeline.core.config import load_config
from eurosat_pipeline.core.stage import run_stage
from eurosat_pipeline.training.train import TrainPaths, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    for name in (
        "archive",
        "split",
        "dataset-info",
        "checkpoints",
        "best",
        "history",
        "summary",
        "live-dir",
        "tsne",
        "scratch",
    ):
        parser.add_argument(f"--{name}", required=True, type=Path)
    parser.add_argument("--weights-info", type=Path, help="the check stage's record of the pretrained weights")
    parser.add_argument("--images", type=Path, help="the decoded array (default: images.npy beside the archive)")
    parser.add_argument("--band-stats", type=Path, help="the split's band statistics (default: beside the split)")
    args = parser.parse_args()
    config = load_config(args.params)
    paths = TrainPaths(**{k: v for k, v in vars(args).items() if k != "params"})
    summary = train(config, paths)
    if summary:
        print(f"best val acc {summary['best_val_acc']:.4f} ({summary['best_checkpoint']}) -> {paths.best}")


if __name__ == "__main__":
    run_stage(main)
