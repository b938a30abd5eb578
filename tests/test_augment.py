"""The batched on-device augmentation against torchvision's per-image formulas."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from benchmarks.per_sample import imagenet_preprocessing, original_transform

from eurosat_pipeline.core.config import Config
from eurosat_pipeline.model.augment import (
    BRIGHTNESS,
    CONTRAST,
    HUE,
    SATURATION,
    BatchTransform,
    ColorJitterBatch,
    eval_transform,
    random_flips,
)
from eurosat_pipeline.model.preprocessing import Preprocessing

torch.manual_seed(0)
# Mid-range pixels and mild factors: no step leaves [0, 1], so torchvision's per-step clamps are no-ops.
IMAGES = 0.35 + 0.3 * torch.rand(6, 3, 16, 16)
FACTORS = torch.tensor([0.8, 0.9, 1.0, 1.05, 1.1, 1.2])
ONES, ZEROS = torch.ones(6), torch.zeros(6)
JITTER = ColorJitterBatch(0.2, 0.2, 0.2, 0.1)


def per_image(function, factors: torch.Tensor) -> torch.Tensor:
    return torch.stack([function(image, float(f)) for image, f in zip(IMAGES, factors, strict=True)])


@pytest.mark.parametrize(
    ("step", "reference"),
    [
        (BRIGHTNESS, TF.adjust_brightness),
        (CONTRAST, TF.adjust_contrast),
        (SATURATION, TF.adjust_saturation),
    ],
)
def test_each_step_matches_torchvision(step: int, reference) -> None:
    factors = [ONES, ONES, ONES, ZEROS]
    factors[step] = FACTORS
    ours = JITTER.apply(IMAGES, *factors, order=[step])
    torch.testing.assert_close(ours, per_image(reference, FACTORS), atol=1e-5, rtol=0)


def test_composed_steps_match_torchvision_in_the_same_order() -> None:
    b, c, s = FACTORS, FACTORS.flip(0), 0.5 * (FACTORS + 1)
    ours = JITTER.apply(IMAGES, b, c, s, ZEROS, order=[SATURATION, BRIGHTNESS, CONTRAST])
    expected = torch.stack(
        [
            TF.adjust_contrast(TF.adjust_brightness(TF.adjust_saturation(img, float(fs)), float(fb)), float(fc))
            for img, fb, fc, fs in zip(IMAGES, b, c, s, strict=True)
        ]
    )
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_hue_rotation_keeps_grey_and_brightness_and_is_periodic() -> None:
    hue = torch.tensor([0.0, 0.1, -0.1, 0.25, 0.5, 1.0])
    shifted = JITTER.apply(IMAGES, ONES, ONES, ONES, hue, order=[HUE])
    torch.testing.assert_close(shifted[0], IMAGES[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(shifted[5], IMAGES[5], atol=1e-5, rtol=0)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    torch.testing.assert_close((shifted * luma).sum(1), (IMAGES * luma).sum(1), atol=2e-3, rtol=0)
    grey = torch.full((6, 3, 4, 4), 0.4)
    torch.testing.assert_close(JITTER.apply(grey, ONES, ONES, ONES, hue, order=[HUE]), grey, atol=1e-5, rtol=0)
    assert not torch.allclose(shifted[1], IMAGES[1], atol=1e-2)


def test_random_jitter_stays_in_range_and_varies_per_image() -> None:
    images = torch.rand(64, 3, 8, 8)
    out = JITTER(images)
    assert out.min() >= 0 and out.max() <= 1
    changes = (out - images).abs().mean(dim=(1, 2, 3))
    assert changes.std() > 1e-3, "factors must be drawn per image, not per batch"


def test_flips_are_independent_per_image() -> None:
    torch.manual_seed(1)
    base = torch.arange(16.0).view(1, 1, 4, 4).expand(400, 1, 4, 4)
    out = random_flips(base)
    kinds = {"none": base[0], "h": base[0].flip(-1), "v": base[0].flip(-2), "hv": base[0].flip(-1).flip(-2)}
    counts = {k: sum(bool(torch.equal(o, ref)) for o in out) for k, ref in kinds.items()}
    assert sum(counts.values()) == 400
    assert all(60 < n < 140 for n in counts.values()), counts


def _dihedral_views(image: torch.Tensor) -> dict[str, torch.Tensor]:
    """The 8 flips and quarter-turns of a square image, by name (torch's own rot90 and flip)."""
    turns = {f"rot{90 * k}": torch.rot90(image, k, dims=(-2, -1)) for k in range(4)}
    mirrored = {f"flip-rot{90 * k}": torch.rot90(image.flip(-1), k, dims=(-2, -1)) for k in range(4)}
    return turns | mirrored


@pytest.mark.parametrize(
    ("flips", "quarter_turns", "expected"),
    [
        (True, False, {"rot0", "rot180", "flip-rot0", "flip-rot180"}),
        (False, True, {"rot0", "rot90", "rot180", "rot270"}),
        (True, True, {"rot0", "rot90", "rot180", "rot270", "flip-rot0", "flip-rot90", "flip-rot180", "flip-rot270"}),
    ],
    ids=["flips", "quarter-turns", "both"],
)
def test_flips_and_quarter_turns_draw_each_of_their_views_equally_often(
    flips: bool, quarter_turns: bool, expected: set[str]
) -> None:
    torch.manual_seed(3)
    base = torch.arange(32.0).view(1, 2, 4, 4)  # no symmetry: each view is a different array
    out = random_flips(base.expand(1600, 2, 4, 4), flips, quarter_turns)
    views = _dihedral_views(base[0])
    counts = {name: sum(bool(torch.equal(o, ref)) for o in out) for name, ref in views.items()}
    assert sum(counts.values()) == 1600, "every output must be one of the 8 views of its input"
    assert {name for name, count in counts.items() if count} == expected
    share = 1600 / len(expected)
    assert all(0.75 * share < counts[name] < 1.25 * share for name in expected), counts


def test_non_square_images_turn_after_the_resize_to_the_models_square() -> None:
    """A turned H x W image is W x H; resized to the model's S x S it is the transpose of the
    unturned image's resize, so a batch of non-square images can still be turned."""
    torch.manual_seed(5)
    image = torch.randint(0, 256, (1, 3, 12, 20), dtype=torch.uint8)
    no_jitter = (0.0, 0.0, 0.0, 0.0)
    preprocessing = imagenet_preprocessing(16)
    turned = BatchTransform(preprocessing, False, no_jitter, quarter_turns=True)(image.expand(64, 3, 12, 20), True)
    assert turned.shape == (64, 3, 16, 16)
    eval_ = BatchTransform(preprocessing, False, no_jitter)
    expected = [eval_(torch.rot90(image, k, dims=(-2, -1)).contiguous(), train=False)[0] for k in range(4)]
    for k, reference in enumerate(expected):
        hits = sum(bool(torch.allclose(x, reference, atol=1e-5)) for x in turned)
        assert 4 < hits < 28, f"{90 * k} degrees: {hits} of 64"
    with pytest.raises(ValueError, match="12 x 20"):
        random_flips(image.float(), quarter_turns=True)


def test_the_train_transform_turns_only_when_asked() -> None:
    torch.manual_seed(4)
    image = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8).expand(64, 3, 16, 16)
    no_jitter = (0.0, 0.0, 0.0, 0.0)
    plain = BatchTransform(imagenet_preprocessing(16), random_flips=True, jitter=no_jitter)(image, train=True)
    turned = BatchTransform(imagenet_preprocessing(16), jitter=no_jitter, quarter_turns=True)(image, train=True)
    reference = BatchTransform(imagenet_preprocessing(16), jitter=no_jitter)(image[:1], train=False)[0]
    rot90 = torch.rot90(reference, 1, dims=(-2, -1))
    assert not any(torch.equal(x, rot90) for x in plain)
    assert any(torch.equal(x, rot90) for x in turned)


@pytest.mark.parametrize(
    "preprocessing",
    [imagenet_preprocessing(224), Preprocessing(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic")],
    ids=["imagenet-bilinear", "lite0-bicubic"],
)
def test_eval_transform_is_the_validation_preprocessing(preprocessing: Preprocessing) -> None:
    torch.manual_seed(2)
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    ours = BatchTransform(preprocessing, channels_last=True)(images, train=False)
    assert ours.shape == (4, 3, 224, 224) and ours.is_contiguous(memory_format=torch.channels_last)
    per_sample = original_transform(Config(), preprocessing, train=False)
    reference = torch.stack([per_sample(TF.to_pil_image(img)) for img in images])
    # PIL resizes 8-bit pixels (and clips bicubic overshoot; its cubic kernel is a = -0.5, torch's
    # -0.75), we resize floats: on random noise, the worst case, they agree to ~4/255 per pixel.
    std = torch.tensor(preprocessing.std).view(1, 3, 1, 1)
    assert ((ours - reference) * std).abs().mean() < 0.02


def test_normalisation_follows_the_preprocessing() -> None:
    images = torch.full((1, 3, 64, 64), 255, dtype=torch.uint8)
    lite0 = eval_transform(Preprocessing(64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))(images, train=False)
    imagenet = eval_transform(imagenet_preprocessing(64))(images, train=False)
    assert torch.allclose(lite0, torch.ones_like(lite0))  # (1 - 0.5) / 0.5
    assert torch.allclose(
        imagenet[0, :, 0, 0], torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, 2.64]), atol=1e-3
    )


def test_train_transform_keeps_shape_and_normalised_range() -> None:
    images = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8)
    out = BatchTransform(imagenet_preprocessing(96))(images, train=True)
    assert out.shape == (8, 3, 96, 96) and out.dtype == torch.float32
    assert out.min() > -2.2 and out.max() < 2.7
