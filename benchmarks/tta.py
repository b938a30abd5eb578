"""Test-time augmentation on a trained run: accuracy and time with 1, 2, 4 and 8 views, no retraining.

The views are the flips and quarter-turns of core/views.py, averaged as the evaluate stage and
`eurosat predict` average them. Run it on the outputs of a real-data run (the workspace after
`eurosat demo --data ../shared/eurosat/EuroSAT.zip`, or any folder with the same layout):

  python benchmarks/tta.py                                   # models/best.ckpt on data/ (the workspace)
  python benchmarks/tta.py --run /tmp/run --data /tmp/data   # a run and its data elsewhere

It prints a Markdown table per split (validation, test) and writes benchmarks/results/tta-<cpu>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from eurosat_pipeline.core.views import VIEW_COUNTS
from eurosat_pipeline.data.loading import load_splits
from eurosat_pipeline.model.checkpoints import load_classifier
from eurosat_pipeline.model.inference import default_device, predict_logits
from eurosat_pipeline.platform.accelerators import cpu_kind

REPO = Path(__file__).resolve().parents[1]


def measure(
    checkpoint: Path, data: Path, splits: tuple[str, ...] = ("val", "test"), view_counts: tuple[int, ...] = VIEW_COUNTS
) -> list[dict[str, Any]]:
    model, _ = load_classifier(checkpoint)
    loaded = load_splits(data / "eurosat.zip", data / "split.csv", splits, model.data, data / "images.npy")
    device = default_device()
    rows = []
    for split in splits:
        images = loaded[split]
        for views in view_counts:
            started = time.perf_counter()
            predicted = predict_logits(model, images, device, views=views).argmax(dim=1)
            seconds = time.perf_counter() - started
            accuracy = (predicted == images.labels).float().mean().item()
            rows.append({"split": split, "views": views, "acc": accuracy, "images": len(images), "seconds": seconds})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| split | views | accuracy | images | seconds |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['split']} | {r['views']} | {r['acc']:.2%} | {r['images']:,} | {r['seconds']:.1f} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=REPO, help="folder with models/best.ckpt (default: the workspace)")
    parser.add_argument("--data", type=Path, default=REPO / "data", help="eurosat.zip, split.csv, images.npy")
    parser.add_argument("--checkpoint", type=Path, help="the checkpoint (default: RUN/models/best.ckpt)")
    parser.add_argument("--splits", default="val,test")
    parser.add_argument("--out", type=Path, help="JSON to write (default: benchmarks/results/tta-<cpu>.json)")
    args = parser.parse_args()
    checkpoint = args.checkpoint or args.run / "models" / "best.ckpt"
    rows = measure(checkpoint, args.data, tuple(args.splits.split(",")))
    kind, load = cpu_kind(), os.getloadavg()[0]
    report = {
        "checkpoint": str(checkpoint),
        "cpu": kind.model,
        "isa": kind.isa,
        "threads": torch.get_num_threads(),
        "load_average_after": load,
        "rows": rows,
    }
    out = args.out or REPO / "benchmarks" / "results" / f"tta-{kind.label}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{checkpoint} on {kind.describe()}, {torch.get_num_threads()} threads; load average {load:.2f} after")
    print(table(rows))


if __name__ == "__main__":
    main()
