"""The offline demo: the real DAG as a DVC experiment on synthetic data, sized for a CPU.

It runs ``dvc exp run`` with the overrides below (plus any the user adds), so the demo is an
ordinary experiment that ``dvc exp show`` lists and ``dvc plots`` draws. ``dvc exp run`` rewrites
``params.yaml`` and ``dvc.lock`` in the workspace; the demo puts the user's versions back
afterwards, byte for byte, even when interrupted (and on the next start if it was killed).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from eurosat_pipeline.errors import PipelineError
from eurosat_pipeline.stage import tool_environment

DEMO_OVERRIDES: dict[str, str] = {
    "data_source": "synthetic",
    "synthetic_images_per_class": "100",
    "pretrained": "false",  # no internet needed; from scratch learns the synthetic classes fast
    "image_size": "64",
    "batch_size": "32",
    "phase1_epochs": "1",
    "phase1_warmup_epochs": "0",
    "phase1_lr": "3e-3",
    "phase2_epochs": "4",
    "phase2_lr": "3e-3",
    "backbone_lr_scale": "1.0",
    "tsne_interval": "1",
    "wandb_mode": "offline",
}
PROTECTED = ("params.yaml", "dvc.lock")
BACKUP_DIR = Path(".dvc/tmp/demo-backup")


def demo_args(extra: Sequence[str] = ()) -> list[str]:
    """``-S key=value`` arguments: the demo's overrides, then the user's (which win)."""
    args: list[str] = []
    for key, value in DEMO_OVERRIDES.items():
        args += ["-S", f"{key}={value}"]
    for item in extra:
        args += ["-S", item]
    return args


def run_demo(extra_overrides: Sequence[str] = (), queue: bool = False, name: str | None = None) -> int:
    root = Path.cwd()
    if not (root / "dvc.yaml").is_file() or not (root / ".dvc").is_dir():
        raise PipelineError("Run the demo from the repository root (where dvc.yaml and .dvc/ are).")
    restore_backup(root)
    backup(root)
    # DVC through our thin wrapper: it drops DVC's per-output notice that a fresh clone has no
    # recorded outputs to check out (see dvc_cli); everything else DVC prints still shows.
    command = [sys.executable, "-m", "eurosat_pipeline.dvc_cli", "exp", "run", *demo_args(extra_overrides)]
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
        _print_next_steps(elapsed)
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


def _print_next_steps(elapsed: float) -> None:
    print(
        f"\nDemo finished in {elapsed:.0f} s (SYNTHETIC data, CPU-sized recipe).\n"
        "  report:       reports/report.html   (model card: reports/model_card.md)\n"
        "  checkpoints:  models/checkpoints/   (best: models/best.ckpt, ONNX: models/model.onnx)\n"
        "  test metrics: reports/eval/metrics.json\n"
        "Compare runs:   dvc exp show --only-changed\n"
        "Draw the plots: dvc plots show   (writes dvc_plots/index.html)\n"
        "Your params.yaml and dvc.lock are unchanged. The workspace now holds the demo's outputs, so\n"
        "its row in `dvc exp show` pairs them with your params; the demo's own row has its params.",
        file=sys.stderr,
    )
