"""Speed of the input pipeline and of training, against the original recipe's per-sample loader.

    python benchmarks/run.py                      # CPU suites, real EuroSAT if ../shared has it
    python benchmarks/run.py --suites recipe      # the full 17-epoch recipe (GPU only)
    python benchmarks/run.py --data synthetic     # no real data needed (labelled as synthetic)
    python benchmarks/run.py --smoke              # every suite in seconds on a tiny model (tests)

Prints a Markdown table and writes the same figures as JSON (``--out``). Suites:

- ``loader``: images/s of finished 224 px training batches (flips, jitter, resize, normalise):
  the original per-sample PIL loader with 0 and N worker processes against ours (batched, on the
  CPU and, when there is one, on the GPU with the data resident there).
- ``train``: steady-state images/s of real training steps (Lightning, the pipeline's own module)
  in phase 1 (frozen backbone) and phase 2, with either loader.
- ``recipe``: GPU only. Wall time of the whole 17-epoch recipe at 224 px through ``train()``: ours
  with bf16 + channels_last, fp32, and without channels_last; the per-sample loader for one epoch
  (extrapolated to 17), and GPU utilisation sampled during phase 2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from eurosat_pipeline.core.config import Config
from eurosat_pipeline.core.dataspec import DataSpec, data_spec
from eurosat_pipeline.data.dataset import prepare_dataset, read_info
from eurosat_pipeline.data.loading import load_splits
from eurosat_pipeline.data.split import split_archive
from eurosat_pipeline.model.augment import BatchTransform
from eurosat_pipeline.platform.accelerators import choose_precision, resolve_accelerator
from eurosat_pipeline.training.datamodule import EuroSATDataModule
from eurosat_pipeline.training.module import LandUseClassifier
from eurosat_pipeline.training.train import read_band_stats

try:  # imported as benchmarks.run (the tests) or run as a script (its own folder is on sys.path)
    from benchmarks.per_sample import (
        PerSampleClassifier,
        PerSampleDataModule,
        PerSampleImages,
        imagenet_preprocessing,
        read_splits,
    )
except ModuleNotFoundError:
    from per_sample import (
        PerSampleClassifier,
        PerSampleDataModule,
        PerSampleImages,
        imagenet_preprocessing,
        read_splits,
    )

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "eurosat" / "EuroSAT.zip"
BATCH = 64
SMOKE = Config(
    model_name="test_efficientnet",
    pretrained=False,
    image_size=32,
    batch_size=8,
    phase1_epochs=1,
    phase2_epochs=1,
    wandb_mode="disabled",
    tsne_interval=0,
    resume=False,
)


def main() -> None:
    args = _arguments()
    if args.transform_only:
        images = torch.randint(0, 256, (args.transform_only, 3, 64, 64), dtype=torch.uint8)
        print(transform_rate(images, args.image_size, args.batches))
        return
    torch.backends.cudnn.benchmark = True
    cuda = torch.cuda.is_available()
    base = SMOKE if args.smoke else Config(pretrained=False, wandb_mode="disabled", tsne_interval=0, resume=False)
    with tempfile.TemporaryDirectory(prefix="eurosat-bench-") as tmp:
        data, source = _prepare(args.data, Path(tmp), images_per_class=30 if args.smoke else 300)
        results: list[dict[str, Any]] = []
        if "loader" in args.suites:
            results += loader_suite(data, args.batches, cuda, base)
        if "train" in args.suites:
            results += train_suite(data, args.steps, cuda, base)
        if "recipe" in args.suites:
            if cuda or args.smoke:
                results += recipe_suite(data, Path(tmp), base)
            else:
                results.append(_skipped("recipe", "no CUDA device"))
    report = {
        "machine": _machine(),
        "data": source,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "results": results,
    }
    print(_table(report))
    out = Path(args.out or REPO / "benchmarks" / "results" / f"{_machine_tag()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {out}")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data",
        default=str(REAL_DATA) if REAL_DATA.exists() else "synthetic",
        help="EuroSAT zip or folder, or 'synthetic' (default: ../shared/eurosat/EuroSAT.zip if present)",
    )
    parser.add_argument(
        "--suites", default="loader,train,recipe", help="comma-separated: loader, train, recipe (GPU only)"
    )
    parser.add_argument("--batches", type=int, default=30, help="timed batches per loader measurement")
    parser.add_argument("--steps", type=int, default=0, help="timed steps per training measurement (0 = auto)")
    parser.add_argument("--out", help="JSON file to write (default: benchmarks/results/<machine>.json)")
    parser.add_argument("--transform-only", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--image-size", type=int, default=Config().image_size, help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true", help="all suites on a tiny model and data: checks, not figures")
    args = parser.parse_args()
    if args.smoke:
        args.data, args.suites, args.batches, args.steps = "synthetic", "loader,train,recipe", 2, 2
    args.suites = set(args.suites.split(","))
    return args


def _prepare(source: str, root: Path, images_per_class: int) -> tuple[Path, str]:
    data = root / "data"
    info = prepare_dataset(source, data / "eurosat.zip", data / "dataset.json", images_per_class)
    split_archive(data / "eurosat.zip", data / "split.csv", 0.1, 0.1, 42)
    label = f"{info['num_images']} images from {source}" + (" (SYNTHETIC)" if info["synthetic"] else "")
    return data, label


# ----- loader suite -------------------------------------------------------------------------------
def loader_suite(data: Path, batches: int, cuda: bool, base: Config) -> list[dict[str, Any]]:
    config = base
    train = read_splits(data / "eurosat.zip", data / "split.csv", ("train",))["train"]
    rows = []
    for workers in sorted({0, os.cpu_count() or 1}):
        loader = DataLoader(
            PerSampleImages(train, config, imagenet_preprocessing(config.image_size), train=True),
            batch_size=BATCH,
            shuffle=True,
            num_workers=workers,
            persistent_workers=workers > 0,
        )
        rate = _median_rate(lambda loader=loader: _drain(iter(loader), batches), batches * BATCH)
        rows.append(
            {
                "suite": "loader",
                "name": f"original per-sample PIL, num_workers={workers}",
                "device": "cpu",
                "images_per_s": rate,
            }
        )
    images = load_splits(data / "eurosat.zip", data / "split.csv", ("train",), DataSpec.eurosat_rgb())["train"].images
    for device in ["cpu"] + (["cuda"] if cuda else []):
        rate = transform_rate(images.to(device), config.image_size, batches)
        rows.append(
            {"suite": "loader", "name": "ours: decoded once, batched transform", "device": device, "images_per_s": rate}
        )
    # The same transform in a process that did nothing else first: a finished 224 px batch of 64 is
    # 38.5 MB, above glibc's 32 MB mmap cap, and what each one costs depends on the heap's history.
    fresh = subprocess.run(
        [
            sys.executable,
            __file__,
            "--transform-only",
            str(len(images)),
            "--batches",
            str(batches),
            "--image-size",
            str(config.image_size),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    rows.append(
        {
            "suite": "loader",
            "name": "ours: the transform alone, in a fresh process (random pixels)",
            "device": "cpu",
            "images_per_s": float(fresh.stdout.split()[-1]),
        }
    )
    baseline = rows[0]["images_per_s"]
    for row in rows:
        row["vs_original_workers0"] = row["images_per_s"] / baseline
    return rows


def transform_rate(resident: torch.Tensor, image_size: int, batches: int) -> float:
    """images/s of finished training batches made from ``resident`` uint8 images on their device."""
    device = resident.device.type
    transform = BatchTransform(imagenet_preprocessing(image_size)).to(resident.device)

    def run() -> None:
        order = torch.randperm(len(resident), device=resident.device)
        batch = None
        for i in range(batches):
            # Like a training loop, the previous batch is still alive while the next one is made.
            batch = transform(resident[order[i * BATCH : (i + 1) * BATCH]], train=True)  # noqa: F841
        _sync(device)

    return _median_rate(run, batches * BATCH)


def _drain(iterator: Any, batches: int) -> None:
    batch = None
    for _ in range(batches):
        batch = next(iterator)  # noqa: F841 - held like a training loop holds it


def _median_rate(run: Any, images: int, repeats: int = 3) -> float:
    run()  # warm-up: worker start, allocator, cuDNN autotuning
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        rates.append(images / (time.perf_counter() - started))
    return statistics.median(rates)


# ----- train suite --------------------------------------------------------------------------------
class StepTimer(L.Callback):
    """Steady-state images/s between the end of batch ``warmup`` and the end of the last batch."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.started, self.images, self.rate = warmup, 0.0, 0, 0.0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        _sync(pl_module.device.type)
        if batch_idx == self.warmup - 1:
            self.started, self.images = time.perf_counter(), 0
        elif batch_idx >= self.warmup:
            self.images += len(batch[1])
            self.rate = self.images / (time.perf_counter() - self.started)


def train_suite(data: Path, steps: int, cuda: bool, base: Config) -> list[dict[str, Any]]:
    steps = steps or (60 if cuda else 4)
    batch = min(base.batch_size, BATCH if cuda else 16)
    rows = []
    for pipeline in ("per_sample", "device"):
        for phase in (1, 2):
            workers = 0 if pipeline == "device" else (os.cpu_count() or 1)
            config = base.replace(phase1_epochs=1 if phase == 1 else 0, phase2_epochs=1, batch_size=batch)
            rate = _train_rate(
                config, data, steps + 2, warmup=2, per_sample_workers=workers if pipeline == "per_sample" else None
            )
            rows.append(
                {
                    "suite": "train",
                    "name": f"phase {phase}, {pipeline} loader",
                    "device": "cuda" if cuda else "cpu",
                    "batch_size": batch,
                    "precision": _precision(),
                    "images_per_s": rate,
                }
            )
    return rows


def _train_rate(config: Config, data: Path, batches: int, warmup: int, per_sample_workers: int | None = None) -> float:
    """Steady-state training images/s: the pipeline's own module and data module, or with
    ``per_sample_workers`` the original per-sample loader feeding the same module."""
    L.seed_everything(0, verbose=False)
    timer = StepTimer(warmup)
    per_sample = per_sample_workers is not None
    # The data description the train stage would build from the download and split stages.
    spec = data_spec(
        read_info(data / "dataset.json"), read_band_stats(data / "band_stats.json"), config.bands, config.band_names
    )
    classifier = PerSampleClassifier if per_sample else LandUseClassifier
    module = classifier(config.to_dict(), spec.to_dict(), load_pretrained=False)
    module.model.to(memory_format=torch.channels_last)
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=batches,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        precision=_precision(),
        # One device: on a machine with several GPUs Lightning would otherwise take them all and
        # relaunch this whole benchmark once per rank.
        accelerator=_accelerator(),
        devices=1,
    )
    archive, split = data / "eurosat.zip", data / "split.csv"
    datamodule = (
        PerSampleDataModule(archive, split, config, module.model.preprocessing, per_sample_workers)
        if per_sample
        else EuroSATDataModule(archive, split, config, module.model.data, data / "images.npy")
    )
    trainer.fit(module, datamodule=datamodule)
    return timer.rate


def _accelerator() -> str:
    return resolve_accelerator("auto")


def _precision() -> str:
    """What ``precision: auto`` picks for a run on this machine (the train stage's own choice)."""
    return choose_precision("auto", _accelerator()).precision


# ----- recipe suite (GPU) -------------------------------------------------------------------------
def recipe_suite(data: Path, root: Path, base: Config) -> list[dict[str, Any]]:
    from eurosat_pipeline.training.train import TrainPaths, train

    auto = _precision()  # bf16-mixed on Ampere and newer, 16-mixed on 7.x
    variants = [
        (f"ours, {auto}, channels_last", {}, None),
        ("ours, fp32, channels_last", {"precision": "32-true"}, None),
        (f"ours, {auto}, no channels_last", {"channels_last": False}, None),
    ]
    rows = []
    for name, changes, epochs in variants:
        config = base.replace(**changes)
        if epochs:  # too slow for 17 epochs in a benchmark: time one phase-2 epoch and extrapolate
            config = config.replace(phase1_epochs=0, phase1_warmup_epochs=0, phase2_epochs=epochs)
        run_dir = root / f"run-{len(rows)}"
        with GpuSampler() as sampler:
            started = time.perf_counter()
            summary = train(config, TrainPaths.under(data, run_dir / "models", run_dir / "reports"))
            wall = time.perf_counter() - started
        row = {
            "suite": "recipe",
            "name": name,
            "device": "cuda" if torch.cuda.is_available() else "cpu",  # --smoke runs it on a CPU too
            "epochs": summary["epochs"],
            "train_wall_s": wall,
            "gpu_util_mean_pct": sampler.mean(),
            "best_val_acc": summary["best_val_acc"],
        }
        if epochs:
            row["extrapolated_17_epoch_s"] = wall / epochs * 17
        rows.append(row)
    return rows


class GpuSampler:
    """Mean utilisation of the GPU this process trains on (nvidia-smi's figure, through NVML).

    ``torch.cuda.utilization`` maps torch's device 0 to its NVML index through
    ``CUDA_VISIBLE_DEVICES``; NVML's own index 0 would be the machine's first GPU, maybe another job's.
    """

    def __enter__(self) -> GpuSampler:
        self._samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if torch.cuda.is_available():
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            self._samples.append(float(torch.cuda.utilization(torch.cuda.current_device())))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def mean(self) -> float:
        return statistics.fmean(self._samples) if self._samples else float("nan")


# ----- reporting ----------------------------------------------------------------------------------
def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _skipped(suite: str, why: str) -> dict[str, Any]:
    return {"suite": suite, "name": f"skipped: {why}", "device": "-"}


def _machine() -> dict[str, Any]:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _machine_tag() -> str:
    machine = _machine()
    gpu = machine["gpu"]
    return gpu.lower().replace(" ", "-") if gpu else f"cpu-{machine['cpu_cores']}-cores"


def _table(report: dict[str, Any]) -> str:
    lines = [
        f"Data: {report['data']}; machine: {report['machine']}",
        "",
        "| suite | what | device | images/s | vs original (workers=0) | other |",
        "|---|---|---|---:|---:|---|",
    ]
    for row in report["results"]:
        rate = f"{row['images_per_s']:.0f}" if "images_per_s" in row else ""
        ratio = f"{row['vs_original_workers0']:.1f}x" if "vs_original_workers0" in row else ""
        other = ", ".join(
            f"{k}={_fmt(v)}"
            for k, v in row.items()
            if k not in ("suite", "name", "device", "images_per_s", "vs_original_workers0")
        )
        lines.append(f"| {row['suite']} | {row['name']} | {row['device']} | {rate} | {ratio} | {other} |")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()
