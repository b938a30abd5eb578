from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from eurosat_pipeline.core.config import Config, config_from_mapping, load_config, stored_config
from eurosat_pipeline.core.errors import ConfigError

from .conftest import REPO_ROOT


def test_params_yaml_holds_the_reference_recipe() -> None:
    loaded = load_config(REPO_ROOT / "params.yaml")
    assert loaded == Config(), "params.yaml and the code defaults disagree"
    assert (loaded.phase1_epochs, loaded.phase2_epochs, loaded.phase1_lr, loaded.phase2_lr) == (7, 10, 2e-3, 1e-4)
    assert (loaded.batch_size, loaded.image_size, loaded.label_smoothing, loaded.seed) == (64, 224, 0.1, 42)


def test_every_key_in_params_yaml_has_a_comment() -> None:
    keys = set(Config.model_fields)
    lines = [line for line in (REPO_ROOT / "params.yaml").read_text().splitlines() if line and not line.startswith("#")]
    documented = {line.split(":")[0] for line in lines if "#" in line}
    undocumented = keys - documented - {"jitter_contrast", "jitter_saturation", "jitter_hue"}
    assert not undocumented


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_numbers_follow_yaml_1_2_like_dvc(tmp_path: Path) -> None:
    # PyYAML would read 3e-4 as a string; DVC (and so we) read it as a number.
    config = load_config(write(tmp_path, "phase2_lr: 3e-4\nphase1_epochs: 0\n"))
    assert config.phase2_lr == pytest.approx(3e-4)
    assert config.phase1_epochs == 0  # plain fine-tuning is valid


def test_missing_keys_take_the_recipe_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "seed: 7\n")) == Config(seed=7)


def test_a_checkpoint_from_before_quarter_turns_says_it_trained_without_them() -> None:
    """Today's recipe turns (the default); a stored config that lacks the key trained without."""
    older = Config().to_dict()
    del older["random_quarter_turns"]
    assert Config().random_quarter_turns
    assert not stored_config(older, source="old.ckpt").random_quarter_turns
    assert stored_config(Config().to_dict(), source="new.ckpt") == Config()


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("phase2_lrr: 1.0e-4\n", r"unknown key 'phase2_lrr'.*Did you mean 'phase2_lr'"),
        ("batchsize: 32\n", r"unknown key 'batchsize'.*Did you mean 'batch_size'"),
        ("phase2_lr: '1e-4'\n", r"'phase2_lr' must be float.*without quotes"),
        ("phase1_epochs: 2.5\n", r"'phase1_epochs' must be int"),
        ("phase1_epochs: true\n", r"'phase1_epochs' must be int"),
        ("pretrained: yes please\n", r"'pretrained' must be bool"),
        ("phase2_lr: -0.001\n", r"'phase2_lr' must be a finite number > 0"),
        ("phase1_lr: .nan\n", r"'phase1_lr' must be a finite number > 0"),
        ("phase1_epochs: -1\n", r"'phase1_epochs' must be >= 0"),
        ("phase1_epochs: 0\nphase2_epochs: 0\n", r"'phase2_epochs' must make phase1_epochs \+ phase2_epochs"),
        ("val_fraction: 0.5\ntest_fraction: 0.5\n", r"'test_fraction' must leave a training set"),
        ("test_fraction: 0\n", r"'test_fraction' must be between 0 and 1"),
        ("batch_size: 1\n", r"'batch_size' must be >= 2"),
        ("image_size: 16\n", r"'image_size' must be between 32 and 1024"),
        ("precision: fp8\n", r"'precision' must be one of auto, 32-true"),
        ("devices: many\n", r"'devices' must be a count"),
        ("label_smoothing: 1.0\n", r"'label_smoothing' must be >= 0 and < 1"),
        ("min_lr: 0.1\n", r"'min_lr' must be below every peak"),
        ("- a\n- b\n", r"expected a mapping"),
        ("phase2_lr: [\n", r"not valid YAML"),
    ],
)
def test_bad_params_name_the_key(tmp_path: Path, text: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_config(write(tmp_path, text))


FLOAT_KEYS = [key for key, field in Config.model_fields.items() if field.annotation is float]


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_no_float_param_takes_nan_or_infinity(tmp_path: Path, key: str, value: str) -> None:
    """A NaN or infinite knob trains nothing useful (an infinite weight decay zeroes every weight)."""
    with pytest.raises(ConfigError, match=rf"key '{key}' must be .*finite number"):
        load_config(write(tmp_path, f"{key}: {value}\n"))


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="params file not found"):
        load_config(tmp_path / "nope.yaml")


def test_config_is_frozen_and_a_changed_copy_is_checked_again() -> None:
    config = Config()
    with pytest.raises(ValidationError, match="frozen"):
        config.phase2_lr = 1.0  # type: ignore[misc]
    assert config.phase2_lr == 1.0e-4
    assert config.replace(phase2_lr=3e-4).phase2_lr == 3e-4 and config.phase2_lr == 1.0e-4
    with pytest.raises(ConfigError, match=r"overrides: key 'batch_size' must be >= 2 \(BatchNorm needs two samples\)"):
        config.replace(batch_size=1)


def test_devices_accepts_counts_auto_and_id_lists() -> None:
    assert config_from_mapping({"devices": "0,1"}).devices == "0,1"
    assert config_from_mapping({"devices": "auto"}).devices == "auto"
    assert config_from_mapping({"devices": 2}).devices == 2
