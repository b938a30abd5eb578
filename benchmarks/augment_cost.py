"""What random quarter-turns add to the train transform: milliseconds per batch, flips only against
flips and turns, at each input size, each measured twice (alternating, so drift shows).

    python benchmarks/augment_cost.py                 # batch 64, 64 px uint8 -> 64 and 128 px
    python benchmarks/augment_cost.py --sizes 224 --batches 50

Compare the figures with a training step (``images_per_s`` in reports/train/history.csv): at
128 px on a 2-core CPU a step of 64 images takes about 800 ms.
"""

from __future__ import annotations

import argparse
import time

import torch

from eurosat_pipeline.model.augment import BatchTransform
from eurosat_pipeline.model.preprocessing import Preprocessing

# Lite0's own preprocessing, as in the CPU recipes (the transform's cost does not depend on the numbers).
LITE0_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def milliseconds_per_batch(images: torch.Tensor, size: int, turns: bool, batches: int) -> float:
    transform = BatchTransform(Preprocessing(size, *LITE0_MEAN_STD, "bicubic"), quarter_turns=turns, channels_last=True)
    for _ in range(5):  # warm-up
        transform(images, train=True)
    start = time.perf_counter()
    for _ in range(batches):
        transform(images, train=True)
    return (time.perf_counter() - start) * 1000 / batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="model input sizes (px)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=100, help="timed batches per measurement")
    args = parser.parse_args()
    torch.manual_seed(0)
    images = torch.randint(0, 256, (args.batch_size, 3, 64, 64), dtype=torch.uint8)
    for size in args.sizes:
        for turns in (False, True, False, True):
            ms = milliseconds_per_batch(images, size, turns, args.batches)
            print(f"{size} px, random_quarter_turns={str(turns).lower()}: {ms:6.2f} ms a batch of {args.batch_size}")


if __name__ == "__main__":
    main()
