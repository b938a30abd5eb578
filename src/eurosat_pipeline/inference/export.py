"""The export stage: the best checkpoint as ONNX (dynamic batch), checked against PyTorch.

The ONNX file carries what inference needs in its metadata (image size, class names, the run's
config), so ``eurosat predict --onnx`` works from that file alone. Parity is measured on real
validation images, preprocessed as for inference: random noise can drive a badly trained network
into logits in the thousands, where float32 rounding alone exceeds any absolute tolerance.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eurosat_pipeline.core.errors import PipelineError
from eurosat_pipeline.core.exports import CHECKPOINT_HASH_KEY
from eurosat_pipeline.core.files import atomic_path, sha256_of, write_json
from eurosat_pipeline.data.loading import ImageSet, load_splits
from eurosat_pipeline.model.augment import eval_transform
from eurosat_pipeline.model.checkpoints import load_classifier
from eurosat_pipeline.model.inference import predict_logits
from eurosat_pipeline.model.preprocessing import Preprocessing

# Parity is judged relative to the logits' scale: float32 rounding grows with the size of the
# activations, and a barely trained network can have logits in the thousands. The tolerance sits
# between float32 rounding and what real export bugs (a missing layer, train-mode BatchNorm or
# dropout, other preprocessing in the graph) cause: both measured in benchmarks/README.md, "ONNX
# export parity".
PARITY_TOLERANCE = 1e-3  # of max(1, largest |logit|)
PARITY_IMAGES = 64
OPSET = 18
INPUT, OUTPUT = "images", "logits"


def export_onnx(
    checkpoint: str | Path,
    onnx_path: str | Path,
    report_path: str | Path,
    archive: str | Path,
    split: str | Path,
    images_file: str | Path | None = None,
) -> dict[str, Any]:
    """Export, then compare ONNX Runtime with PyTorch on validation images; refuse a mismatch."""
    import onnx

    model, config = load_classifier(checkpoint)
    splits = load_splits(archive, split, ("val", "test"), model.data, images_file)
    images = parity_images(splits["val"], model.preprocessing)
    example = images[:2]
    with atomic_path(onnx_path) as tmp:
        write_onnx(model, example, tmp)
        proto = onnx.load(str(tmp))
        metadata = {
            "image_size": str(model.preprocessing.image_size),
            "preprocessing": json.dumps(model.preprocessing.to_dict()),
            "classes": json.dumps(list(model.data.classes)),
            # The classes and bands the model takes, and each band's statistics (predict and map).
            "data": json.dumps(model.data.to_dict()),
            "config": json.dumps(config.to_dict()),
            # predict and map use this file for the checkpoint only while it holds these bytes.
            CHECKPOINT_HASH_KEY: sha256_of(checkpoint),
        }
        for key, value in metadata.items():
            proto.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        report = parity(model, tmp, images)
        report["test_split"] = agreement_on_test_split(model, tmp, splits["test"])
        if not report["ok"]:
            raise PipelineError(
                f"ONNX export of {checkpoint} disagrees with PyTorch: {parity_problem(report)}. Nothing was written."
            )
    write_json(report_path, report)
    return report


def write_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path) -> Path:
    """The plain ONNX graph of ``model`` (dynamic batch axis), without metadata or checks."""
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        verbose=False,
        input_names=[INPUT],
        output_names=[OUTPUT],
        dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1, max=4096)}},
        opset_version=OPSET,
        external_data=False,
    )
    program.save(str(path))
    return path


def parity_images(validation: ImageSet, preprocessing: Preprocessing, count: int = PARITY_IMAGES) -> torch.Tensor:
    """Up to ``count`` validation images, preprocessed exactly as for inference."""
    return eval_transform(preprocessing)(validation[:count], train=False)


def parity(model: torch.nn.Module, onnx_file: str | Path, images: torch.Tensor) -> dict[str, Any]:
    """PyTorch vs ONNX Runtime (CPU, fp32) on ``images``, judged by :func:`judge_parity`."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    # A batch of one and a batch of the rest: the batch axis must really be dynamic.
    batches = [images[:1], images[1:]] if len(images) > 1 else [images]
    expected, actual = [], []
    for batch in batches:
        with torch.no_grad():
            expected.append(model.eval()(batch).numpy())
        actual.append(session.run([OUTPUT], {INPUT: batch.numpy()})[0])
    return {
        **judge_parity(np.concatenate(expected), np.concatenate(actual)),
        "images": len(images),
        "batch_sizes": [len(b) for b in batches],
        "opset": OPSET,
        "onnxruntime": onnxruntime.__version__,
    }


def agreement_on_test_split(model: torch.nn.Module, onnx_file: str | Path, test: ImageSet) -> dict[str, Any]:
    """Top-1 agreement of ONNX Runtime (what predict and map use on a CPU) with fp32 PyTorch on every
    test-split image, fed exactly as ``eurosat map`` feeds tiles."""
    import onnxruntime

    from eurosat_pipeline.inference.engines import OnnxPredictor

    expected = predict_logits(model, test, torch.device("cpu"), precision="fp32").argmax(dim=1).numpy()
    predictor = OnnxPredictor(onnx_file)
    actual = np.concatenate(
        [predictor.classify(test[i : i + 256].numpy()).argmax(axis=1) for i in range(0, len(test), 256)]
    )
    return {
        "images": len(test),
        "top1_agreement": float((actual == expected).mean()),
        "onnxruntime": onnxruntime.__version__,
    }


def judge_parity(expected: np.ndarray, actual: np.ndarray, tolerance: float = PARITY_TOLERANCE) -> dict[str, Any]:
    """Do two sets of logits agree up to float noise?

    The difference is measured relative to the logits' scale (``max(1, largest |logit|)``), and
    the predicted classes must be the same, except where PyTorch's top two are closer than the
    allowed difference (a tie that float noise may break either way).
    """
    if expected.shape != actual.shape:
        return {"ok": False, "shape": [list(expected.shape), list(actual.shape)], "max_abs_diff": float("inf")}
    max_abs = float(np.abs(actual - expected).max())
    scale = max(1.0, float(np.abs(expected).max()))
    rows = np.arange(len(expected))
    top_expected, top_actual = expected.argmax(1), actual.argmax(1)
    # How much better PyTorch rates its own top class than the one ONNX picked (0 where they agree).
    margins = expected[rows, top_expected] - expected[rows, top_actual]
    flips = int((margins > tolerance * scale).sum())
    relative = max_abs / scale
    return {
        "ok": relative <= tolerance and flips == 0,
        "max_abs_diff": max_abs,
        "logit_scale": scale,
        "max_relative_diff": relative,
        "tolerance": tolerance,
        "same_top1": bool((top_expected == top_actual).all()),
        "top1_flips": flips,
    }


def parity_problem(report: dict[str, Any]) -> str:
    """The failed check of a :func:`judge_parity` report, in words."""
    if "shape" in report:
        return f"output shape {report['shape'][1]}, expected {report['shape'][0]}"
    problems = []
    if report["max_relative_diff"] > report["tolerance"]:
        problems.append(
            f"max |logit difference| {report['max_abs_diff']:.2e} is {report['max_relative_diff']:.1e} of the logits' "
            f"scale {report['logit_scale']:.3g} (float noise stays below {report['tolerance']:.0e})"
        )
    if report["top1_flips"]:
        problems.append(f"{report['top1_flips']} image(s) get another predicted class")
    return "; ".join(problems) or "no problem"
