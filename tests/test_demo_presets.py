"""`eurosat demo`'s recipes: the CPU recipe, and `--quality best` on top of it."""

from __future__ import annotations

from pathlib import Path

import pytest
from ruamel.yaml import YAML

from eurosat_pipeline.cli.demo import BEST_QUALITY_OVERRIDES, REAL_DATA_OVERRIDES, demo_args, demo_overrides
from eurosat_pipeline.core.config import Config, config_from_mapping
from eurosat_pipeline.core.errors import PipelineError


def _settings(args: list[str]) -> dict[str, str]:
    """The ``-S key=value`` pairs, the last of each key winning (as ``dvc exp run`` applies them)."""
    assert args[::2] == ["-S"] * (len(args) // 2)
    return dict(item.split("=", 1) for item in args[1::2])


def test_best_quality_is_the_cpu_recipe_with_its_levers_and_the_users_settings_win(tmp_path: Path) -> None:
    images = tmp_path / "EuroSAT.zip"
    images.touch()
    best = _settings(demo_args(["seed=1"], images, "best"))
    assert best == {**REAL_DATA_OVERRIDES, **BEST_QUALITY_OVERRIDES, "data_source": str(images), "seed": "1"}
    assert _settings(demo_args(["image_size=96"], images, "best"))["image_size"] == "96"
    assert _settings(demo_args([], images))["image_size"] == REAL_DATA_OVERRIDES["image_size"]


def test_every_preset_value_is_a_valid_param() -> None:
    """A typo'd key or a bad value in a preset fails here, not an hour into a run."""
    values = {key: YAML(typ="safe", pure=True).load(value) for key, value in demo_overrides(".", "best").items()}
    config = config_from_mapping({**Config().to_dict(), **values}, source="--quality best")
    assert config.image_size == int(BEST_QUALITY_OVERRIDES["image_size"])


@pytest.mark.parametrize(
    ("data", "quality", "message"),
    [(None, "best", r"--quality best is a recipe for real images: give them with --data"), (".", "fast", "not one of")],
)
def test_a_quality_that_cannot_apply_is_refused_by_name(data: str | None, quality: str, message: str) -> None:
    with pytest.raises(PipelineError, match=message):
        demo_overrides(data, quality)
