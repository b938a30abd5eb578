from __future__ import annotations

import itertools

import pytest
import torch

from eurosat_pipeline.core.config import Config
from eurosat_pipeline.training.schedule import BACKBONE, HEAD, TwoPhaseSchedule, two_phase_scheduler

RECIPE = TwoPhaseSchedule.from_config(Config(), steps_per_epoch=100)


def test_phase1_warms_up_then_decays_and_keeps_the_backbone_still() -> None:
    warmup = [RECIPE.lr(HEAD, s) for s in range(100)]
    assert warmup[0] == pytest.approx(2e-3 / 100)
    assert warmup[-1] == pytest.approx(2e-3)
    assert all(a < b for a, b in itertools.pairwise(warmup))
    decay = [RECIPE.lr(HEAD, s) for s in range(100, 700)]
    assert all(a >= b for a, b in itertools.pairwise(decay))
    assert decay[-1] < 2e-5
    assert all(RECIPE.lr(BACKBONE, s) == 0.0 for s in range(700))


def test_phase2_starts_a_fresh_cosine_at_its_own_peak() -> None:
    assert RECIPE.phase2_start == 700
    assert RECIPE.lr(HEAD, 699) < 2e-5  # phase 1 ended near zero ...
    assert RECIPE.lr(HEAD, 700) == pytest.approx(1e-4)  # ... phase 2 does not inherit that
    assert RECIPE.lr(BACKBONE, 700) == pytest.approx(1e-5)  # phase2_lr * backbone_lr_scale
    assert RECIPE.lr(HEAD, 1200) == pytest.approx(1e-6 + (1e-4 - 1e-6) / 2)  # half-way down
    assert RECIPE.lr(HEAD, 1700) == pytest.approx(1e-6)  # eta_min at the end
    assert RECIPE.lr(BACKBONE, 1700) == pytest.approx(1e-6)


def test_plain_fine_tuning_has_no_phase1() -> None:
    schedule = TwoPhaseSchedule.from_config(Config(phase1_epochs=0), steps_per_epoch=10)
    assert schedule.phase2_start == 0
    assert schedule.lr(HEAD, 0) == pytest.approx(1e-4)
    assert schedule.lr(BACKBONE, 0) == pytest.approx(1e-5)


def test_lambda_scheduler_sets_each_group_to_its_rate() -> None:
    weights = [torch.nn.Parameter(torch.zeros(2, 2)) for _ in range(2)]
    optimizer = torch.optim.AdamW(
        [{"params": [weights[0]], "part": HEAD}, {"params": [weights[1]], "part": BACKBONE}], lr=0.5
    )
    schedule = TwoPhaseSchedule.from_config(Config(phase1_epochs=1, phase2_epochs=1), steps_per_epoch=4)
    scheduler = two_phase_scheduler(optimizer, schedule)
    seen = []
    for _ in range(8):
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert seen == [[pytest.approx(schedule.lr(HEAD, s)), pytest.approx(schedule.lr(BACKBONE, s))] for s in range(8)]
    state = scheduler.state_dict()
    assert all(entry == {} for entry in state["lr_lambdas"]), "scheduler state must be plain data"
