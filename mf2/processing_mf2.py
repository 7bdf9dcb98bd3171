"""`MF2Processor`: `MF2ImageProcessor` plus the BERT tokenizer for emotion and per-AU captions, giving exactly what
`MF2ForPreTraining` takes; and the loading of a run's processor (`load_processor`, `load_saved_processor`).

This file uses only relative imports of flat sibling modules, so it travels with remote code.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from transformers import AutoTokenizer, BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils import cached_file

# Re-exported: `from mf2.processing_mf2 import ...` of these names predates the split into flat modules, and saved
# checkpoints name `processing_mf2.MF2ImageProcessor` in their `auto_map`.
from .alignment import (
    ALIGNMENT_POINTS,
    MAX_SHAPE_RESIDUAL,
    apply_affine,
    implausible_landmarks,
    invert_affine,
    similarity_transform,
)
from .face_search import FALLBACK_LABEL, NoFaceError
from .image_loading import AnimatedImageWarning, ImageInputError, as_image_list, load_image
from .image_processing_mf2 import MF2ImageProcessor
from .visualization import visualize

logger = logging.getLogger(__name__)


class MF2Processor(ProcessorMixin):
    r"""
    `MF2ImageProcessor` + a BERT-family tokenizer: faces and AU boxes from images, token ids from emotion captions
    and per-AU captions, exactly the inputs of `MF2ForPreTraining`.

    Args:
        image_processor (`MF2ImageProcessor`): the image processor.
        tokenizer (`PreTrainedTokenizerBase`): the text encoder's tokenizer.
        emotion_caption_max_length (`int`, *optional*, defaults to 61): emotion captions are truncated to this.
        au_caption_max_length (`int`, *optional*, defaults to 169): AU captions are truncated to this.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        emotion_caption_max_length: int = 61,
        au_caption_max_length: int = 169,
        **kwargs,
    ):
        self.emotion_caption_max_length = int(emotion_caption_max_length)
        self.au_caption_max_length = int(au_caption_max_length)
        super().__init__(image_processor, tokenizer, **kwargs)

    @classmethod
    def from_config(cls, config, tokenizer, **image_processor_kwargs) -> MF2Processor:
        """A processor matching an `MF2Config`: its AU names and caption lengths, and for encoders with fixed
        position embeddings (ViT, DeiT) its input size. DINOv2 interpolates its position embeddings (its
        `image_size`, 518, is the pretraining size), so the crop keeps the default 224 there unless `size=` is given.
        """
        image_processor_kwargs.setdefault("au_names", list(config.au_names))
        image_size = getattr(config.vision_config, "image_size", None)
        if getattr(config.vision_config, "model_type", None) in ("vit", "deit") and isinstance(image_size, int):
            image_processor_kwargs.setdefault("size", image_size)
        return cls(
            MF2ImageProcessor(**image_processor_kwargs),
            tokenizer,
            emotion_caption_max_length=config.emotion_caption_max_length,
            au_caption_max_length=config.au_caption_max_length,
        )

    @property
    def model_input_names(self) -> list[str]:
        return [
            "pixel_values",
            "au_boxes",
            "emotion_input_ids",
            "emotion_attention_mask",
            "au_input_ids",
            "au_attention_mask",
            "au_caption_mask",
        ]

    def __call__(
        self,
        images=None,
        emotion_captions: Sequence[str] | None = None,
        au_captions: Sequence[Sequence[str | None] | dict] | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Process images and/or captions.

        Args:
            images: anything `MF2ImageProcessor` takes; `kwargs` are its per-call options.
            emotion_captions: one caption per image → `emotion_input_ids`, `emotion_attention_mask` `(N, L)`; an empty
                caption (unknown emotion) gives an all-zero attention row, which `MF2ForPreTraining` skips.
            au_captions: per image, one caption per AU (a list in `au_names` order, or a dict AU name → caption);
                `""` or `None` means no caption → `au_input_ids`, `au_attention_mask` `(N, A, L)` and
                `au_caption_mask` `(N, A)` (0 where the caption is missing; those rows are all padding).

        With images, captions are given per input image and repeated for each face found in it (`image_index`), so
        every output row matches a face. Without images, N is the number of captions.
        """
        if images is None and emotion_captions is None and au_captions is None:
            raise ValueError("MF2Processor needs `images`, `emotion_captions` or `au_captions`.")
        data: dict[str, Any] = {}
        rows = None
        num_images = None
        if images is not None:
            items = as_image_list(images)
            num_images = len(items)
            data.update(self.image_processor(items, return_tensors=None, **kwargs))
            rows = np.asarray(data["image_index"], dtype=np.int64)
        elif kwargs:
            raise TypeError(f"MF2Processor got image options {sorted(kwargs)} but no images.")
        if emotion_captions is not None:
            data.update(
                self._encode_emotion_captions(self._per_row(emotion_captions, "emotion_captions", num_images, rows))
            )
        if au_captions is not None:
            data.update(self._encode_au_captions(self._per_row(au_captions, "au_captions", num_images, rows)))
        return BatchFeature(data=data, tensor_type=return_tensors, skip_tensor_conversion=["landmark_backend"])

    def _encode_emotion_captions(self, captions: list) -> dict[str, np.ndarray]:
        """`emotion_input_ids`, `emotion_attention_mask` `(N, L)`; an empty caption (unknown emotion) becomes an
        all-padding row, which the model leaves out of Emo-VL."""
        bad = [i for i, caption in enumerate(captions) if not isinstance(caption, str)]
        if bad:
            raise ValueError(f"emotion_captions must be strings; entries {bad} are not.")
        present = np.asarray([bool(caption.strip()) for caption in captions], dtype=bool)
        texts = [caption if keep else "" for caption, keep in zip(captions, present)]
        ids, mask = self._tokenize(texts, self.emotion_caption_max_length, present)
        return {"emotion_input_ids": ids, "emotion_attention_mask": mask}

    def _encode_au_captions(self, per_row: list) -> dict[str, np.ndarray]:
        """`au_input_ids`, `au_attention_mask` `(N, A, L)` and `au_caption_mask` `(N, A)`, 0 where an AU has no
        caption (its rows are all padding)."""
        au_names = list(self.image_processor.au_names)
        flat, present = [], []
        for i, captions in enumerate(per_row):
            for caption in self._au_caption_list(i, captions, au_names):
                has_text = bool(caption and caption.strip())
                present.append(has_text)
                flat.append(caption if has_text else "")
        present = np.asarray(present, dtype=bool)
        ids, mask = self._tokenize(flat, self.au_caption_max_length, present)
        shape = (len(per_row), len(au_names))
        return {
            "au_input_ids": ids.reshape(*shape, ids.shape[-1]),
            "au_attention_mask": mask.reshape(*shape, mask.shape[-1]),
            "au_caption_mask": present.reshape(shape).astype(np.int64),
        }

    @staticmethod
    def _au_caption_list(i: int, captions, au_names: list[str]) -> list[str | None]:
        """One image's AU captions as a list in `au_names` order, checked."""
        if isinstance(captions, dict):
            unknown = set(captions) - set(au_names)
            if unknown:
                raise ValueError(f"au_captions[{i}] names unknown AUs {sorted(unknown)}; AUs: {au_names}.")
            captions = [captions.get(name) for name in au_names]
        if isinstance(captions, str) or len(captions) != len(au_names):
            raise ValueError(
                f"au_captions[{i}] must hold {len(au_names)} captions (one per AU, in the order {au_names}) "
                f"or be a dict AU name -> caption."
            )
        for caption in captions:
            if caption is not None and not isinstance(caption, str):
                raise ValueError(f"au_captions[{i}] holds a {type(caption).__name__}; captions are strings.")
        return list(captions)

    @staticmethod
    def _per_row(values, name: str, num_images: int | None, rows: np.ndarray | None) -> list:
        values = list(values) if not isinstance(values, str) else [values]
        if num_images is None:
            return values
        if len(values) != num_images:
            raise ValueError(f"{name} has {len(values)} entries for {num_images} images; give one per image.")
        return [values[row] for row in rows]

    def _tokenize(self, texts: list[str], max_length: int, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask of `texts`, padded to the longest; rows where `present` is False (no caption)
        are all padding with an all-zero mask, which the model skips."""
        if not texts:
            return np.zeros((0, 0), np.int64), np.zeros((0, 0), np.int64)
        encoded = self.tokenizer(texts, padding="longest", truncation=True, max_length=max_length, return_tensors="np")
        ids, mask = encoded["input_ids"].astype(np.int64), encoded["attention_mask"].astype(np.int64)
        ids[~present] = self.tokenizer.pad_token_id or 0
        mask[~present] = 0
        return ids, mask

    def visualize(self, image, features, index: int = 0) -> Image.Image:
        """`visualize` with this processor's AU names."""
        return self.image_processor.visualize(image, features, index=index)


def load_processor(
    config,
    source: str | None = None,
    *,
    tokenizer_name: str | None = None,
    text_encoder: str | None = None,
    landmark_backend: str = "dlib",
    image_size: int | None = None,
) -> MF2Processor:
    """The `MF2Processor` of a model: the one saved with the checkpoint `source` when it carries one (and no
    `tokenizer_name` asks for another tokenizer), else one built for `config` (`MF2Processor.from_config`) with the
    tokenizer of `tokenizer_name`, `text_encoder` or `source`, `landmark_backend` and `image_size` (default 224,
    Table VI). An explicit `image_size` also overrides a loaded processor's crop size.

    Raises:
        ValueError: no tokenizer source at all. TypeError: the saved processor's image processor is not MF²'s.
    """
    processor = None
    if source and tokenizer_name is None and _has_processor(source):
        processor = load_saved_processor(source)
    if processor is None:
        tokenizer_source = tokenizer_name or text_encoder or source
        if tokenizer_source is None:
            raise ValueError(
                "No tokenizer: pass tokenizer_name or text_encoder (--tokenizer_name, --text_encoder in the training "
                "scripts), or a checkpoint `source` that carries a processor."
            )
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
        processor = MF2Processor.from_config(
            config, tokenizer, landmark_backend=landmark_backend, size=image_size or 224
        )
    if image_size and processor.image_processor.size != image_size:
        processor.image_processor.size = image_size
    if not isinstance(processor.image_processor, MF2ImageProcessor):
        raise TypeError(f"Expected an MF2ImageProcessor, got {type(processor.image_processor).__name__}.")
    return processor


def _has_processor(source: str) -> bool:
    path = Path(source)
    return path.is_dir() and any(
        (path / name).is_file() for name in ("processor_config.json", "preprocessor_config.json")
    )


def load_saved_processor(source: str) -> MF2Processor:
    """`MF2Processor.from_pretrained`, or assembled from its saved parts when the Auto* classes are not registered."""
    try:
        return MF2Processor.from_pretrained(source)
    except (ValueError, OSError, KeyError, TypeError) as error:
        logger.info("MF2Processor.from_pretrained(%s) failed (%s); assembling it from its parts.", source, error)
    image_processor = MF2ImageProcessor.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    lengths = {}
    # A local folder or a Hub repository alike; the caption lengths are MF2Processor's own fields.
    config_file = cached_file(source, "processor_config.json", _raise_exceptions_for_missing_entries=False)
    if config_file is not None:
        saved = json.loads(Path(config_file).read_text())
        lengths = {key: saved[key] for key in ("emotion_caption_max_length", "au_caption_max_length") if key in saved}
    return MF2Processor(image_processor, tokenizer, **lengths)


__all__ = [
    "ALIGNMENT_POINTS",
    "FALLBACK_LABEL",
    "MAX_SHAPE_RESIDUAL",
    "AnimatedImageWarning",
    "ImageInputError",
    "MF2ImageProcessor",
    "MF2Processor",
    "NoFaceError",
    "apply_affine",
    "as_image_list",
    "implausible_landmarks",
    "invert_affine",
    "load_image",
    "load_processor",
    "load_saved_processor",
    "similarity_transform",
    "visualize",
]
