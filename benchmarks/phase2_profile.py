"""Where a phase-2 training step's time goes: the bare step against the same step inside the pipeline.

    python benchmarks/phase2_profile.py --data ../shared/eurosat/EuroSAT.zip
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/phase2_profile.py --data ...  # AVX2-only
    python benchmarks/phase2_profile.py --smoke                 # synthetic data, a few steps (tests)

The CPU recipe's phase 2 (``eurosat demo --data``: Lite0, 64 px, batch 64, stem + 2 stages frozen)
on ``--images`` real training images, one epoch through :func:`eurosat_pipeline.training.train.train`
(Lightning, the on-device batch transform, logging, checkpoints, validation), with per-step wall
times taken by a callback: the step itself (forward, backward, AdamW, logging) and the time between
steps (gathering the next batch and its augmentation). Then the bare step (the same model, real
augmented batches, forward + backward + AdamW in a plain loop), and torch's profiler over a few
pipeline steps (the operators that take the time). Run it alone: it prints the load average and
the CPU kind.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from eurosat_pipeline.cli.demo import REAL_DATA_OVERRIDES
from eurosat_pipeline.core.config import config_from_mapping
from eurosat_pipeline.core.records import read_history
from eurosat_pipeline.data.dataset import prepare_dataset
from eurosat_pipeline.data.split import read_split, split_archive, write_split
from eurosat_pipeline.platform.accelerators import cpu_kind
from eurosat_pipeline.training.train import TrainPaths, train

REPO = Path(__file__).resolve().parents[1]


class StepClock(L.Callback):
    """Wall time of each training step, and of the gap before it (next batch and its transform);
    torch's profiler over steps [profile_from, profile_from + profile_steps)."""

    def __init__(self, profile_from: int, profile_steps: int) -> None:
        self.step_seconds: list[float] = []
        self.gap_seconds: list[float] = []
        self.profile_from, self.profile_steps = profile_from, profile_steps
        self.profiler: torch.profiler.profile | None = None
        self._started = self._ended = 0.0
        self._profiling = False
        self.module: Any = None
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._ended:
            self.gap_seconds.append(now - self._ended)
        if batch_idx == self.profile_from:
            self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.profiler.__enter__()
            self._profiling = True
        if len(self.batches) < 8:  # augmented batches for the bare loop
            self.batches.append((batch[0].detach().clone(), batch[1].clone()))
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._ended = time.perf_counter()
        self.step_seconds.append(self._ended - self._started)
        if self._profiling and batch_idx == self.profile_from + self.profile_steps - 1:
            self._stop_profiler()
        self.module = pl_module

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if self._profiling:
            self._stop_profiler()

    def _stop_profiler(self) -> None:
        self.profiler.__exit__(None, None, None)  # type: ignore[union-attr]
        self._profiling = False


def bare_step_seconds(module: Any, batches: list[tuple[torch.Tensor, torch.Tensor]], steps: int) -> float:
    """The median time of forward + loss + backward + AdamW on the pipeline's model, nothing else."""
    model, criterion = module.model, module.criterion
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    for frozen in module.frozen_modules:
        frozen.eval()
    times = []
    for step in range(steps + 3):
        images, labels = batches[step % len(batches)]
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        criterion(model(images), labels).backward()
        optimizer.step()
        if step >= 3:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def subset_split(split_csv: Path, train_images: int, val_images: int) -> None:
    """Keep the first ``train_images`` / ``val_images`` of each split (the split is already shuffled)."""
    rows = read_split(split_csv)
    keep = {"train": train_images, "val": val_images, "test": 0}
    counts = dict.fromkeys(keep, 0)
    chosen = []
    for row in rows:
        if counts[row.split] < keep[row.split]:
            counts[row.split] += 1
            chosen.append(row)
    write_split(chosen, split_csv)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="a EuroSAT zip or folder (default with --smoke: synthetic)")
    parser.add_argument("--images", type=int, default=64 * 60, help="training images (one epoch)")
    parser.add_argument("--smoke", action="store_true", help="synthetic data, a few steps: checks the command")
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/phase2-profile-<isa>.json)")
    args = parser.parse_args()
    cpu = cpu_kind()
    load_before = os.getloadavg()
    print(f"CPU: {cpu.describe()}, {os.cpu_count()} cores; load average {load_before[0]:.2f}")
    overrides: dict[str, Any] = {
        **REAL_DATA_OVERRIDES,
        "data_source": str(Path(args.data).resolve()) if args.data else "synthetic",
        "phase1_epochs": 0,  # straight to phase 2: the stem and first two stages stay frozen
        "phase2_epochs": 1,
        "tsne_interval": 0,
        "wandb_mode": "disabled",
        "accelerator": "cpu",
        "resume": False,
    }
    if args.smoke:
        overrides |= {
            "model_name": "test_efficientnet",
            "pretrained": False,
            "pretrained_weights": "",
            "batch_size": 8,
            "image_size": 32,
            "synthetic_images_per_class": 12,
        }
        args.images = 64
    config = config_from_mapping({k: _number(v) for k, v in overrides.items()})
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        paths = TrainPaths.under(root / "data", root / "models", root / "reports")
        prepare_dataset(config.data_source, paths.archive, paths.dataset_info, config.synthetic_images_per_class)
        split_archive(paths.archive, paths.split, 0.1, 0.1, 42)
        subset_split(paths.split, args.images, max(config.batch_size, args.images // 8))
        steps = args.images // config.batch_size
        profile_from = min(5, steps // 2)
        clock = StepClock(profile_from, profile_steps=max(1, min(10, steps - profile_from)))
        started = time.perf_counter()
        train(config, paths, extra_callbacks=[clock])
        epoch_seconds = time.perf_counter() - started
        history_rate = float(read_history(paths.history)[-1]["images_per_s"])
    batch = config.batch_size
    bare = bare_step_seconds(clock.module, clock.batches, steps=min(20, steps))
    step = statistics.median(clock.step_seconds[3:] or clock.step_seconds)
    gap = statistics.median(clock.gap_seconds[3:] or clock.gap_seconds)
    table = clock.profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)  # type: ignore[union-attr]
    rows = {
        "bare step (forward, backward, AdamW)": batch / bare,
        "pipeline step (the same, in Lightning, with logging)": batch / step,
        "pipeline step + next batch and its augmentation": batch / (step + gap),
        "the train epoch as the history records it": history_rate,
    }
    print("| measured | images/s | share of the bare step |\n|---|---:|---:|")
    for name, rate in rows.items():
        print(f"| {name} | {rate:,.0f} | {rate / rows['bare step (forward, backward, AdamW)']:.0%} |")
    print(f"gap between steps: median {gap * 1000:.1f} ms (batch gather + augmentation); step {step * 1000:.0f} ms")
    print(table)
    load_after = os.getloadavg()
    print(f"load average after: {load_after[0]:.2f}; whole train() {epoch_seconds:.0f} s")
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cpu": cpu.model,
        "isa": cpu.isa,
        "isa_caps": {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if k in os.environ},
        "load_average": [load_before[0], load_after[0]],
        "images_per_s": rows,
        "gap_ms": gap * 1000,
        "step_ms": step * 1000,
        "profile": table,
    }
    out = Path(args.out or REPO / "benchmarks" / "results" / f"phase2-profile-{cpu.label}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out}")


def _number(value: Any) -> Any:
    """The demo's overrides are `-S` strings; as params.yaml values they are numbers."""
    if not isinstance(value, str):
        return value
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(value, value)


if __name__ == "__main__":
    main()
