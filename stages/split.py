"""DVC stage: a stratified, seeded train/val/test split written as a CSV."""

from __future__ import annotations

import argparse
import collections

from eurosat_pipeline.core.config import load_config
from eurosat_pipeline.core.stage import run_stage
from eurosat_pipeline.data.split import split_archive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--archive", required=True)
    parser.add_argument("--out", required=True, help="split CSV to write")
    parser.add_argument("--images", required=True, help="the decoded array the band statistics are read from")
    parser.add_argument("--info", required=True, help="dataset.json (band names)")
    parser.add_argument("--stats", required=True, help="band statistics of the training split to write")
    args = parser.parse_args()
    config = load_config(args.params)
    rows = split_archive(
        args.archive,
        args.out,
        config.val_fraction,
        config.test_fraction,
        config.split_seed,
        images=args.images,
        stats=args.stats,
        info=args.info,
    )
    counts = collections.Counter(row.split for row in rows)
    print(", ".join(f"{name}: {counts[name]}" for name in ("train", "val", "test")))


if __name__ == "__main__":
    run_stage(main)
