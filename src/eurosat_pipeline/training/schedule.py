"""The two-phase learning-rate schedule as a pure function of the step.

Phase 1 (backbone frozen): the head warms up linearly to ``phase1_lr``, then follows a cosine to
``min_lr``; the backbone's rate is 0. An adapted stem follows the head at ``STEM_RATE_SCALE`` times
its rate, in both phases. Phase 2 (backbone unfrozen): a fresh cosine over the
remaining steps, from ``phase2_lr`` for the head and ``phase2_lr * backbone_lr_scale`` for the
backbone, down to ``min_lr``, so phase 2 does not start at a near-zero rate left from phase 1.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from eurosat_pipeline.core.config import Config

HEAD, BACKBONE, STEM = "head", "backbone", "stem"
# An adapted stem (bands without pretrained filters) learns at this multiple of the head's rate, in
# both phases: the rate that did best across the extra-band sets measured with
# benchmarks/extra_bands.py (figures in docs/your-own-data.md).
STEM_RATE_SCALE = 10.0


@dataclass(frozen=True)
class TwoPhaseSchedule:
    steps_per_epoch: int
    phase1_epochs: int
    warmup_epochs: int
    phase2_epochs: int
    phase1_lr: float
    phase2_lr: float
    backbone_lr_scale: float
    min_lr: float

    @classmethod
    def from_config(cls, config: Config, steps_per_epoch: int) -> TwoPhaseSchedule:
        return cls(
            steps_per_epoch=max(1, steps_per_epoch),
            phase1_epochs=config.phase1_epochs,
            # Capped, so `-S phase1_epochs=0` works without also changing the warm-up.
            warmup_epochs=min(config.phase1_warmup_epochs, config.phase1_epochs),
            phase2_epochs=config.phase2_epochs,
            phase1_lr=config.phase1_lr,
            phase2_lr=config.phase2_lr,
            backbone_lr_scale=config.backbone_lr_scale,
            min_lr=config.min_lr,
        )

    @property
    def phase2_start(self) -> int:
        return self.phase1_epochs * self.steps_per_epoch

    def lr(self, part: str, step: int) -> float:
        """Learning rate of ``part`` (``"head"``, ``"stem"`` or ``"backbone"``) for optimizer step ``step``."""
        if part == STEM:
            return self.lr(HEAD, step) * STEM_RATE_SCALE
        if step < self.phase2_start:
            return self._phase1_head(step) if part == HEAD else 0.0
        peak = self.phase2_lr if part == HEAD else self.phase2_lr * self.backbone_lr_scale
        phase2_steps = self.phase2_epochs * self.steps_per_epoch
        return self._cosine(peak, step - self.phase2_start, phase2_steps)

    def _phase1_head(self, step: int) -> float:
        warmup = self.warmup_epochs * self.steps_per_epoch
        if step < warmup:
            return self.phase1_lr * (step + 1) / warmup
        return self._cosine(self.phase1_lr, step - warmup, self.phase2_start - warmup)

    def _cosine(self, peak: float, step: int, total: int) -> float:
        progress = min(step / max(1, total), 1.0)
        return self.min_lr + (peak - self.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def two_phase_scheduler(optimizer: Optimizer, schedule: TwoPhaseSchedule) -> LambdaLR:
    """A ``LambdaLR`` that sets each group (tagged with ``part``) to its scheduled rate."""
    for group in optimizer.param_groups:
        group["lr"] = 1.0
        group.pop("initial_lr", None)
    # partial, not a callable object: LambdaLR stores a callable object's __dict__ in its state, and
    # checkpoints must hold only plain data to load with weights_only=True.
    return LambdaLR(optimizer, [functools.partial(schedule.lr, g["part"]) for g in optimizer.param_groups])
