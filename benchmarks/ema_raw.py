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

from eurosat_pipeline.model.checkpoints import load_checkpoint

try:  # imported as benchmarks.ema_raw (the tests) or run as a script (its own folder is on sys.path)
    from benchmarks.tta import measure
except ModuleNotFoundError:
    from tta import measure

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
    rows = measure(checkpoint, data, ("test",), VIEWS)
    return {f"test_acc_{row['views']}_views": row["acc"] for row in rows}


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
