"""Gathering training batches: from the memory-mapped images.npy (what training does) against
indexing the same images held in RAM (what it did before the dataset had to fit anywhere).

    python benchmarks/gather.py data/images.npy [more images.npy ...]

Batches of 64 random rows, 400 of them after 20 to warm up (so the page cache holds the file: a
first epoch from a cold disk is bound by the disk instead). 16-bit images become int32 batches in
both, as training gathers them.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from eurosat_pipeline.data.dataset import open_images
from eurosat_pipeline.data.imagefile import as_torch_integers

BATCH, BATCHES, WARMUP = 64, 400, 20


def rate(gather: Callable[[np.ndarray], torch.Tensor], batches: list[np.ndarray]) -> float:
    for rows in batches[:WARMUP]:
        gather(rows)
    started = time.perf_counter()
    for rows in batches:
        gather(rows)
    return len(batches) * BATCH / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("arrays", nargs="+", type=Path, help="images.npy files")
    args = parser.parse_args()
    for path in args.arrays:
        mapped = open_images(path)
        in_ram = as_torch_integers(np.array(mapped))
        rng = np.random.default_rng(0)
        batches = [rng.integers(0, len(mapped), BATCH) for _ in range(BATCHES)]
        ways = {
            "memory map": lambda rows, mapped=mapped: as_torch_integers(mapped[rows]),
            "in RAM": lambda rows, in_ram=in_ram: in_ram.index_select(0, torch.from_numpy(rows)),
        }
        for name, gather in ways.items():
            print(f"{path}  {mapped.dtype}  {name:10s}  {rate(gather, batches):12,.0f} images/s")


if __name__ == "__main__":
    main()
