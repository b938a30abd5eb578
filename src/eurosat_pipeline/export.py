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

from eurosat_pipeline.augment import eval_transform
from eurosat_pipeline.checkpoints import load_classifier
from eurosat_pipeline.dataset import CLASSES
from eurosat_pipeline.errors import PipelineError
from eurosat_pipeline.files import atomic_path, write_json
from eurosat_pipeline.loading import load_splits
from eurosat_pipeline.preprocessing import Preprocessing

PARITY_TOLERANCE = 1e-4
PARITY_IMAGES = 64
OPSET = 18
INPUT, OUTPUT = "images", "logits"


def export_onnx(
    checkpoint: str | Path, onnx_path: str | Path, report_path: str | Path, archive: str | Path, split: str | Path
) -> dict[str, Any]:
    """Export, then compare ONNX Runtime with PyTorch on validation images; refuse a mismatch."""
    import onnx

    model, config = load_classifier(checkpoint)
    images = parity_images(archive, split, model.preprocessing)
    example = images[:2]
    with atomic_path(onnx_path) as tmp:
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
        program.save(str(tmp))
        proto = onnx.load(str(tmp))
        metadata = {
            "image_size": str(model.preprocessing.image_size),
            "preprocessing": json.dumps(model.preprocessing.to_dict()),
            "classes": json.dumps(list(CLASSES)),
            "config": json.dumps(config.to_dict()),
        }
        for key, value in metadata.items():
            proto.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        report = parity(model, tmp, images)
        if report["max_abs_diff"] > PARITY_TOLERANCE:
            raise PipelineError(
                f"ONNX export of {checkpoint} disagrees with PyTorch: max |logit difference| "
                f"{report['max_abs_diff']:.2e} > {PARITY_TOLERANCE:.0e}. Nothing was written."
            )
    write_json(report_path, report)
    return report


def parity_images(
    archive: str | Path, split: str | Path, preprocessing: Preprocessing, count: int = PARITY_IMAGES
) -> torch.Tensor:
    """Up to ``count`` validation images, preprocessed exactly as for inference."""
    images = load_splits(archive, split, ("val",))["val"].images[:count]
    return eval_transform(preprocessing)(images, train=False)


def parity(model: torch.nn.Module, onnx_file: str | Path, images: torch.Tensor) -> dict[str, Any]:
    """Max absolute logit difference between PyTorch and ONNX Runtime (CPU, fp32)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    # A batch of one and a batch of the rest: the batch axis must really be dynamic.
    batches = [images[:1], images[1:]] if len(images) > 1 else [images]
    worst, agree = 0.0, True
    for batch in batches:
        with torch.no_grad():
            expected = model.eval()(batch).numpy()
        (actual,) = session.run([OUTPUT], {INPUT: batch.numpy()})
        worst = max(worst, float(np.abs(actual - expected).max()))
        agree &= bool((actual.argmax(1) == expected.argmax(1)).all())
    return {
        "max_abs_diff": worst,
        "tolerance": PARITY_TOLERANCE,
        "same_top1": agree,
        "images": len(images),
        "batch_sizes": [len(b) for b in batches],
        "opset": OPSET,
        "onnxruntime": onnxruntime.__version__,
    }
