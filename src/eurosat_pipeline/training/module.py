"""The LightningModule: two-phase fine-tuning of the classifier with batched on-device augmentation."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from eurosat_pipeline.core.config import Config, stored_config
from eurosat_pipeline.core.dataspec import DataSpec
from eurosat_pipeline.core.errors import TrainingError
from eurosat_pipeline.model.augment import BatchTransform
from eurosat_pipeline.model.checkpoints import FINGERPRINT_KEY, PREPROCESSING_KEY, WEIGHTS_KEY
from eurosat_pipeline.model.classifier import build_model, leading_groups, split_decay
from eurosat_pipeline.model.stem import stem_must_learn
from eurosat_pipeline.training.schedule import (
    BACKBONE,
    HEAD,
    STEM,
    STEM_RATE_SCALE,
    TwoPhaseSchedule,
    two_phase_scheduler,
)

# How often the deferred non-finite-loss flag is read back from a GPU; reading it every step would
# force a host sync per step. On a CPU it is free, so it is read every step.
NONFINITE_CHECK_EVERY_ON_GPU = 20


class LandUseClassifier(L.LightningModule):
    """Phase 1 trains the head on a frozen backbone (BatchNorm in eval, no backward through it);
    phase 2 unfreezes everything under a fresh cosine schedule (see :mod:`.schedule`)."""

    def __init__(self, config: dict[str, Any], data: dict[str, Any], load_pretrained: bool = True) -> None:
        super().__init__()
        # Only plain dicts are saved (the config, and the classes and bands of the data): the
        # checkpoint alone rebuilds the model.
        self.save_hyperparameters("config", "data")
        self.frozen_modules: list[nn.Module] = []  # phase 2's frozen leading layers (kept in eval mode)
        self.config: Config = stored_config(config, source="checkpoint config")
        self.data = DataSpec.from_dict(data)
        self.model = build_model(self.config, self.data, load_pretrained=load_pretrained)
        self.learning_stem, self.phase2_frozen = self._stem_and_frozen_layers()
        jitter = (
            self.config.jitter_brightness,
            self.config.jitter_contrast,
            self.config.jitter_saturation,
            self.config.jitter_hue,
        )
        self.transform = BatchTransform(
            self.model.preprocessing,
            self.config.random_flips,
            jitter,
            self.config.channels_last,
            rgb=self.data.is_rgb8,
            quarter_turns=self.config.random_quarter_turns,
        )
        self._memory_format = torch.channels_last if self.config.channels_last else torch.contiguous_format
        self.criterion = nn.CrossEntropyLoss(label_smoothing=self.config.label_smoothing)
        # No per-update host syncs on a GPU: MeanMetric's NaN check (`if nans.any()` in Python) and the
        # accuracy's argument validation each read a value back every batch. A non-finite loss is
        # caught by the module's own deferred watch (below); labels come from our own loader.
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.val_loss = MeanMetric(nan_strategy="disable")
        self.val_acc = MulticlassAccuracy(num_classes=self.data.num_classes, average="micro", validate_args=False)
        self.backbone_frozen = False
        self.fingerprint = ""  # of config and data; decides whether a later run may resume
        self.val_record: dict[str, float] = {}
        self._epoch_lrs: dict[str, float] = {}
        self._epoch_started = 0.0
        self._train_seconds = 0.0
        self._train_images = 0
        # Kept on the device, so watching for a non-finite loss needs no host round trip per step.
        self.register_buffer("_first_bad_step", torch.tensor(-1), persistent=False)

    def _stem_and_frozen_layers(self) -> tuple[list[nn.Module], list[nn.Module]]:
        """The adapted stem that must learn (empty when the stem is the pretrained RGB one), and the
        layers phase 2 keeps frozen. An adapted stem's new-band filters have no pretrained meaning:
        it learns whenever the network learns, whatever phase2_frozen_stages says, at its own rate
        (schedule.STEM_RATE_SCALE); on cached phase-1 features it cannot, so it starts with phase 2
        there (docs/your-own-data.md has the measurements). Found here, once: too many stages fail
        now, not when phase 2 starts."""
        backbone = self.model.backbone
        stem = leading_groups(backbone, 1) if stem_must_learn(self.config.pretrained, self.data.rgb_roles) else []
        frozen = leading_groups(backbone, self.config.phase2_frozen_stages)
        return stem, [module for module in frozen if not any(module is part for part in stem)]

    # ----- phases -------------------------------------------------------------------------------
    def phase(self, epoch: int | None = None) -> int:
        epoch = self.current_epoch if epoch is None else epoch
        return 1 if epoch < self.config.phase1_epochs else 2

    def set_backbone_frozen(self, frozen: bool) -> None:
        """Phase 1: the whole backbone frozen. Phase 2: all of it trains, except the leading
        ``phase2_frozen_stages`` layer groups."""
        self.backbone_frozen = frozen
        for parameter in self.model.backbone.parameters():
            parameter.requires_grad_(not frozen)
        self.frozen_modules = [] if frozen else self.phase2_frozen
        for module in self.frozen_modules:
            module.requires_grad_(False)
        if frozen and self.stem_learns_in_phase1:
            for module in self.learning_stem:
                module.requires_grad_(True)
        self.train(self.training)

    @property
    def stem_learns_in_phase1(self) -> bool:
        """An adapted stem learns in phase 1 too, unless phase 1 trains on cached features."""
        return bool(self.learning_stem) and not self.config.phase1_cached_features

    def describe_freezing(self) -> str:
        """Which layers train in which phase, in words (the summary and the model card)."""
        stages = self.config.phase2_frozen_stages
        if self.learning_stem:
            when = (
                "in both phases" if self.stem_learns_in_phase1 else "from phase 2 (phase 1 trains on cached features)"
            )
            stem = f"; the adapted stem learns {when} at {STEM_RATE_SCALE:g}x the head's rate, never frozen"
        else:
            stem = ""
        frozen = f"the first {stages} layer group(s) stay frozen" if stages else "nothing stays frozen"
        return f"phase 1: backbone frozen, the head learns; phase 2: the backbone learns, {frozen}{stem}"

    def train(self, mode: bool = True) -> LandUseClassifier:
        super().train(mode)
        # Frozen layers keep their ImageNet BatchNorm statistics.
        if mode and self.backbone_frozen:
            self.model.backbone.eval()
            if self.stem_learns_in_phase1:
                for module in self.learning_stem:
                    module.train()
        elif mode:
            for module in self.frozen_modules:
                module.eval()
        return self

    # ----- data ---------------------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: tuple[Tensor, Tensor], dataloader_idx: int) -> tuple[Tensor, Tensor]:
        images, labels = batch
        if images.ndim == 2:  # backbone features cached for phase 1 (phase1_cached_features)
            return batch
        return self.transform(images, train=self.trainer.training), labels

    # ----- steps --------------------------------------------------------------------------------
    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def features_and_logits(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """Images, or backbone features already computed (2-D inputs), to features and logits."""
        features = inputs if inputs.ndim == 2 else self.model.backbone(inputs)
        return features, self.model.head(features)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        inputs, labels = batch
        if self.backbone_frozen and not self.stem_learns_in_phase1:
            # No graph through the backbone: phase 1 costs one forward pass of it, no backward.
            with torch.no_grad():
                features = inputs if inputs.ndim == 2 else self.model.backbone(inputs)
            logits = self.model.head(features)
        else:
            logits = self.model(inputs)
        loss = self.criterion(logits, labels)
        self._watch_for_nonfinite(loss)
        self.train_loss.update(loss.detach())
        self._train_images += labels.shape[0]
        self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        images, labels = batch
        features, logits = self.features_and_logits(images)
        self.val_loss.update(self.criterion(logits, labels), weight=labels.shape[0])
        self.val_acc.update(logits, labels)
        return {"features": features, "logits": logits, "labels": labels}

    # ----- epoch bookkeeping ----------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        # Each epoch's shuffle, augmentation and dropout draw from a seed of (seed, epoch, rank),
        # so a run resumed from a checkpoint repeats an uninterrupted run exactly.
        torch.manual_seed(self.config.seed + 1000 * self.current_epoch + self.global_rank)
        self.set_backbone_frozen(self.phase() == 1)
        # The rates this epoch starts with (after the epoch, the scheduler already points past it).
        self._epoch_lrs = {f"lr_{g['part']}": g["lr"] for g in self.optimizers().param_groups}
        self._sync_for_timing()
        self._epoch_started = time.perf_counter()
        self._train_images = 0

    def on_validation_epoch_start(self) -> None:
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            # Before validation, so no checkpoint of a broken state is ever written.
            self.check_finite()
            self._sync_for_timing()
            self._train_seconds = time.perf_counter() - self._epoch_started

    def on_validation_epoch_end(self) -> None:
        loss, acc = self.val_loss.compute(), self.val_acc.compute()
        self.val_loss.reset()
        self.val_acc.reset()
        if self.trainer.sanity_checking:
            return
        # Already global (torchmetrics syncs in compute); sync_dist only quiets the DDP warning.
        self.log("val/loss", loss, sync_dist=True)
        self.log("val/acc", acc, prog_bar=True, sync_dist=True)
        self.val_record = {"val_loss": float(loss), "val_acc": float(acc)}

    def epoch_record(self) -> dict[str, float]:
        """This epoch's history row; valid from the end of validation until the next epoch."""
        self.check_finite()
        record: dict[str, float] = {
            "epoch": self.current_epoch + 1,
            "phase": self.phase(),
            "train_loss": float(self.train_loss.compute()),
            **self.val_record,
            "train_seconds": self._train_seconds,
            "images_per_s": self._images_per_second(),
            **self._epoch_lrs,
        }
        return record

    def on_train_epoch_end(self) -> None:
        # The history callback has read this epoch's record already (callbacks run first).
        self.log("train/loss", self.train_loss.compute(), sync_dist=True)  # already global; quiets DDP
        self.train_loss.reset()
        # Already the whole world's figures (images/s counts every rank); the mean over ranks keeps
        # them, and sync_dist quiets Lightning's DDP warning.
        self.log("perf/images_per_s", self._images_per_second(), sync_dist=True)
        self.log("perf/epoch_seconds", self._train_seconds, sync_dist=True)

    def _images_per_second(self) -> float:
        return self._train_images * self.trainer.world_size / max(self._train_seconds, 1e-9)

    def _sync_for_timing(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[FINGERPRINT_KEY] = self.fingerprint
        # What inference needs besides the weights: the input preparation the backbone expects,
        # and which ImageNet weights the run started from (their hash).
        checkpoint[PREPROCESSING_KEY] = self.model.preprocessing.to_dict()
        checkpoint[WEIGHTS_KEY] = self.model.pretrained_weights

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A resumed run was built without loading ImageNet weights: keep the original record.
        self.model.pretrained_weights = checkpoint.get(WEIGHTS_KEY)

    # ----- non-finite loss ----------------------------------------------------------------------
    def _watch_for_nonfinite(self, loss: Tensor) -> None:
        bad = ~torch.isfinite(loss.detach())
        first = self._first_bad_step
        self._first_bad_step = torch.where(bad & (first < 0), self.global_step, first)
        if self.global_step % self.nonfinite_check_interval(loss.device) == 0:
            self.check_finite()

    def nonfinite_check_interval(self, device: torch.device) -> int:
        """Steps between reads of the non-finite flag: every step where that is free (CPU)."""
        return 1 if device.type == "cpu" else NONFINITE_CHECK_EVERY_ON_GPU

    def check_finite(self) -> None:
        """Stop at once if any loss so far was NaN or infinite on any rank; no checkpoint of it is written.

        Under DDP every rank calls this at the same points, and the flag is reduced across ranks
        first, so all ranks stop together with the same error: a rank that stopped alone would
        leave the others blocked in the next gradient all-reduce.
        """
        step = self._first_bad_step_of_all_ranks()
        if step >= 0:
            epoch = step // max(1, self.trainer.num_training_batches) + 1
            raise TrainingError.on_every_rank(
                self.trainer.is_global_zero,
                f"The training loss became non-finite (NaN or inf) at epoch {epoch}, optimizer step {step}. "
                "Training stopped; no checkpoint of this state was written. Lower phase1_lr / phase2_lr, "
                "or check the data.",
            )

    def _first_bad_step_of_all_ranks(self) -> int:
        flag = self._first_bad_step
        if self._trainer is None or self.trainer.world_size == 1:
            return int(flag)
        # -1 means "none": the earliest bad step across ranks is the minimum of the others.
        none = torch.iinfo(flag.dtype).max
        earliest = torch.where(flag < 0, torch.full_like(flag, none), flag)
        earliest = self.trainer.strategy.reduce(earliest, reduce_op=torch.distributed.ReduceOp.MIN)
        return -1 if int(earliest) == none else int(earliest)

    # ----- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        groups = []
        stem = {id(p) for module in self.learning_stem for p in module.parameters()}
        parts = {
            HEAD: list(self.model.head.parameters()),
            STEM: [p for p in self.model.backbone.parameters() if id(p) in stem],  # an adapted stem only
            BACKBONE: [p for p in self.model.backbone.parameters() if id(p) not in stem],
        }
        for part, params in parts.items():
            if not params:
                continue
            decay, no_decay = split_decay(params)
            groups.append({"params": decay, "weight_decay": self.config.weight_decay, "name": f"{part}", "part": part})
            groups.append({"params": no_decay, "weight_decay": 0.0, "name": f"{part}_no_decay", "part": part})
        # Every group exists from the start (the backbone's at rate 0, without gradients in phase
        # 1), so the optimizer has one shape for the whole run and resumes cleanly.
        optimizer = torch.optim.AdamW(groups, lr=1.0, betas=(0.9, 0.999), eps=1e-8)
        steps_per_epoch = self.trainer.estimated_stepping_batches // self.trainer.max_epochs
        schedule = TwoPhaseSchedule.from_config(self.config, int(steps_per_epoch))
        scheduler = two_phase_scheduler(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"}}
