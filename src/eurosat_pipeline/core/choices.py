"""The choices a user has when using a trained model, importable without torch (``eurosat
--help`` and argument parsing stay fast): the inference engines and number formats."""

from __future__ import annotations

#: ``--engine``: auto picks ONNX Runtime with the checkpoint's own export on a CPU machine.
ENGINES = ("auto", "pytorch", "onnxruntime")
#: ``--precision``: bf16 is only used when asked for (exact predictions by default).
FORMATS = ("fp32", "bf16")
