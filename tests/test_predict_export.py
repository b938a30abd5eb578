"""Using a trained model: checkpoints loaded safely, ONNX export with parity, the predict command."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from eurosat_pipeline.cli.main import main as cli
from eurosat_pipeline.core.classes import CLASSES
from eurosat_pipeline.core.errors import CheckpointError, PipelineError
from eurosat_pipeline.core.files import sha256_of
from eurosat_pipeline.data.dataset import prepare_dataset, read_archive
from eurosat_pipeline.data.split import split_archive
from eurosat_pipeline.inference.engines import OnnxPredictor, TorchPredictor, load_predictor, softmax
from eurosat_pipeline.inference.export import export_onnx
from eurosat_pipeline.inference.options import ModelOptions
from eurosat_pipeline.inference.predict import agreement, predict, render
from eurosat_pipeline.model.checkpoints import load_checkpoint, load_classifier
from eurosat_pipeline.platform import nvidia
from eurosat_pipeline.training.train import TrainPaths, train

from .conftest import tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("model")
    config = tiny_config(synthetic_images_per_class=20, phase2_epochs=3)
    data = root / "data"
    prepare_dataset("synthetic", data / "eurosat.zip", data / "dataset.json", config.synthetic_images_per_class)
    split_archive(data / "eurosat.zip", data / "split.csv", 0.1, 0.1, 42)
    paths = TrainPaths.under(data, root / "models", root / "reports")
    train(config, paths)
    images = root / "images"
    for member, blob in list(read_archive(data / "eurosat.zip").items())[::7]:
        (images / member).parent.mkdir(parents=True, exist_ok=True)
        (images / member).write_bytes(blob)
    return {"root": root, "checkpoint": paths.best, "images": images}


@pytest.fixture(scope="module")
def exported(trained: dict[str, Any]) -> dict[str, Any]:
    onnx_file, report = trained["root"] / "model.onnx", trained["root"] / "export.json"
    data = trained["root"] / "data"
    return {
        "onnx": onnx_file,
        "report": export_onnx(trained["checkpoint"], onnx_file, report, data / "eurosat.zip", data / "split.csv"),
    }


def test_onnx_export_matches_pytorch(exported: dict[str, Any]) -> None:
    report = exported["report"]
    assert report["ok"] and report["same_top1"] and report["max_relative_diff"] < report["tolerance"]
    assert report["batch_sizes"] == [1, report["images"] - 1]  # the batch axis is dynamic


def test_predict_folder_reports_top_k_and_agreement(trained: dict[str, Any]) -> None:
    predictions = predict([trained["images"]], ModelOptions(trained["checkpoint"]), top_k=3)
    assert len(predictions) == len(list(trained["images"].rglob("*.jpg")))
    for p in predictions:
        assert len(p.classes) == 3 and set(p.classes) <= set(CLASSES)
        assert p.probabilities == sorted(p.probabilities, reverse=True) and sum(p.probabilities) <= 1 + 1e-6
    correct, labelled = agreement(predictions)
    assert labelled == len(predictions) and 0 <= correct <= labelled


def test_onnx_predictions_equal_checkpoint_predictions(trained: dict[str, Any], exported: dict[str, Any]) -> None:
    from_torch = predict([trained["images"]], ModelOptions(trained["checkpoint"], device="cpu"), top_k=2)
    from_onnx = predict([trained["images"]], ModelOptions(onnx_file=exported["onnx"]), top_k=2)
    assert [p.classes for p in from_torch] == [p.classes for p in from_onnx]
    diff = np.abs(np.array([p.probabilities for p in from_torch]) - np.array([p.probabilities for p in from_onnx]))
    assert diff.max() < 1e-4


def test_any_size_rgb_is_accepted_and_formats_parse(trained: dict[str, Any], tmp_path: Path) -> None:
    big = tmp_path / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 100, 3), dtype=np.uint8)).save(big)
    predictions = predict([big], ModelOptions(trained["checkpoint"]), top_k=10)
    assert len(predictions[0].classes) == 10 and abs(sum(predictions[0].probabilities) - 1) < 1e-5
    rows = json.loads(render(predictions, "json"))
    assert rows[0]["path"] == str(big) and len(rows[0]["predictions"]) == 10
    assert render(predictions, "csv").splitlines()[0].startswith("path,class1,probability1,class2")


def test_cli_writes_csv_and_says_how_many_were_right(
    trained: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "predictions.csv"
    code = cli(
        [
            "predict",
            str(trained["images"]),
            "--checkpoint",
            str(trained["checkpoint"]),
            "--format",
            "csv",
            "--output",
            str(out),
        ]
    )
    assert code == 0 and out.read_text().startswith("path,class1")
    assert "predicted as the class their folder names" in capsys.readouterr().err


def test_unusable_inputs_are_named_and_the_rest_still_predicted(
    trained: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Image.new("L", (64, 64)).save(tmp_path / "grey.png")
    Image.new("RGBA", (64, 64)).save(tmp_path / "alpha.png")
    (tmp_path / "notes.jpg").write_text("not an image")
    Image.new("RGB", (64, 64), (40, 90, 30)).save(tmp_path / "good.png")
    # A user's photo: not square. The default 8 views turn it a quarter; each view is resized by the model.
    photo = np.random.default_rng(1).integers(0, 255, (500, 700, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.jpg")
    predictions = {p.path.name: p for p in predict([tmp_path], ModelOptions(trained["checkpoint"], views=8))}
    assert "grey.png: has 1 band(s) (L)" in predictions["grey.png"].error
    assert "alpha.png: has 4 band(s) (RGBA)" in predictions["alpha.png"].error
    assert "notes.jpg: cannot be read as an image" in predictions["notes.jpg"].error
    for name in ("good.png", "photo.jpg"):
        assert not predictions[name].error and len(predictions[name].classes) == 3
    code = cli(["predict", str(tmp_path), "--checkpoint", str(trained["checkpoint"]), "--format", "json"])
    out, err = capsys.readouterr()
    rows = {Path(row["path"]).name: row for row in json.loads(out)}
    assert code == 1 and "error: 3 of 5 file(s) could not be classified" in err
    assert rows["photo.jpg"]["predictions"] and "has 1 band(s)" in rows["grey.png"]["error"]
    with pytest.raises(PipelineError, match="not found: nowhere"):
        predict(["nowhere"], ModelOptions(trained["checkpoint"]))


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "model.ckpt"
    bogus.write_text("hello")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_checkpoint(bogus)
    torch.save({"weights": torch.zeros(2)}, bogus)
    with pytest.raises(CheckpointError, match="not a Lightning checkpoint"):
        load_checkpoint(bogus)


def test_a_checkpoint_of_another_model_or_class_count_is_refused(trained: dict[str, Any], tmp_path: Path) -> None:
    checkpoint = torch.load(trained["checkpoint"], weights_only=True)
    other_model = tmp_path / "other-model.ckpt"
    checkpoint["hyper_parameters"]["config"]["model_name"] = "resnet18"
    torch.save(checkpoint, other_model)
    with pytest.raises(CheckpointError, match="weights do not fit a resnet18 classifier with 10 classes"):
        load_classifier(other_model)
    checkpoint = torch.load(trained["checkpoint"], weights_only=True)
    five_classes = tmp_path / "five-classes.ckpt"
    checkpoint["state_dict"]["model.head.5.weight"] = checkpoint["state_dict"]["model.head.5.weight"][:5]
    checkpoint["state_dict"]["model.head.5.bias"] = checkpoint["state_dict"]["model.head.5.bias"][:5]
    torch.save(checkpoint, five_classes)
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_classifier(five_classes)


class Payload:
    """Pickled, this would create a file when loaded: code execution on load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_a_pickled_payload_is_refused_and_never_runs(trained: dict[str, Any], tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    checkpoint = torch.load(trained["checkpoint"], weights_only=True)
    checkpoint["hyper_parameters"]["extra"] = Payload(marker)
    evil = tmp_path / "evil.ckpt"
    torch.save(checkpoint, evil)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_classifier(evil)
    with pytest.raises(PipelineError):
        predict([trained["images"]], ModelOptions(evil))
    assert not marker.exists()


# ----- which engine classifies: the checkpoint's own export where it is the fastest -------------------
@pytest.fixture
def beside(trained: dict[str, Any], tmp_path: Path) -> dict[str, Path]:
    """A checkpoint with its export beside it, as the pipeline leaves models/best.ckpt and models/model.onnx."""
    models = tmp_path / "models"
    models.mkdir()
    checkpoint = models / "best.ckpt"
    shutil.copyfile(trained["checkpoint"], checkpoint)
    data = trained["root"] / "data"
    export_onnx(checkpoint, models / "model.onnx", tmp_path / "export.json", data / "eurosat.zip", data / "split.csv")
    return {"checkpoint": checkpoint, "onnx": models / "model.onnx"}


def test_auto_takes_the_checkpoints_own_export_on_a_cpu_machine(
    beside: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nvidia, "gpu_present", lambda: False)
    predictor = load_predictor(ModelOptions(beside["checkpoint"]))
    assert isinstance(predictor, OnnxPredictor) and predictor.describe().startswith("ONNX Runtime")
    # Anything PyTorch-specific, or a GPU, means PyTorch.
    assert isinstance(load_predictor(ModelOptions(beside["checkpoint"], precision="bf16")), TorchPredictor)
    assert isinstance(load_predictor(ModelOptions(beside["checkpoint"], engine="pytorch")), TorchPredictor)
    monkeypatch.setattr(nvidia, "gpu_present", lambda: True)
    assert isinstance(load_predictor(ModelOptions(beside["checkpoint"])), TorchPredictor)


def test_a_model_whose_file_changed_after_it_was_hashed_is_refused(beside: dict[str, Path]) -> None:
    """What a region worker does: the command hashed the file, the worker loads only those bytes."""
    sha256 = sha256_of(beside["checkpoint"])
    assert load_predictor(ModelOptions(beside["checkpoint"], engine="pytorch", sha256=sha256)).data.classes
    checkpoint = torch.load(beside["checkpoint"], weights_only=True)
    checkpoint["state_dict"]["model.head.5.bias"] += 1.0  # replaced while the region ran
    torch.save(checkpoint, beside["checkpoint"])
    with pytest.raises(PipelineError, match=rf"best\.ckpt: sha256 [0-9a-f]{{64}} is not the model's {sha256}"):
        load_predictor(ModelOptions(beside["checkpoint"], engine="pytorch", sha256=sha256))
    with pytest.raises(PipelineError, match="not a sha256"):
        ModelOptions(beside["checkpoint"], sha256="abc")


def test_a_stale_export_is_never_used_for_a_changed_checkpoint(
    beside: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nvidia, "gpu_present", lambda: False)
    checkpoint = torch.load(beside["checkpoint"], weights_only=True)
    checkpoint["state_dict"]["model.head.5.bias"] += 1.0  # "retrained"
    torch.save(checkpoint, beside["checkpoint"])
    assert isinstance(load_predictor(ModelOptions(beside["checkpoint"])), TorchPredictor)
    with pytest.raises(
        PipelineError, match=r"no ONNX export of .*best\.ckpt beside it .* `eurosat export --checkpoint"
    ):
        load_predictor(ModelOptions(beside["checkpoint"], engine="onnxruntime"))


def test_every_engine_agrees_with_fp32_pytorch_on_top1(trained: dict[str, Any], beside: dict[str, Path]) -> None:
    reference = predict(
        [trained["images"]], ModelOptions(beside["checkpoint"], engine="pytorch", device="cpu"), top_k=1
    )
    for options in ({"engine": "onnxruntime"}, {"onnx_file": beside["onnx"]}):
        other = predict([trained["images"]], ModelOptions(beside["checkpoint"], **options), top_k=1)
        assert [p.classes for p in other] == [p.classes for p in reference], options
    # (bf16 against fp32: tests/test_weights.py, on a pretrained model, where margins are real.)


def test_onnx_normalises_model_sized_tiles_in_numpy_exactly_as_the_torch_transform(beside: dict[str, Path]) -> None:
    from eurosat_pipeline.model.augment import eval_transform

    predictor = OnnxPredictor(beside["onnx"])
    size = predictor.image_size
    tiles = np.random.default_rng(0).integers(0, 256, (6, 3, size, size), dtype=np.uint8)
    by_torch = eval_transform(predictor.preprocessing)(torch.from_numpy(tiles), train=False).numpy()
    by_numpy = (tiles.astype(np.float32) - predictor.mean) * predictor.scale
    assert np.abs(by_numpy - by_torch).max() < 1e-5
    (logits,) = predictor.session.run(None, {predictor.input_name: by_torch})
    assert np.abs(predictor.classify(tiles) - softmax(logits)).max() < 1e-5


def test_map_with_the_export_never_imports_torch(trained: dict[str, Any], tmp_path: Path) -> None:
    """The CPU fast path: no torch import (seconds, ~700 MB resident), the export does the work.
    It needs a model whose input is the tile's own size, 64 px, like the CPU recipe's."""
    import rasterio
    from rasterio.transform import from_origin

    data = trained["root"] / "data"
    paths = TrainPaths.under(data, tmp_path / "models", tmp_path / "reports")
    train(tiny_config(image_size=64, phase1_epochs=0, phase2_epochs=1), paths)
    export_onnx(
        paths.best, paths.best.with_name("model.onnx"), tmp_path / "e.json", data / "eurosat.zip", data / "split.csv"
    )

    scene = tmp_path / "scene.tif"
    pixels = np.random.default_rng(0).integers(0, 256, (3, 128, 192), dtype=np.uint8)
    profile = {"driver": "GTiff", "count": 3, "height": 128, "width": 192, "dtype": "uint8", "crs": "EPSG:32633"}
    with rasterio.open(scene, "w", **profile, transform=from_origin(500_000, 5_300_000, 10, 10)) as dst:
        dst.write(pixels)
    script = (
        "import sys; from eurosat_pipeline.platform import nvidia; nvidia.gpu_present = lambda: False\n"
        "from eurosat_pipeline.maps.mapping import make_map\n"
        "from eurosat_pipeline.inference.options import ModelOptions\n"
        f"result, _ = make_map({str(scene)!r}, {str(tmp_path / 'map.tif')!r}, ModelOptions({str(paths.best)!r}))\n"
        "print(result.engine, result.classified, 'torch' in sys.modules, 'timm' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split()[:2] == ["ONNX", "Runtime,"] and out.split()[-3:] == ["6", "False", "False"], out
