"""The inference engines: class probabilities from a trained model, with its own preprocessing.

:class:`TorchPredictor` runs a checkpoint in PyTorch (the GPU when there is one);
:class:`OnnxPredictor` runs an exported model in ONNX Runtime (the fast CPU engine, which never
imports torch when the images are already the model's input size). :func:`load_predictor` picks
one from a :class:`~eurosat_pipeline.inference.options.ModelOptions` value, the same way for
``eurosat predict``, ``map``, ``serve`` and the region workers. Every engine averages its views
through :func:`eurosat_pipeline.core.views.mean_over_views`.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from eurosat_pipeline.core.dataspec import DataSpec
from eurosat_pipeline.core.errors import PipelineError
from eurosat_pipeline.core.exports import CHECKPOINT_HASH_KEY, EXPORT_NAME, REQUIRED_KEYS
from eurosat_pipeline.core.files import sha256_of
from eurosat_pipeline.core.views import check_view_count, mean_over_views
from eurosat_pipeline.inference.options import DEFAULT_BATCH, ModelOptions
from eurosat_pipeline.model.preprocessing import Preprocessing
from eurosat_pipeline.platform import nvidia

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


class Predictor:
    """Class probabilities for batches of the model's bands, with the model's own preprocessing."""

    preprocessing: Preprocessing
    data: DataSpec
    views: int = 1  # test-time augmentation: probabilities averaged over this many views (core/views.py)
    batch_size: int = DEFAULT_BATCH  # images per engine call, for callers that batch (maps, the server)
    sha256: str | None = None  # the model file's, recorded in the maps' STAC Items (None: not loaded from a file)

    @property
    def image_size(self) -> int:
        return self.preprocessing.image_size

    def classify(self, images: np.ndarray) -> np.ndarray:
        """Probabilities (``N x classes``) for ``N x bands x H x W`` images of one size (the model's
        value type), averaged over :attr:`views` flips and quarter-turns of each image
        (:func:`~eurosat_pipeline.core.views.mean_over_views`). Any size and aspect: the engine
        resizes each view as the model's preprocessing says."""
        return mean_over_views(lambda view: self.probabilities(np.ascontiguousarray(view)), images, self.views)

    def with_views(self, views: int) -> Predictor:
        """The same loaded engine averaging ``views`` views (a shallow copy: the model is shared)."""
        check_view_count(views)
        other = copy.copy(self)
        other.views = views
        return other

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """The engine's probabilities for the images as given (one view)."""
        raise NotImplementedError

    def describe(self) -> str:
        """Which engine, number format and device classify."""
        raise NotImplementedError


def parse_device(text: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``, checked against this machine."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError as err:
        raise PipelineError(f"--device {text}: not a torch device; use cpu, cuda or cuda:N") from err
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise PipelineError(f"--device {text}: torch sees {torch.cuda.device_count()} CUDA device(s) here")
    if device.type not in ("cpu", "cuda"):
        raise PipelineError(f"--device {text}: use cpu, cuda or cuda:N")
    return device


class TorchPredictor(Predictor):
    """The checkpoint in PyTorch, on the GPU when there is one, in fp32 (or bf16 when asked: see
    :mod:`eurosat_pipeline.model.inference`)."""

    def __init__(self, checkpoint: str | Path, device: str | None = None, precision: str = "fp32") -> None:

        from eurosat_pipeline.model.augment import eval_transform
        from eurosat_pipeline.model.checkpoints import load_classifier
        from eurosat_pipeline.model.inference import default_device, inference_format, prepare

        model, _ = load_classifier(checkpoint)
        self.device = parse_device(str(device)) if device else default_device()
        self.format = inference_format(precision)
        self.model = prepare(model, self.device)
        self.preprocessing = self.model.preprocessing
        self.data = self.model.data
        self.transform = eval_transform(self.preprocessing, channels_last=True).to(self.device)

    def describe(self) -> str:
        return f"PyTorch, {self.format.dtype} on {self.device} ({self.format.reason}){_views_note(self.views)}"

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        import torch  # not at the top: the ONNX Runtime path never imports it

        from eurosat_pipeline.data.imagefile import as_torch_integers

        batch = as_torch_integers(images)
        # The uint8 tiles travel to the device, and are resized and normalised there: at 224 px a
        # batch of 256 is 3 MB as uint8 against 150 MB as float32.
        if self.device.type == "cuda":
            batch = batch.pin_memory()
        batch = batch.to(self.device, non_blocking=True)
        with torch.inference_mode(), self.format.autocast(self.device):
            logits = self.model(self.transform(batch, train=False))
        return logits.float().softmax(dim=1).cpu().numpy()


class OnnxPredictor(Predictor):
    """An exported model in ONNX Runtime (fp32). When the images are already the model's input size
    (64 px tiles for a 64 px model) they are normalised in NumPy and neither torch nor timm is
    imported: the command then starts in about a second and stays small in memory."""

    def __init__(self, onnx_file: str | Path, threads: int | None = None) -> None:
        try:
            import onnxruntime
        except ImportError as err:
            raise PipelineError(
                "--onnx needs onnxruntime: pip install 'eurosat-pipeline[export]' (make install has it)"
            ) from err
        if not Path(onnx_file).is_file():
            raise PipelineError(f"{onnx_file}: ONNX file not found. Run `dvc repro export` first.")
        providers = [
            p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in onnxruntime.get_available_providers()
        ]
        if "CUDAExecutionProvider" not in providers and nvidia.gpu_present():
            log.warning(
                "--onnx runs on the CPU: the installed onnxruntime (the lock's) has no CUDA provider. "
                "Leave out --onnx to classify with the checkpoint on the GPU, or install onnxruntime-gpu "
                "in place of onnxruntime."
            )
        options = onnxruntime.SessionOptions()
        if threads:  # by default a session takes every core: two worker processes would oversubscribe them
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(str(onnx_file), options, providers=providers)
        except Exception as err:
            raise PipelineError(f"{onnx_file}: not a loadable ONNX model ({err})") from err
        self.metadata = self.session.get_modelmeta().custom_metadata_map
        if "image_size" not in self.metadata:
            raise PipelineError(f"{onnx_file}: not exported by this pipeline (no image_size metadata)")
        missing = [key for key in REQUIRED_KEYS if key not in self.metadata]
        if missing:
            raise PipelineError(
                f"{onnx_file}: no stored {' or '.join(missing)}: it was exported by an older export stage; "
                "run `dvc repro export`."
            )
        self.preprocessing = Preprocessing.from_dict(json.loads(self.metadata["preprocessing"]))
        self.data = DataSpec.from_dict(json.loads(self.metadata["data"]))
        self.input_name = self.session.get_inputs()[0].name
        value_scale = self.preprocessing.value_scale
        shape = (1, self.preprocessing.bands, 1, 1)
        self.mean = np.array(self.preprocessing.mean, dtype=np.float32).reshape(shape) * value_scale
        self.scale = 1 / (np.array(self.preprocessing.std, dtype=np.float32).reshape(shape) * value_scale)

    def describe(self) -> str:
        return f"ONNX Runtime, fp32 on {', '.join(self.session.get_providers())}{_views_note(self.views)}"

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        if images.shape[-2:] == (self.image_size, self.image_size):
            inputs = (images.astype(np.float32) - self.mean) * self.scale
        else:  # another size: resized exactly as in training, by the same torch transform
            import torch

            from eurosat_pipeline.model.augment import eval_transform

            inputs = eval_transform(self.preprocessing)(torch.from_numpy(images), train=False).numpy()
        (logits,) = self.session.run(None, {self.input_name: inputs})
        return softmax(logits)


def _views_note(views: int) -> str:
    return f", {views} views averaged" if views > 1 else ""


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def load_predictor(options: ModelOptions) -> Predictor:
    """The engine that classifies for predict, map and serve, as ``options`` say (:func:`choose_engine`),
    averaging ``options.views`` views of each image. With ``options.sha256``, the model file must
    have that hash: it is checked before the file is loaded (a region worker loads what the command hashed)."""
    if options.sha256 is not None:
        verify_model_file(options.model_file, options.sha256)
    if options.threads and options.engine != "onnxruntime" and not options.onnx_file:
        import torch  # PyTorch's threads are the process's: a worker process sets its share once

        torch.set_num_threads(options.threads)
    predictor = choose_engine(options)
    predictor.views, predictor.batch_size = options.views, options.batch_size
    predictor.sha256 = options.sha256 or sha256_of(options.model_file)
    return predictor


def verify_model_file(path: Path, sha256: str) -> None:
    """Nothing when ``path`` holds the bytes of ``sha256``; an error naming both hashes otherwise."""
    if not path.is_file():
        raise PipelineError(f"{path}: model file not found")
    found = sha256_of(path)
    if found != sha256:
        raise PipelineError(
            f"{path}: sha256 {found} is not the model's {sha256}: the file changed after the command "
            "hashed it (or another file is at that path here); refusing to classify with it"
        )


def choose_engine(options: ModelOptions) -> Predictor:
    """The engine for ``options``.

    ``onnx_file`` given: ONNX Runtime with it. Otherwise ``engine``: ``pytorch`` runs the checkpoint
    on ``device`` (default: the GPU when there is one) in ``precision``; ``onnxruntime`` runs the
    checkpoint's own export (``model.onnx`` beside it, whose metadata holds the checkpoint's sha256);
    ``auto`` takes that export on a machine without an NVIDIA GPU when it exists and nothing
    PyTorch-specific was asked for (a device, bf16): the fastest engine on a CPU, fp32 like
    PyTorch's default, and the command never imports torch. PyTorch otherwise.
    """
    checkpoint = options.checkpoint
    if options.onnx_file:
        return OnnxPredictor(options.onnx_file, options.threads)
    if options.engine == "onnxruntime":
        export = export_of(checkpoint, options.threads)
        if export is None:
            beside = Path(checkpoint).with_name(EXPORT_NAME)
            raise PipelineError(
                f"--engine onnxruntime: no ONNX export of {checkpoint} beside it ({beside} with the checkpoint's "
                f"hash). Make one with `eurosat export --checkpoint {checkpoint} --out {beside}`"
                " (or `dvc repro export`)."
            )
        return export
    wants_torch = (
        options.engine == "pytorch" or options.device is not None or options.precision != "fp32" or nvidia.gpu_present()
    )
    export = None if wants_torch else export_of(checkpoint, options.threads)
    return export if export is not None else TorchPredictor(checkpoint, options.device, options.precision)


def export_of(checkpoint: str | Path, threads: int | None = None) -> OnnxPredictor | None:
    """The checkpoint's ONNX export beside it, if onnxruntime is installed and the export is of these
    very bytes (a retrained checkpoint with a stale export gets None)."""
    checkpoint = Path(checkpoint)
    candidate = checkpoint.with_name(EXPORT_NAME)
    if not (checkpoint.is_file() and candidate.is_file()) or importlib.util.find_spec("onnxruntime") is None:
        return None
    predictor = OnnxPredictor(candidate, threads)
    return predictor if predictor.metadata.get(CHECKPOINT_HASH_KEY) == sha256_of(checkpoint) else None
