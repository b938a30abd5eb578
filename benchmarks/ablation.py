"""What the frozen phase buys: four CPU-sized recipes on the real images, same data, split, seed.

Each run is one `eurosat demo --data ...` command (a DVC experiment), executed one after the other
from the repository root; after each, this script copies what it needs from the workspace:

  python benchmarks/ablation.py --data ../shared/eurosat/EuroSAT.zip     # about 40 min on 2 cores
  python benchmarks/ablation.py --table-only                             # table + picture again

It writes benchmarks/results/ablation-cpu.json, prints a Markdown table (test accuracy, macro F1,
training wall time, the command) and draws the validation curves to docs/images/ablation.png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "ablation-cpu.json"
PICTURE = REPO / "docs" / "images" / "ablation.png"
RUNS: dict[str, list[str]] = {
    "two-phase": [],
    "plain-finetune": ["-S", "phase1_epochs=0"],
    "head-only": ["-S", "phase1_epochs=20", "-S", "phase2_epochs=0"],
    "scratch": [
        "-S",
        "pretrained=false",
        "-S",
        "phase1_epochs=0",
        "-S",
        "phase2_lr=3e-3",
        "-S",
        "backbone_lr_scale=1.0",
    ],
}


def command(name: str, data: str) -> list[str]:
    return ["eurosat", "demo", "--data", data, *RUNS[name], "--name", name]


def run_all(data: str) -> dict[str, Any]:
    results = {}
    for name in RUNS:
        argv = command(name, data)
        print("$", " ".join(argv), flush=True)
        subprocess.run([str(Path(sys.executable).parent / argv[0]), *argv[1:]], cwd=REPO, check=True)
        results[name] = collect(REPO, name, data)
    return results


def collect(root: Path, name: str, data: str) -> dict[str, Any]:
    """What one finished run left in the workspace (or in a folder of copies named after it)."""
    summary = json.loads((root / "reports/train/summary.json").read_text())
    metrics = json.loads((root / "reports/eval/metrics.json").read_text())
    history = (root / "reports/train/history.csv").read_text().splitlines()
    header = history[0].split(",")
    rows = [dict(zip(header, map(float, line.split(",")), strict=True)) for line in history[1:]]
    return {
        "command": " ".join(command(name, data)),
        "test_acc": metrics["test"]["acc"],
        "macro_f1": metrics["test"]["macro_f1"],
        "best_val_acc": summary["best_val_acc"],
        "train_wall_seconds": summary["wall_seconds"],
        "phase1_feature_seconds": summary.get("phase1_feature_seconds", 0.0),
        "hardware": summary["hardware"],
        "val_acc_per_epoch": [(int(r["epoch"]), int(r["phase"]), r["val_acc"]) for r in rows],
    }


def table(results: dict[str, Any]) -> str:
    lines = [
        "| run | test accuracy | macro F1 | best val | training wall time | command |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['test_acc']:.2%} | {r['macro_f1']:.4f} | {r['best_val_acc']:.2%} | "
            f"{r['train_wall_seconds'] / 60:.1f} min | `{r['command']}` |"
        )
    return "\n".join(lines)


def picture(results: dict[str, Any], target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=110)
    for name, r in results.items():
        epochs = [e for e, _, _ in r["val_acc_per_epoch"]]
        accuracy = [100 * a for _, _, a in r["val_acc_per_epoch"]]
        axes.plot(epochs, accuracy, marker="o", label=f"{name} (test {r['test_acc']:.1%})")
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation accuracy (%)")
    axes.set_title("Real EuroSAT, 64 px, 2-core CPU: validation accuracy per epoch")
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="EuroSAT zip or folder; runs the four experiments")
    parser.add_argument("--table-only", action="store_true", help=f"only redraw from {RESULTS.name}")
    args = parser.parse_args()
    if args.table_only:
        results = json.loads(RESULTS.read_text())
    elif args.data:
        results = run_all(args.data)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    else:
        parser.error("give --data PATH or --table-only")
    print(table(results))
    picture(results, PICTURE)
    print(f"\nvalidation curves -> {PICTURE.relative_to(REPO)}")


if __name__ == "__main__":
    main()
