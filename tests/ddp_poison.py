"""Test helper: the train stage under DDP, with a NaN loss on one rank only and a check of the shared
phase-1 feature pass. Lightning starts the other ranks by running this same file again, so every
rank gets the same patches.

Environment: ``POISON_RANK`` and ``POISON_STEP`` (the rank whose inputs turn NaN at that optimizer
step), ``FEATURE_CHECK_DIR`` (each rank writes there how far its gathered features are from the
ones it computes alone over the whole set).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

from eurosat_pipeline.core.stage import run_stage
from eurosat_pipeline.model.inference import backbone_features, feature_format
from eurosat_pipeline.training.datamodule import EuroSATDataModule
from eurosat_pipeline.training.module import LandUseClassifier

TRAIN_STAGE = Path(__file__).resolve().parents[1] / "stages" / "train.py"
POISON_RANK = int(os.environ["POISON_RANK"])
POISON_STEP = int(os.environ["POISON_STEP"])
FEATURE_CHECK_DIR = Path(os.environ["FEATURE_CHECK_DIR"])

training_step = LandUseClassifier.training_step
compute_features = EuroSATDataModule._compute_features


def poisoned_training_step(self: LandUseClassifier, batch: Any, batch_idx: int) -> torch.Tensor:
    inputs, labels = batch
    if self.global_rank == POISON_RANK and self.global_step == POISON_STEP:
        inputs = torch.full_like(inputs, float("nan"))
    return training_step(self, (inputs, labels), batch_idx)


def checked_features(self: EuroSATDataModule, images: torch.Tensor) -> torch.Tensor:
    gathered = compute_features(self, images)
    model = self.trainer.lightning_module.model
    fmt = feature_format(images.device)
    alone = backbone_features(model, images, channels_last=self.config.channels_last, fmt=fmt)
    difference = (gathered - alone).abs().max().item() if len(images) else 0.0
    rank = self.trainer.global_rank
    with (FEATURE_CHECK_DIR / f"rank{rank}.txt").open("a") as record:
        record.write(f"{len(images)} {tuple(gathered.shape)} {difference}\n")
    return gathered


LandUseClassifier.training_step = poisoned_training_step
EuroSATDataModule._compute_features = checked_features

if __name__ == "__main__":
    # Imported, not run with runpy: runpy would set sys.argv[0] to the stage, and Lightning would
    # start the other ranks from the stage itself, without these patches.
    spec = importlib.util.spec_from_file_location("train_stage", TRAIN_STAGE)
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    run_stage(stage.main)
