"""EMA of the weights (ema_decay): phase 2's average is what validation sees and what is saved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from eurosat_pipeline.core.records import read_history
from eurosat_pipeline.data.dataset import prepare_dataset
from eurosat_pipeline.data.split import split_archive
from eurosat_pipeline.model.checkpoints import load_checkpoint
from eurosat_pipeline.training.train import TrainPaths, train

from .conftest import tiny_config


class WeightsProbe(L.Callback):
    """The weights validation sees (after the average is swapped in) and the raw ones, per epoch."""

    def __init__(self) -> None:
        self.validated: dict[int, dict[str, torch.Tensor]] = {}
        self.raw: dict[int, dict[str, torch.Tensor]] = {}

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self.validated[trainer.current_epoch + 1] = _copy(pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.raw[trainer.current_epoch + 1] = _copy(pl_module)


def _copy(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def _train(root: Path, ema_decay: float) -> tuple[TrainPaths, WeightsProbe]:
    config = tiny_config(ema_decay=ema_decay, phase1_epochs=1, phase2_epochs=2)
    data = root / "data"
    prepare_dataset("synthetic", data / "eurosat.zip", data / "dataset.json", config.synthetic_images_per_class)
    split_archive(
        data / "eurosat.zip", data / "split.csv", config.val_fraction, config.test_fraction, config.split_seed
    )
    paths = TrainPaths.under(data, root / "models", root / "reports")
    probe = WeightsProbe()
    train(config, paths, extra_callbacks=[probe])
    return paths, probe


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[TrainPaths, WeightsProbe]]:
    return {
        "plain": _train(tmp_path_factory.mktemp("plain"), 0.0),
        "ema": _train(tmp_path_factory.mktemp("ema"), 0.5),
    }


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_phase1_is_untouched_and_phase2_validates_the_average(runs: dict[str, Any]) -> None:
    plain, ema = (read_history(runs[name][0].history) for name in ("plain", "ema"))
    # Phase 1 validates the weights it trained (not the average's setup-time copy): same row.
    assert ema[0]["val_loss"] == plain[0]["val_loss"] and ema[0]["train_loss"] == plain[0]["train_loss"]
    probe = runs["ema"][1]
    assert _same(probe.validated[1], probe.raw[1])
    for epoch in (2, 3):  # phase 2: validation sees the average, not the raw weights
        assert not _same(probe.validated[epoch], probe.raw[epoch])
    assert ema[2]["val_loss"] != plain[2]["val_loss"]


def test_checkpoints_hold_the_average_and_the_raw_weights_to_resume(runs: dict[str, Any]) -> None:
    paths, probe = runs["ema"]
    (last_epoch,) = paths.checkpoints.glob("best-003-*.ckpt")
    checkpoint = load_checkpoint(last_epoch)
    saved = {k: v for k, v in checkpoint["state_dict"].items()}
    validated = {k: v for k, v in probe.validated[3].items() if k in saved}
    assert _same(saved, validated)  # what validation scored is what the checkpoint holds
    raw = {k: v for k, v in probe.raw[3].items() if k in checkpoint["current_model_state"]}
    assert _same(checkpoint["current_model_state"], raw)
    (first_epoch,) = paths.checkpoints.glob("best-001-*.ckpt")
    assert "current_model_state" not in load_checkpoint(first_epoch)  # phase 1: no average yet


def test_the_ema_benchmark_scores_the_average_and_the_raw_weights_of_one_run(
    runs: dict[str, Any], tmp_path: Path
) -> None:
    from benchmarks.ema_raw import accuracies, raw_weights_checkpoint

    paths, probe = runs["ema"]
    (last_epoch,) = paths.checkpoints.glob("best-003-*.ckpt")
    raw = raw_weights_checkpoint(last_epoch, tmp_path / "raw.ckpt")
    weights = load_checkpoint(raw)["state_dict"]
    assert _same(weights, {k: v for k, v in probe.raw[3].items() if k in weights})
    found = accuracies(raw, paths.archive.parent)
    assert set(found) == {"test_acc_1_views", "test_acc_8_views"} and all(0 <= v <= 1 for v in found.values())
    with pytest.raises(SystemExit, match="no raw weights beside the average"):
        raw_weights_checkpoint(runs["plain"][0].best, tmp_path / "none.ckpt")
