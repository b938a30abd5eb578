"""The export's parity check: float noise never fails a healthy export, a real export bug always does."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from eurosat_pipeline.inference.export import judge_parity, parity, parity_problem, write_onnx
from eurosat_pipeline.model.classifier import build_model

from .conftest import RGB, tiny_config

OLD_ABSOLUTE_TOLERANCE = 1e-4  # the rule that failed a healthy, barely trained run


def _logits(rows: int = 64, scale: float = 1.0, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(rows, 10)) * scale).astype(np.float32)


def test_float_noise_on_large_logits_passes() -> None:
    expected = _logits(scale=3e3)
    noise = np.random.default_rng(1).normal(size=expected.shape).astype(np.float32)
    actual = expected * (1 + 2e-6 * noise)  # float32 rounding, relative to each logit
    report = judge_parity(expected, actual)
    assert report["max_abs_diff"] > OLD_ABSOLUTE_TOLERANCE
    assert report["ok"], parity_problem(report)


def test_a_tie_broken_by_noise_passes_but_a_changed_prediction_fails() -> None:
    expected = _logits()
    tie = expected.copy()
    tie[0, :2] = [5.0, 5.0 - 1e-6]  # PyTorch's top two, a hair apart
    flipped = tie.copy()
    flipped[0, :2] = [5.0 - 1e-6, 5.0]
    assert judge_parity(tie, flipped)["ok"]

    wrong = expected.copy()
    top = expected[3].argmax()
    wrong[3, top] = expected[3].min() - 1.0
    report = judge_parity(expected, wrong)
    assert not report["ok"] and report["top1_flips"] == 1
    assert "another predicted class" in parity_problem(report)


def test_small_logits_are_judged_on_an_absolute_floor() -> None:
    expected = _logits(scale=1e-3)
    report = judge_parity(expected, expected + 5e-3)  # 5x the logits themselves
    assert not report["ok"] and report["logit_scale"] == 1.0


def test_a_different_output_shape_fails() -> None:
    report = judge_parity(_logits(), _logits()[:, :9])
    assert not report["ok"] and "shape" in parity_problem(report)


# ----- real ONNX files: healthy exports pass, broken ones fail ------------------------------------


class _Renormalised(nn.Module):
    """An export bug: the graph normalises images that already are normalised."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    net = build_model(tiny_config(), RGB, load_pretrained=False).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
                # Statistics as after training (fresh ones make BatchNorm an identity in eval mode) ...
                module.running_mean.normal_(0.0, 0.5, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
            if isinstance(module, nn.BatchNorm2d):
                # ... and large activations, as in a barely trained network: logits in the hundreds.
                module.weight.mul_(1e4 ** (1 / 8))
    return net


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _export(module: nn.Module, example: torch.Tensor, path: Path) -> Path:
    return write_onnx(module, example[:2], path)


def test_train_mode_outputs_fail(model: nn.Module, images: torch.Tensor) -> None:
    # The dynamo exporter always writes an inference graph (BatchNorm folded, Dropout off), so a
    # train-mode mismatch can only come from the reference side; the judgement must see it.
    torch.manual_seed(0)
    with torch.no_grad():
        expected = copy.deepcopy(model).eval()(images).numpy()
        actual = copy.deepcopy(model).train()(images).numpy()
    assert not judge_parity(expected, actual)["ok"]


def test_healthy_export_with_large_logits_passes(model: nn.Module, images: torch.Tensor, tmp_path: Path) -> None:
    report = parity(model, _export(model, images, tmp_path / "ok.onnx"), images)
    assert report["logit_scale"] > 100
    assert report["max_abs_diff"] > OLD_ABSOLUTE_TOLERANCE  # float noise the old rule refused
    assert report["ok"], parity_problem(report)


def _missing_layer(model: nn.Module) -> nn.Module:
    broken = copy.deepcopy(model)
    broken.head[2] = nn.Identity()  # the head's BatchNorm1d
    return broken


def _renormalised(model: nn.Module) -> nn.Module:
    return _Renormalised(copy.deepcopy(model)).eval()


@pytest.mark.parametrize("break_export", [_missing_layer, _renormalised])
def test_export_bugs_fail(break_export: object, model: nn.Module, images: torch.Tensor, tmp_path: Path) -> None:
    broken = break_export(model)  # type: ignore[operator]
    report = parity(model, _export(broken, images, tmp_path / "broken.onnx"), images)
    assert not report["ok"]
    assert report["max_relative_diff"] > 10 * report["tolerance"]
