"""The export stage: the best checkpoint as ONNX (dynamic batch), checked against PyTorch.

The ONNX file carries what inference needs in its metadata (image size, class names, the run's
config), so ``eurosat predict --onnx`` works from that file alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eurosat_pipeline.checkpoints import load_classifier
from eurosat_pipeline.dataset import CLASSES
from eurosat_pipeline.errors import PipelineError
from eurosat_pipeline.files import atomic_path, write_json

PARITY_TOLERANCE = 1e-4
OPSET = 18
INPUT, OUTPUT = "images", "logits"


def export_onnx(checkpoint: str | Path, onnx_path: str | Path, report_path: str | Path) -> dict[str, Any]:
    """Export, then compare ONNX Runtime with PyTorch on the same inputs; refuse a mismatch."""
    import onnx

    model, config = load_classifier(checkpoint)
    size = config.image_size
    example = torch.randn(2, 3, size, size)
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
            "image_size": str(size),
            "classes": json.dumps(list(CLASSES)),
            "config": json.dumps(config.to_dict()),
        }
        for key, value in metadata.items():
            proto.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        report = parity(model, tmp, size)
        if report["max_abs_diff"] > PARITY_TOLERANCE:
            raise PipelineError(
                f"ONNX export of {checkpoint} disagrees with PyTorch: max |logit difference| "
                f"{report['max_abs_diff']:.2e} > {PARITY_TOLERANCE:.0e}. Nothing was written."
            )
    write_json(report_path, report)
    return report


def parity(
    model: torch.nn.Module, onnx_file: str | Path, size: int, batches: tuple[int, ...] = (1, 7)
) -> dict[str, Any]:
    """Max absolute logit difference between PyTorch and ONNX Runtime (CPU, fp32)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for batch in batches:  # more than one batch size: the batch axis must really be dynamic
        images = torch.randn(batch, 3, size, size, generator=generator)
        with torch.no_grad():
            expected = model.eval()(images).numpy()
        (actual,) = session.run([OUTPUT], {INPUT: images.numpy()})
        worst = max(worst, float(np.abs(actual - expected).max()))
    return {
        "max_abs_diff": worst,
        "tolerance": PARITY_TOLERANCE,
        "batch_sizes": list(batches),
        "opset": OPSET,
        "onnxruntime": onnxruntime.__version__,
    }
