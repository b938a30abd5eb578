"""What the export stage writes into an ONNX file, and where, for the readers of that file
(``eurosat predict`` and ``eurosat map``, which must not import torch to find out): the file name
beside its checkpoint and the metadata keys."""

from __future__ import annotations

#: Where the export stage writes a checkpoint's ONNX file: beside it.
EXPORT_NAME = "model.onnx"
#: ONNX metadata: the sha256 of the checkpoint the file was exported from.
CHECKPOINT_HASH_KEY = "checkpoint_sha256"
#: ONNX metadata a reader needs (JSON values but the size): without them it cannot preprocess.
REQUIRED_KEYS = ("image_size", "preprocessing", "data")
