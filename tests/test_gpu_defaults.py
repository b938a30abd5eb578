"""What GPU users run, exercised on the CPU: bf16-mixed autocast with channels_last, torch.compile,
and the non-finite-loss check at its GPU cadence (read back every N steps, not every step)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from eurosat_pipeline.core.errors import TrainingError
from eurosat_pipeline.core.records import read_history
from eurosat_pipeline.data.dataset import prepare_dataset
from eurosat_pipeline.data.split import split_archive
from eurosat_pipeline.training.module import NONFINITE_CHECK_EVERY_ON_GPU, LandUseClassifier
from eurosat_pipeline.training.train import TrainPaths, scratch_for, train

from .conftest import tiny_config

STEPS_PER_EPOCH = 6  # 96 synthetic train images (80 % of 120) / batch 16


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gpu-defaults") / "data"
    prepare_dataset(
        "synthetic", folder / "eurosat.zip", folder / "dataset.json", tiny_config().synthetic_images_per_class
    )
    split_archive(folder / "eurosat.zip", folder / "split.csv", 0.1, 0.1, 42)
    return folder


class Inside(L.Callback):
    """Sees, on the first training batch, the dtype the head computes in and the input's layout."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}
        self.handles: list[Any] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        def head_output(module: Any, args: Any, output: torch.Tensor) -> None:
            self.seen.setdefault("head_dtype", output.dtype)

        def backbone_input(module: Any, args: tuple[torch.Tensor, ...]) -> None:
            self.seen.setdefault("channels_last", args[0].is_contiguous(memory_format=torch.channels_last))

        self.handles = [
            pl_module.model.head[1].register_forward_hook(head_output),
            pl_module.model.backbone.register_forward_pre_hook(backbone_input),
        ]
        self.seen["compiled"] = pl_module.model.backbone._compiled_call_impl is not None

    def on_fit_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        for handle in self.handles:
            handle.remove()


def _train(config: Any, data: Path, root: Path, *callbacks: L.Callback) -> tuple[dict[str, Any], TrainPaths]:
    paths = TrainPaths.under(data, root / "models", root / "reports")
    return train(config, paths, extra_callbacks=list(callbacks)), paths


def _healthy(summary: dict[str, Any], paths: TrainPaths, epochs: int) -> None:
    rows = read_history(paths.history)
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in rows)
    assert paths.best.is_file() and not list(paths.scratch.iterdir())  # no resume state once finished
    assert summary["epochs"] == epochs


def test_bf16_mixed_autocast_with_channels_last_trains(data: Path, tmp_path: Path) -> None:
    config = tiny_config(accelerator="cpu", precision="bf16-mixed", channels_last=True)
    inside = Inside()
    summary, paths = _train(config, data, tmp_path, inside)
    assert summary["precision"] == "bf16-mixed"
    assert inside.seen["head_dtype"] == torch.bfloat16  # autocast really ran
    assert inside.seen["channels_last"]
    _healthy(summary, paths, config.max_epochs)


@pytest.mark.slow
def test_torch_compile_trains(data: Path, tmp_path: Path) -> None:
    config = tiny_config(accelerator="cpu", compile=True, phase1_epochs=1, phase2_epochs=1)
    inside = Inside()
    summary, paths = _train(config, data, tmp_path, inside)
    assert inside.seen["compiled"]
    _healthy(summary, paths, config.max_epochs)


class PoisonAndCount(L.Callback):
    """NaN inputs at one step; records the last step that started."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.last_started = -1

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.last_started = trainer.global_step
        if trainer.global_step == self.step:
            batch[0].fill_(float("nan"))


def test_gpu_cadence_of_the_non_finite_check_still_stops_at_the_right_step(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As on a GPU: the flag is read back only every NONFINITE_CHECK_EVERY_ON_GPU steps.
    monkeypatch.setattr(
        LandUseClassifier, "nonfinite_check_interval", lambda self, device: NONFINITE_CHECK_EVERY_ON_GPU
    )
    bad_step = 3 * STEPS_PER_EPOCH + 1  # inside epoch 4
    next_check = -(-bad_step // NONFINITE_CHECK_EVERY_ON_GPU) * NONFINITE_CHECK_EVERY_ON_GPU
    # The step-cadence read comes later, but before the end-of-epoch check would catch it.
    assert bad_step < next_check < 4 * STEPS_PER_EPOCH - 1
    poison = PoisonAndCount(bad_step)
    config = tiny_config(phase1_epochs=1, phase2_epochs=3, accelerator="cpu")
    with pytest.raises(TrainingError, match=rf"non-finite .* at epoch 4, optimizer step {bad_step}\."):
        _train(config, data, tmp_path, poison)
    assert poison.last_started == next_check  # training went on until the deferred read ...
    paths = TrainPaths.under(data, tmp_path / "models", tmp_path / "reports")
    assert not paths.best.exists() and not paths.checkpoints.exists()  # a failed run publishes nothing
    scratch = scratch_for(config, paths)
    epochs = sorted(int(p.name[5:8]) for p in scratch.checkpoints.iterdir())
    assert epochs and max(epochs) <= 3, epochs  # ... and no checkpoint of the broken state exists
    assert torch.load(scratch.last, weights_only=True)["epoch"] + 1 <= 3
    assert [r["epoch"] for r in read_history(paths.history)] == [1, 2, 3]
