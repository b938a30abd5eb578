"""One EMA run, two models: the average of the weights (what ``best.ckpt`` holds with ``ema_decay``)
against the raw weights of the same epoch (kept beside it, for a resume), on the same test images.

The pair shares everything but the averaging (data, seed, epoch), so it isolates what the EMA adds
(docs/results.md, the frontier). Run it on the workspace of a finished run with ``ema_decay`` set:

  python benchmarks/ema_raw.py                                   # models/best.ckpt on data/
  python benchmarks/ema_raw.py --checkpoint /tmp/run/models/best.ckpt --data /tmp/run/data
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from eurosat_pipeline.data.loading import load_splits
from eurosat_pipeline.model.checkpoints import load_checkpoint, load_classifier
from eurosat_pipeline.model.inference import default_device, predict_logits

REPO = Path(__file__).resolve().parents[1]
VIEWS = (1, 8)


def raw_weights_checkpoint(checkpoint: Path, out: Path) -> Path:
    """A copy of ``checkpoint`` whose weights are the raw ones it keeps beside the average."""
    stored = load_checkpoint(checkpoint)
    if "current_model_state" not in stored:
        raise SystemExit(f"{checkpoint}: no raw weights beside the average (was ema_decay set, and phase 2 reached?)")
    stored["state_dict"] = stored.pop("current_model_state")
    torch.save(stored, out)
    return out


def accuracies(checkpoint: Path, data: Path) -> dict[str, float]:
    model, _ = load_classifier(checkpoint)
    test = load_splits(data / "eurosat.zip", data / "split.csv", ("test",), model.data, data / "images.npy")["test"]
    device = default_device()
    found = {}
    for views in VIEWS:
        predicted = predict_logits(model, test, device, views=views).argmax(dim=1)
        found[f"test_acc_{views}_views"] = (predicted == test.labels).float().mean().item()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=REPO / "models" / "best.ckpt")
    parser.add_argument("--data", type=Path, default=REPO / "data", help="eurosat.zip, split.csv, images.npy")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        raw = raw_weights_checkpoint(args.checkpoint, Path(folder) / "raw.ckpt")
        result: dict[str, Any] = {
            "checkpoint": str(args.checkpoint),
            "average": accuracies(args.checkpoint, args.data),
            "raw": accuracies(raw, args.data),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
