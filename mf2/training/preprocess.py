"""Training data for MF²: load MFA-schema datasets, caption them, and run the image processor once per example.

Face detection, landmarks and alignment are by far the slowest part of reading a face image, and their result never
changes between epochs. `preprocess_dataset` therefore runs `MF2ImageProcessor` once per example through
`datasets.map` and stores the aligned crop, the AU boxes and the landmarks in an Arrow file in the cache directory,
named by a fingerprint of the input data and of every processor option: the next run (another epoch, a resumed run,
fine-tuning, evaluation) reads the file instead of detecting faces again.

Rows without a detectable face follow `no_face`:

- `"fallback"` (default): the image is taken as a typical detector face crop (the face placed as
  `mf2.au_regions.detector_crop_landmarks` says) and aligned like a found face; the row keeps `face_found=False` so that it can be counted or filtered later.
- `"skip"`: the row is removed (`"drop"`, the old spelling, still works with a `FutureWarning`).
- `"error"`: pre-processing stops at the first such row.

The datasets come from data specs (`mf2.training.data_specs`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Array2D, Array3D, Dataset, Features, List, Value, concatenate_datasets
from PIL import Image

from ..au_regions import default_au_boxes
from ..data.sources import content_fingerprint
from ..face_search import FALLBACK_LABEL, resolve_no_face
from ..image_processing_mf2 import MF2ImageProcessor
from .data_specs import DataSpec, load_source

logger = logging.getLogger(__name__)

PREPROCESS_VERSION = 4
"""Bumped whenever the stored columns change, or how they are made (4: dlib's landmarks averaged over the boxes around
the face, `mf2.landmark_settling`), so that old cache files are never read."""

PROCESSED_COLUMNS: tuple[str, ...] = (
    "pixel_values",
    "au_boxes",
    "landmarks",
    "face_box",
    "landmark_backend",
    "face_found",
)
ID_COLUMN = "example_id"


def fill_template_captions(dataset: Dataset, name: str = "data") -> Dataset:
    """Caption a dataset whose caption columns are all empty with `mf2.data`'s offline `TemplateCaptioner`.

    Datasets that already carry captions (for example LLM captions) are returned unchanged.
    """
    from ..data.caption_dataset import caption_split
    from ..data.captions import TemplateCaptioner

    if len(dataset) == 0:
        return dataset
    if "emotion_caption" in dataset.column_names:
        probe = dataset.select_columns(["emotion_caption", "au_caption"])
        if any(probe["emotion_caption"]) or any(any(row) for row in probe["au_caption"]):
            return dataset
    return caption_split(dataset, TemplateCaptioner(), name=name, progress=False)


# --------------------------------------------------------------------------------------------------- preprocessing
def _as_image(value: Any) -> Any:
    """A `datasets` image cell (decoded PIL, or `{"bytes", "path"}` when not decoded) as something the processor reads."""
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return Image.open(io.BytesIO(value["bytes"]))
        return value["path"]
    return value


# Options that leave the output as it is: the worker count, and the `auto_map` that `save_pretrained` adds to the
# processor it saves (a run resumed in a new process, whose processor was never saved, keeps its caches).
_NOT_IN_THE_KEY = ("num_workers", "auto_map")


def processor_fingerprint(image_processor: MF2ImageProcessor) -> dict[str, Any]:
    """The processor options that change its output (worker count does not), and the content of the files its
    back-end options name (`backend_kwargs={"predictor_path": ...}`: a retrained predictor at the same path places
    other landmarks)."""
    options = image_processor.to_dict()
    fingerprint = {key: value for key, value in sorted(options.items()) if key not in _NOT_IN_THE_KEY}
    named = sorted((image_processor.backend_kwargs or {}).items())
    files = {key: content_fingerprint([value]) for key, value in named if _is_file(value)}
    if files:  # only then: the keys of every cache made without such options stay as they were
        fingerprint["backend_files"] = files
    return fingerprint


def _is_file(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike)) and os.path.isfile(value)


def _processed_features(dataset: Dataset, options: dict[str, Any], pixel_format: str, keep_image: bool) -> Features:
    """The output schema: the input columns (less `image` unless kept) plus fixed-shape `PROCESSED_COLUMNS`."""
    size, num_aus = options["size"], len(options["au_names"])
    # Boxes per AU, for the fixed-shape column (the canonical face has the same layout as any detected one).
    boxes_per_au = np.asarray(default_au_boxes(options["au_names"])).shape[1]
    features = Features({name: feature for name, feature in dataset.features.items() if keep_image or name != "image"})
    features["pixel_values"] = Array3D(shape=(3, size, size), dtype=pixel_format)
    features["au_boxes"] = Array3D(shape=(num_aus, boxes_per_au, 4), dtype="float32")
    features["landmarks"] = Array2D(shape=(68, 2), dtype="float32")
    features["face_box"] = List(Value("float32"), length=4)
    features["landmark_backend"] = Value("string")
    features["face_found"] = Value("bool")
    return features


def _batch_processor(
    image_processor: MF2ImageProcessor, call_options: dict[str, Any], pixel_format: str, keep_image: bool
) -> Callable[[dict[str, list]], dict[str, Any]]:
    """The `datasets.map` function: one processor call per batch, one face per image, outputs as column arrays."""

    def process(batch: dict[str, list]) -> dict[str, Any]:
        images = [_as_image(value) for value in batch["image"]]
        output = image_processor(images, **call_options)
        if list(output["image_index"]) != list(range(len(images))):
            raise RuntimeError("MF2ImageProcessor returned a face count different from one per image.")
        pixels = np.asarray(output["pixel_values"], dtype=np.float32)
        if pixel_format == "uint8":
            pixels = np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)
        labels = list(output["landmark_backend"])
        result = {key: value for key, value in batch.items() if keep_image or key != "image"}
        result.update(
            pixel_values=pixels,
            au_boxes=np.asarray(output["au_boxes"], dtype=np.float32),
            landmarks=np.asarray(output["landmarks"], dtype=np.float32),
            face_box=np.asarray(output["face_boxes"], dtype=np.float32),
            landmark_backend=labels,
            face_found=[label != FALLBACK_LABEL for label in labels],
        )
        return result

    return process


def _preprocess_fingerprint(
    dataset: Dataset, image_processor: MF2ImageProcessor, pixel_format: str, no_face: str, keep_image: bool
) -> str:
    """The cache key: a hash of the input data, every output-changing option and `PREPROCESS_VERSION`.

    `no_face` is the processor's own setting ("fallback" or "error"): "skip" filters afterwards, from the same file."""
    payload = json.dumps(
        {
            "data": dataset._fingerprint,
            "processor": processor_fingerprint(image_processor),
            "version": PREPROCESS_VERSION,
            "pixel_format": pixel_format,
            "no_face": no_face,
            "keep_image": keep_image,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def _cache_file(cache_dir: str | Path | None, fingerprint: str) -> str | None:
    """`<cache_dir>/preprocess-<fingerprint>.arrow` (the folder created), or `None` for the `datasets` default."""
    if cache_dir is None:
        return None
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(Path(cache_dir))
    return str(Path(cache_dir) / f"preprocess-{fingerprint}.arrow")


STALE_TEMPORARY_SECONDS = 3600
"""Age from which a `datasets` temporary (`tmp*`, renamed into place when whole) in the cache folder is a killed run's:
a running pre-processing writes to its own every few hundred rows."""


def _remove_stale_temporaries(cache_dir: Path) -> None:
    """Remove the half-written files that killed pre-processing runs left in `cache_dir` (never read, never renamed;
    at full size of the data each)."""
    now = time.time()
    for path in cache_dir.glob("tmp*"):
        with contextlib.suppress(OSError):  # removed by another process meanwhile
            if path.is_file() and now - path.stat().st_mtime > STALE_TEMPORARY_SECONDS:
                path.unlink()


def _drop_faceless(processed: Dataset, cache_file: str | None, fingerprint: str) -> Dataset:
    """`no_face="skip"`: the rows with a detected face (cached next to the pre-processed file)."""
    before = len(processed)
    processed = processed.filter(
        lambda found: found,
        input_columns=["face_found"],
        batched=False,
        cache_file_name=None if cache_file is None else cache_file.replace(".arrow", "-faces.arrow"),
        new_fingerprint=f"{fingerprint}-faces",
    )
    logger.info("Dropped %d of %d rows without a detected face.", before - len(processed), before)
    return processed


def preprocess_dataset(
    dataset: Dataset,
    image_processor: MF2ImageProcessor,
    cache_dir: str | Path | None = None,
    *,
    no_face: str = "fallback",
    pixel_format: str = "uint8",
    batch_size: int = 64,
    num_proc: int | None = None,
    keep_image: bool = False,
    desc: str | None = None,
) -> Dataset:
    """Run `image_processor` once per row and store its output as columns (cached on disk).

    Added columns: `pixel_values` (`(3, S, S)`, uint8 un-normalised or float32 normalised, per `pixel_format`),
    `au_boxes` (`(A, k, 4)` normalised xyxy in the crop), `landmarks` (`(68, 2)`, original image pixels), `face_box`,
    `landmark_backend` (the back-end that placed the face, or `"template-fallback"`) and `face_found`.
    The `image` column is removed unless `keep_image`.

    Args:
        dataset: rows with an `image` column (PIL images or `{"bytes", "path"}` dicts).
        image_processor: the processor; its `size`, `landmark_backend`, normalisation and AU names are used.
        cache_dir: folder of the cached Arrow file (`preprocess-<fingerprint>.arrow`). `None` keeps the result in
            the `datasets` cache of the input (or in memory for an in-memory input).
        no_face: "fallback", "skip" or "error" (module docstring; "drop" is the deprecated spelling of "skip").
        pixel_format: "uint8" (4x smaller; `MF2DataCollator` normalises) or "float32" (normalised here).
        batch_size, num_proc: of the `datasets.map` call.
    """
    no_face = resolve_no_face(no_face)
    if pixel_format not in ("uint8", "float32"):
        raise ValueError(f"pixel_format must be 'uint8' or 'float32', got {pixel_format!r}.")
    features = _processed_features(dataset, image_processor.resolve_options(), pixel_format, keep_image)
    call_options = {
        "return_tensors": None,
        "do_normalize": pixel_format == "float32",
        "multiple_faces": "largest",
        "no_face": "error" if no_face == "error" else "fallback",
    }
    fingerprint = _preprocess_fingerprint(dataset, image_processor, pixel_format, call_options["no_face"], keep_image)
    cache_file = _cache_file(cache_dir, fingerprint)
    processed = dataset.map(
        _batch_processor(image_processor, call_options, pixel_format, keep_image),
        batched=True,
        batch_size=batch_size,
        num_proc=num_proc,
        remove_columns=dataset.column_names,
        features=features,
        cache_file_name=cache_file,
        new_fingerprint=fingerprint,
        desc=desc or "detect, align, AU boxes",
    )
    if no_face == "skip":
        processed = _drop_faceless(processed, cache_file, fingerprint)
    return processed


def face_statistics(dataset: Dataset) -> dict[str, int]:
    """How many rows each landmark back-end placed (e.g. `{"dlib": 600, "template-fallback": 48}`)."""
    counts: dict[str, int] = {}
    for label in dataset["landmark_backend"]:
        counts[label] = counts.get(label, 0) + 1
    return counts


def add_example_ids(dataset: Dataset, start: int = 0) -> Dataset:
    """Add a running `example_id` column (what distributed evaluation reports back for every scored row)."""
    if ID_COLUMN in dataset.column_names:
        dataset = dataset.remove_columns(ID_COLUMN)
    return dataset.add_column(ID_COLUMN, list(range(start, start + len(dataset))))


def prepare_data(
    specs: Sequence[str | DataSpec],
    image_processor: MF2ImageProcessor,
    cache_dir: str | Path,
    *,
    default_backend: str = "dlib",
    no_face: str = "fallback",
    captioner: str = "template",
    pixel_format: str = "uint8",
    batch_size: int = 64,
    num_proc: int | None = None,
    with_ids: bool = True,
) -> tuple[Dataset, list[dict[str, Any]]]:
    """Load, caption and pre-process every spec, and concatenate them.

    Returns:
        The dataset (columns: the MFA labels and captions, `group`, `source`, the `PROCESSED_COLUMNS`, and
        `example_id` when `with_ids`) and one summary dict per spec (`name`, `source`, `rows`, `landmark_backends`)
        for logs and the model card.
    """
    parts, summary = [], []
    for item in specs:
        spec = DataSpec.parse(item) if isinstance(item, str) else item
        dataset = load_source(spec, cache_dir=None)
        if captioner == "template":
            dataset = fill_template_captions(dataset, name=spec.name)
        processor = image_processor
        backend = spec.backend(default_backend)
        if backend != image_processor.landmark_backend:
            processor = MF2ImageProcessor.from_dict({**image_processor.to_dict(), "landmark_backend": backend})
        processed = preprocess_dataset(
            dataset,
            processor,
            Path(cache_dir) / "preprocess",
            no_face=spec.no_face or no_face,
            pixel_format=pixel_format,
            batch_size=batch_size,
            num_proc=num_proc,
            desc=f"pre-processing {spec.name}",
        )
        parts.append(processed)
        summary.append(
            {
                "name": spec.name,
                "source": spec.source,
                "rows": len(processed),
                "landmark_backends": face_statistics(processed),
            }
        )
    if not parts:
        raise ValueError("No data given.")
    dataset = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
    if with_ids:
        dataset = add_example_ids(dataset)
    return dataset, summary


def split_validation(dataset: Dataset, fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Hold out `fraction` of the groups (subjects, videos) as validation, balanced by emotion (`mf2.data`)."""
    from ..data import split_by_group

    train_rows, validation_rows = split_by_group(dataset["group"], dataset["emotion"], fraction, seed=seed)
    return dataset.select(train_rows), dataset.select(validation_rows)


__all__ = [
    "ID_COLUMN",
    "PREPROCESS_VERSION",
    "PROCESSED_COLUMNS",
    "add_example_ids",
    "face_statistics",
    "fill_template_captions",
    "prepare_data",
    "preprocess_dataset",
    "split_validation",
]
