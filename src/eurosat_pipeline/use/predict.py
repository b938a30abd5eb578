"""``eurosat predict``: the top classes for image files and folders, from a checkpoint or ONNX file.

Images of any size are accepted and preprocessed as in validation (resize to the model's
``image_size``, its normalisation; both stored with the model). They must hold the model's bands:
8-bit RGB models take JPEG, PNG and TIFF files; models of other bands take (Geo)TIFF or PNG patches
like those they were trained on, whose bands are found by name (GeoTIFF band descriptions) or by
position. When images sit in folders named after the model's classes (as in the dataset), the
command also says how many it got right.
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TextIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from eurosat_pipeline.core.choices import ENGINES
from eurosat_pipeline.core.dataspec import DataSpec
from eurosat_pipeline.core.errors import PipelineError
from eurosat_pipeline.core.exports import CHECKPOINT_HASH_KEY, EXPORT_NAME, REQUIRED_KEYS
from eurosat_pipeline.core.files import csv_text, sha256_of, write_text
from eurosat_pipeline.core.limits import MAX_IMAGE_PIXELS, pixel_problem
from eurosat_pipeline.core.views import average_views, check_view_count, with_views
from eurosat_pipeline.model.preprocessing import Preprocessing
from eurosat_pipeline.platform import nvidia

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}
MAX_LISTED = 20
PIXELS_SETTING = "--max-pixels"


@dataclass(frozen=True)
class Prediction:
    path: Path
    classes: list[str]
    probabilities: list[float]
    #: The class named by the image's folder, when a folder is named after one of the model's classes.
    expected: str | None = None


def expected_class(path: Path, classes: Sequence[str]) -> str | None:
    return next((part for part in reversed(path.parent.parts) if part in classes), None)


def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    found, missing = [], []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            found.append(item)
        else:
            missing.append(str(item))
    if missing:
        raise PipelineError(f"not found: {', '.join(missing)}")
    if not found:
        raise PipelineError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {', '.join(map(str, inputs))}")
    return found


def read_image(path: Path, data: DataSpec, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """The model's bands of an image file as ``bands x H x W`` of the model's value type; an image
    over ``max_pixels`` is refused from its header, before any pixel is decoded."""
    if _read_by_pil(path.name, data):
        return read_rgb(path, max_pixels)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise PipelineError(f"{path}: {err}") from err
    return read_raster(raw, str(path), data, max_pixels)


def read_image_bytes(raw: bytes, name: str, data: DataSpec, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """:func:`read_image` for a file held in memory (an upload to ``eurosat serve``): the same readers
    and checks, with ``name`` (the file's name: its suffix picks the reader) in the messages."""
    if _read_by_pil(name, data):
        return read_rgb(io.BytesIO(raw), max_pixels, name)
    return read_raster(raw, name, data, max_pixels)


def _read_by_pil(name: str, data: DataSpec) -> bool:
    """8-bit RGB models read JPEG and PNG with PIL; TIFF and other models' files go through GDAL."""
    return data.is_rgb8 and Path(name).suffix.lower() not in (".tif", ".tiff")


def read_raster(raw: bytes, name: str, data: DataSpec, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """The model's bands of a file's bytes, read by :mod:`eurosat_pipeline.data.imagefile`."""
    from eurosat_pipeline.data.imagefile import ImageProblem, PixelLimit, decode, read_header

    try:
        header = read_header(raw, PixelLimit(max_pixels, PIXELS_SETTING))
        pixels = decode(raw, header)
    except (ImageProblem, OSError) as err:
        raise PipelineError(f"{name}: {err}") from err
    if header.dtype != data.dtype:
        raise PipelineError(f"{name}: has {header.dtype} values; the model was trained on {data.dtype} images")
    return pixels[model_bands(header.band_names, header.bands, data, name)]


def model_bands(names: Sequence[str] | None, count: int, data: DataSpec, where: str) -> list[int]:
    """0-based positions of the model's bands in a file (:meth:`DataSpec.positions_in`), or an error
    that names what the model takes."""
    found = data.positions_in(names, count)
    if found is not None:
        return found
    raise PipelineError(
        f"{where}: has {count} band(s){' (' + ', '.join(names) + ')' if names else ''}; the model takes "
        f"{data.in_chans} ({', '.join(data.shown_bands())}) of the training data's {data.data_bands}: give it "
        f"patches with those {data.data_bands} bands, or with exactly the model's {data.in_chans} in that order"
    )


def read_rgb(path: Path | BinaryIO, max_pixels: int = MAX_IMAGE_PIXELS, name: str | None = None) -> np.ndarray:
    """A 3-band image as uint8 ``3 x H x W``; palette images are expanded, anything else refused.
    ``path`` may be an open file, ``name`` then names it in the messages."""
    where = name or path
    try:
        with Image.open(path) as image:  # the header only: the size is known before decoding
            problem = pixel_problem(*image.size, max_pixels, PIXELS_SETTING)
            if problem:
                raise PipelineError(f"{where}: {problem}")
            image.load()
            bands = image.getbands()
            if image.mode == "P":
                image, bands = image.convert("RGB"), ("R", "G", "B")
            if image.mode != "RGB":
                raise PipelineError(
                    f"{where}: has {len(bands)} band(s) ({image.mode}); the model takes 3-band RGB images "
                    "(EuroSAT RGB, not the 13-band multispectral version)"
                )
            return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))
    except Image.DecompressionBombError as err:  # over twice PIL's own limit: refused by its open
        raise PipelineError(f"{where}: refused before decoding: {err}") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise PipelineError(f"{where}: cannot be read as an image ({_unreadable(err)})") from err


def _unreadable(err: Exception) -> str:
    """PIL's reason, without the repr of an in-memory file it names when it recognises no format."""
    return "not a format PIL recognises" if isinstance(err, UnidentifiedImageError) else str(err)


class Predictor:
    """Class probabilities for batches of the model's bands, with the model's own preprocessing."""

    preprocessing: Preprocessing
    data: DataSpec
    views: int = 1  # test-time augmentation: probabilities averaged over this many views (core/views.py)

    @property
    def image_size(self) -> int:
        return self.preprocessing.image_size

    def classify(self, images: np.ndarray) -> np.ndarray:
        """Probabilities (``N x classes``) for ``N x bands x H x W`` images of one size (the model's value type),
        averaged over :attr:`views` flips and quarter-turns of each image."""
        if self.views == 1:
            return self.probabilities(images)
        try:
            viewed = with_views(images, self.views)
        except ValueError as err:
            raise PipelineError(f"--views {self.views}: {err}") from err
        # The engine sees the views in chunks of the caller's batch size: memory stays what it chose.
        chunks = [
            self.probabilities(viewed[start : start + len(images)]) for start in range(0, len(viewed), len(images))
        ]
        return average_views(np.concatenate(chunks), self.views)

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

    def __init__(self, onnx_file: str | Path) -> None:
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
        try:
            self.session = onnxruntime.InferenceSession(str(onnx_file), providers=providers)
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


def predict(
    inputs: Sequence[str | Path],
    checkpoint: str | Path = "models/best.ckpt",
    onnx_file: str | Path | None = None,
    top_k: int = 3,
    batch_size: int = 256,
    device: str | None = None,
    precision: str = "fp32",
    engine: str = "auto",
    max_pixels: int = MAX_IMAGE_PIXELS,
    views: int = 1,
) -> list[Prediction]:
    paths = find_images(inputs)
    model = load_predictor(checkpoint, onnx_file, device, precision, engine, views)
    images, problems = [], []
    for path in paths:
        try:
            images.append(read_image(path, model.data, max_pixels))
        except PipelineError as err:
            problems.append(str(err))
    if problems:
        listed = "\n  - ".join(problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise PipelineError(f"{len(problems)} input(s) cannot be used:\n  - {listed}{more}")
    probabilities = classify_any_sizes(model, images, batch_size)
    classes = model.data.classes
    return [
        Prediction(path, names, shares, expected_class(path, classes))
        for path, (names, shares) in zip(paths, top_classes(probabilities, classes, top_k), strict=True)
    ]


def top_classes(probabilities: np.ndarray, classes: Sequence[str], top_k: int) -> list[tuple[list[str], list[float]]]:
    """Per image (a row of ``probabilities``), its ``top_k`` classes and their probabilities, most likely first."""
    k = max(1, min(top_k, len(classes)))
    order = np.argsort(-probabilities, axis=1)[:, :k]
    return [([classes[i] for i in row], [float(probabilities[n, i]) for i in row]) for n, row in enumerate(order)]


def classify_any_sizes(model: Predictor, images: Sequence[np.ndarray], batch_size: int) -> np.ndarray:
    """Probabilities for uint8 images of any sizes, in their order: images of one size go in batches."""
    probabilities = np.empty((len(images), model.data.num_classes), dtype=np.float32)
    by_size: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        by_size.setdefault(tuple(image.shape), []).append(index)
    for indices in by_size.values():
        for start in range(0, len(indices), batch_size):
            chosen = indices[start : start + batch_size]
            probabilities[chosen] = model.classify(np.stack([images[i] for i in chosen]))
    return probabilities


def load_predictor(
    checkpoint: str | Path = "models/best.ckpt",
    onnx_file: str | Path | None = None,
    device: str | None = None,
    precision: str = "fp32",
    engine: str = "auto",
    views: int = 1,
) -> Predictor:
    """The engine that classifies for predict, map and serve, averaging ``views`` flips and turns of
    each image (core/views.py). Which engine: see :func:`load_engine`."""
    try:
        check_view_count(views)
    except ValueError as err:
        raise PipelineError(str(err)) from err
    predictor = load_engine(checkpoint, onnx_file, device, precision, engine)
    predictor.views = views
    return predictor


def load_engine(
    checkpoint: str | Path = "models/best.ckpt",
    onnx_file: str | Path | None = None,
    device: str | None = None,
    precision: str = "fp32",
    engine: str = "auto",
) -> Predictor:
    """The engine that classifies for predict and map.

    ``onnx_file`` given: ONNX Runtime with it. Otherwise ``engine``: ``pytorch`` runs the checkpoint
    on ``device`` (default: the GPU when there is one) in ``precision``; ``onnxruntime`` runs the
    checkpoint's own export (``model.onnx`` beside it, whose metadata holds the checkpoint's sha256);
    ``auto`` takes that export on a machine without an NVIDIA GPU when it exists and nothing
    PyTorch-specific was asked for (a device, bf16): the fastest engine on a CPU, fp32 like
    PyTorch's default, and the command never imports torch. PyTorch otherwise.
    """
    if engine not in ENGINES:
        raise PipelineError(f"--engine {engine}: choose one of {', '.join(ENGINES)}")
    if onnx_file:
        return OnnxPredictor(onnx_file)
    if engine == "onnxruntime":
        export = export_of(checkpoint)
        if export is None:
            beside = Path(checkpoint).with_name(EXPORT_NAME)
            raise PipelineError(
                f"--engine onnxruntime: no ONNX export of {checkpoint} beside it ({beside} with the checkpoint's "
                f"hash). Make one with `eurosat export --checkpoint {checkpoint} --out {beside}`"
                " (or `dvc repro export`)."
            )
        return export
    wants_torch = engine == "pytorch" or device is not None or precision != "fp32" or nvidia.gpu_present()
    export = None if wants_torch else export_of(checkpoint)
    return export if export is not None else TorchPredictor(checkpoint, device, precision)


def export_of(checkpoint: str | Path) -> OnnxPredictor | None:
    """The checkpoint's ONNX export beside it, if onnxruntime is installed and the export is of these
    very bytes (a retrained checkpoint with a stale export gets None)."""
    checkpoint = Path(checkpoint)
    candidate = checkpoint.with_name(EXPORT_NAME)
    if not (checkpoint.is_file() and candidate.is_file()) or importlib.util.find_spec("onnxruntime") is None:
        return None
    predictor = OnnxPredictor(candidate)
    return predictor if predictor.metadata.get(CHECKPOINT_HASH_KEY) == sha256_of(checkpoint) else None


def agreement(predictions: Iterable[Prediction]) -> tuple[int, int]:
    """(correct, labelled): predictions whose top class matches the class named by their folder."""
    labelled = [p for p in predictions if p.expected]
    return sum(p.classes[0] == p.expected for p in labelled), len(labelled)


def render(predictions: list[Prediction], fmt: str) -> str:
    if fmt == "json":
        rows = [
            {
                "path": str(p.path),
                "predictions": [
                    {"class": c, "probability": round(q, 6)} for c, q in zip(p.classes, p.probabilities, strict=True)
                ],
            }
            for p in predictions
        ]
        return json.dumps(rows, indent=2) + "\n"
    if fmt == "csv":
        k = len(predictions[0].classes)
        header = ["path", *[f"{kind}{i}" for i in range(1, k + 1) for kind in ("class", "probability")]]
        rows = (
            [str(p.path), *[v for c, q in zip(p.classes, p.probabilities, strict=True) for v in (c, f"{q:.6f}")]]
            for p in predictions
        )
        return csv_text(header, rows)
    lines = []
    for p in predictions:
        top = "  ".join(f"{c} {q:.1%}" for c, q in zip(p.classes, p.probabilities, strict=True))
        lines.append(f"{p.path}  {top}")
    return "\n".join(lines) + "\n"


def emit(predictions: list[Prediction], fmt: str, output: str | None, stream: TextIO = sys.stdout) -> None:
    text = render(predictions, fmt)
    if output:
        write_text(output, text)
    else:
        stream.write(text)
    correct, labelled = agreement(predictions)
    if labelled:
        print(
            f"{len(predictions)} image(s); {correct}/{labelled} ({correct / labelled:.1%}) predicted as the "
            "class their folder names",
            file=sys.stderr,
        )
    else:
        print(f"{len(predictions)} image(s) classified", file=sys.stderr)
