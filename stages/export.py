"""DVC stage: the best checkpoint as ONNX (dynamic batch), verified against PyTorch."""

from __future__ import annotations

import argparse
from pathlib import Path

from eurosat_pipeline.core.stage import run_stage
from eurosat_pipeline.inference.export import export_onnx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("checkpoint", "archive", "split", "out", "report"):
        parser.add_argument(f"--{name}", required=True, type=Path)
    parser.add_argument("--images", type=Path, help="the decoded array (default: images.npy beside the archive)")
    args = parser.parse_args()
    report = export_onnx(args.checkpoint, args.out, args.report, args.archive, args.split, args.images)
    print(
        f"{args.out}: max |logit difference| vs PyTorch {report['max_abs_diff']:.2e} "
        f"({report['max_relative_diff']:.1e} of the logits' scale), same predicted classes"
    )


if __name__ == "__main__":
    run_stage(main)
