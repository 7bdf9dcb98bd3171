"""The `facial-state` pipeline: faces in photos or videos → Action Units, emotion and an optional explanation.

```python
>>> import mf2  # registers the "facial-state" task
>>> from transformers import pipeline
>>> pipe = pipeline("facial-state", model="path/or/hub-id")
>>> faces = pipe("photo.jpg", explain=True)
>>> faces[0]["emotion"], faces[0]["active_action_units"]
({'label': 'happiness', 'score': 0.91}, ['AU6', 'AU12', 'AU25'])
>>> for frame in pipe.video("clip.mp4", fps=5, multiple_faces="all"):  # streamed, constant memory
...     print(frame["frame"], frame["time"], [(face["track"], face["emotion"]["label"]) for face in frame["faces"]])
```

This file uses only relative imports of flat sibling modules, so `pipe.save_pretrained` can export it as remote code.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Pipeline
from transformers.dynamic_module_utils import custom_object_save

from .face_identity import (
    capture_vision_tokens,
    pixel_feature,
    vision_encoder_of,
)
from .face_search import FALLBACK_LABEL, search_warning
from .face_stream import FaceStream, InputError, NonFiniteOutputError
from .face_tracking import VideoMixin
from .facs import explanation
from .image_loading import is_array
from .landmark_backend import as_numpy
from .local_files import write_json
from .video import is_video

REMOTE_TASK = "mf2-facial-state"
"""Task name under which `save_pretrained` exports the pipeline as remote code (see its docstring)."""
DEFAULT_TOP_K = 3
RUNTIMES = ("torch", "onnx")  # what runs the network: PyTorch, or onnxruntime on its export (`mf2.onnx_export`)

# Per-call options of each pipeline stage (anything else is rejected with the list of valid names).
PREPROCESS_OPTIONS = (
    "no_face",
    "multiple_faces",
    "landmark_backend",
    "max_detection_size",
    "min_detection_size",
    "backend_kwargs",
    "channel_order",
)
POSTPROCESS_OPTIONS = ("top_k", "threshold", "return_landmarks", "explain", "return_features")
# `pipe(video_path, video_fps=...)` names → `FacialStatePipeline.video` arguments.
VIDEO_OPTIONS = {
    "video_fps": "fps",
    "every_n_frames": "every",
    "start_time": "start",
    "end_time": "end",
    "max_frames": "max_frames",
    "detect_every": "detect_every",
    "max_gap": "max_gap",
}
# Image processor outputs the pipeline carries from `preprocess` to `postprocess` beside the model inputs.
_FACE_FIELDS = ("face_boxes", "landmarks", "alignment", "landmark_backend", "detection_scale")


class FacialStatePipeline(VideoMixin, Pipeline):
    r"""
    Detects the faces of each image, aligns them (`MF2ImageProcessor`) and runs `MF2ForFacialStateRecognition`.

    Inputs: a path, a URL, a PIL image, a numpy array / torch tensor `(H, W, C)`, a list of those (or a 4-D batch
    array), a generator (results are streamed back), or a video path (see `video`). Arrays and tensors are read as
    RGB: pass `channel_order="bgr"` for OpenCV's frames and `cv2.imread` images (BGR), which read as RGB would give
    wrong colours and worse faces, without an error.

    Output for one image: a list with one dict per face (`multiple_faces="largest"`, the default, keeps one):

    - `box`: `[x1, y1, x2, y2]` face box in the original image's pixels
    - `emotion`: `{"label", "score"}`, the most probable emotion (softmax over the emotion classes)
    - `emotions`: the `top_k` most probable emotions, most probable first
    - `action_units`: `{AU name: probability}` for every AU (independent sigmoids: AUs are multi-label)
    - `active_action_units`: AU names whose probability reaches their threshold (`config.au_thresholds`, 0.5 when
      unset; `threshold=` overrides)
    - `track` (videos only, `pipe.video`): the person, numbered 1, 2, ... from frame to frame (see `video`)
    - `landmark_backend`: what placed the landmarks (`"dlib"`, ...; `"template-fallback"` when no face was found
      and `no_face="fallback"` analysed the whole image)
    - `detection_scale`, only when the image was searched for faces on a downscaled copy (its longest side over
      `max_detection_size`, 1024 px by default): the copy's scale. Faces under about 40 / `detection_scale` px of
      the image (~160 px in a 4032x3024 photo) are not seen there; `max_detection_size` of at least the image's
      longest side searches at full resolution. A `"template-fallback"` face of such an image also carries a
      `warning` saying so (no face may mean only a small one).
    - `landmarks` (with `return_landmarks=True`): 68 `[x, y]` points in the original image's pixels
    - `explanation` (with `explain=True`): one sentence naming the active AUs that decide the emotion
    - `features` (with `return_features=True`): this face's row of the image processor's output (numpy arrays with a
      batch dimension of 1: `pixel_values`, `au_boxes`, `landmarks`, `face_boxes`, `alignment`, `image_index`,
      `landmark_backend`, `detection_scale`), e.g. for `pipe.image_processor.visualize(image, face["features"])`
    - `image_index` when the input is a list or a generator

    Call options:
        batch_size (`int`, defaults to 1): faces per model forward pass (the faces of one image are never split).
        num_workers (`int`): threads detecting faces ahead of the model; defaults to the processor's setting.
        top_k (`int`, defaults to 3): length of `emotions`.
        threshold (`float`, `dict[str, float]` or `list[float]`): AU activation threshold(s).
        return_landmarks (`bool`), explain (`bool`), return_features (`bool`): add `landmarks` / `explanation` /
            `features`.
        no_face (`"error"`, `"skip"`, `"fallback"`): when an image has no face: raise a `ValueError` naming it
            (the processor's default; it says when the search ran on a downscaled copy), give an empty list, or
            analyse the image as a face crop whose face sits where a typical detector crop holds it (flagged by
            `landmark_backend == "template-fallback"`).
        channel_order (`"rgb"`, the default, or `"bgr"`): the colour order of array and tensor inputs (files and PIL
            images carry theirs); video frames are decoded as RGB whatever it says.
        max_detection_size (`int`, defaults to the processor's, 1024): images whose longest side is larger are
            searched for faces on a copy downscaled to it (see `detection_scale`); the image's longest side or more
            searches at full resolution, finding smaller faces, more slowly.
        multiple_faces (`"largest"` or `"all"`), landmark_backend, min_detection_size, backend_kwargs: passed to
            the image processor.

    Construction: `adapter="outputs/my-dfn"` runs a DFN adapter (a folder of `mf2 finetune`, or a repo of `mf2 push`,
    in its `dfn/`) on the model (`mf2.dfn.load_adapter`, which also takes the AU thresholds tuned with it). `runtime="onnx"` runs the network in
    onnxruntime (`mf2[onnx]`) on `onnx_path` or on a weights-keyed export under `$MF2_HOME/onnx/`, written on first
    use; everything else is as with `runtime="torch"`, the default. `quantize="int8"` (with `runtime="onnx"`) runs
    the graph's int8 version (`mf2.onnx_export.quantize_onnx`): faster than float32 on a CPU, each face quantized on
    its own, so its answer is the same whatever the batch (docs/analysis.md).

    Detection runs in worker threads ahead of the model, so the detector and the network overlap; memory is bounded
    by `batch_size` plus a few inputs in flight, whatever the number of inputs.
    """

    # Private members of transformers this class touches, each for a reason:
    # - `_load_processor`, `_load_image_processor`, ...: the class attributes by which a `Pipeline` subclass says
    #   which processors `pipeline()` loads (transformers' own pipelines declare theirs the same way).
    # - `_registered_impl` (`save_pretrained`): the task registry entry `Pipeline.save_pretrained` writes into
    #   `custom_pipelines`, set on the instance for one call to write it under `REMOTE_TASK` (see there).
    # `Pipeline` keeps the construction's call options in private members; `video` reads `call_defaults` instead.
    _load_processor = None
    _load_image_processor = None
    _load_feature_extractor = False
    _load_tokenizer = False
    _load_video_processor = False

    def __init__(
        self,
        *args,
        runtime: str = "torch",
        onnx_path: str | os.PathLike | None = None,
        quantize: str | None = None,
        adapter: str | os.PathLike | None = None,
        **kwargs,
    ):
        if runtime not in RUNTIMES:
            raise ValueError(f"`runtime` must be one of {list(RUNTIMES)}, got {runtime!r}.")
        if quantize is not None and runtime != "onnx":
            raise ValueError(f"`quantize={quantize!r}` quantizes the ONNX graph; pass runtime='onnx' with it.")
        if adapter is not None and runtime != "torch":
            raise ValueError("A DFN `adapter` runs in PyTorch; drop runtime='onnx'.")
        dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
        # The call options given at construction, which every call starts from. `Pipeline` keeps its own private
        # copies for `__call__`; `video`, which streams without it, reads these instead.
        call_options = (*PREPROCESS_OPTIONS, *POSTPROCESS_OPTIONS, "batch_size", "num_workers")
        self.call_defaults = {key: kwargs[key] for key in call_options if key in kwargs}
        super().__init__(*args, **kwargs)
        if adapter is not None:  # the base model, wrapped with the adapter (and its tuned AU thresholds)
            self.model = importlib.import_module("mf2.dfn").load_adapter(self.model, adapter)
        if self.image_processor is None and self.processor is not None:
            self.image_processor = getattr(self.processor, "image_processor", None)
        if self.image_processor is None or not hasattr(self.image_processor, "au_names"):
            raise ValueError(
                "The facial-state pipeline needs an MF2ImageProcessor (face detection, alignment and AU boxes). Save "
                "one next to the model (`processor.save_pretrained(model_dir)`), or pass `image_processor=` or "
                f"`processor=`; got {type(self.image_processor).__name__}."
            )
        config = self.model.config
        for name in ("au_names", "id2label"):
            if getattr(config, name, None) is None:
                raise ValueError(f"The facial-state pipeline needs an MF² model; its config has no `{name}`.")
        if list(self.image_processor.au_names) != list(config.au_names):
            raise ValueError(
                f"The image processor places boxes for {list(self.image_processor.au_names)} but the model predicts "
                f"{list(config.au_names)}; they must be the same AUs in the same order."
            )
        if isinstance(dtype, str) and dtype != "auto":
            dtype = getattr(torch, dtype)
        if isinstance(dtype, torch.dtype) and self.model.dtype != dtype:
            self.model.to(dtype)  # a model instance was given: `pipeline()` only applies `dtype` when it loads one
        self.model.eval()  # inference: no dropout, so results do not depend on the batch
        self.runtime, self.onnx_model = runtime, None
        if runtime == "onnx":
            from .onnx_export import onnx_runner

            size = int(self.image_processor.size)
            self.onnx_model = onnx_runner(self.model, size, self.device, onnx_path, quantize)
        # Videos number people by the encoder's class token of each face; onnxruntime's graph gives only the logits.
        self.vision_encoder = vision_encoder_of(self.model) if self.onnx_model is None else None

    # ------------------------------------------------------------------ parameters

    def _sanitize_parameters(self, **kwargs):
        unknown = set(kwargs) - set(PREPROCESS_OPTIONS) - set(POSTPROCESS_OPTIONS)
        if unknown:
            raise TypeError(
                f"FacialStatePipeline got unknown option(s) {sorted(unknown)}; valid options: "
                f"{sorted(PREPROCESS_OPTIONS + POSTPROCESS_OPTIONS)} (and batch_size, num_workers; for videos "
                f"{sorted(VIDEO_OPTIONS)})."
            )
        preprocess = {key: kwargs[key] for key in PREPROCESS_OPTIONS if key in kwargs}
        postprocess = {key: kwargs[key] for key in POSTPROCESS_OPTIONS if key in kwargs}
        if "top_k" in postprocess:
            top_k = postprocess["top_k"]
            if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
                raise ValueError(f"`top_k` must be a positive integer, got {top_k!r}.")
        if "threshold" in postprocess:
            postprocess["threshold"] = self.thresholds(postprocess["threshold"])
        return preprocess, {}, postprocess

    def thresholds(self, threshold: float | dict | Sequence[float] | None = None) -> np.ndarray:
        """The per-AU thresholds a call uses: `threshold` (one value, a dict AU name → value, or one per AU), else
        the model's own (`config.au_decision_thresholds`: the tuned `au_thresholds`, 0.5 where unset).

        Raises:
            ValueError: unknown AU names, a wrong count, or values outside [0, 1].
        """
        names = list(self.model.config.au_names)
        defaults = self.model.config.au_decision_thresholds
        if threshold is None:
            threshold = defaults
        if isinstance(threshold, dict):
            unknown = set(threshold) - set(names)
            if unknown:
                raise ValueError(f"`threshold` names unknown AUs {sorted(unknown)}; the model's AUs are {names}.")
            values = np.array([threshold.get(name, default) for name, default in zip(names, defaults)], np.float64)
        elif isinstance(threshold, (int, float)) and not isinstance(threshold, bool):
            values = np.full(len(names), float(threshold))
        else:
            values = np.asarray(threshold, dtype=np.float64).reshape(-1)
            if values.size != len(names):
                raise ValueError(
                    f"`threshold` has {values.size} values for {len(names)} AUs ({names}); give one per AU."
                )
        if not np.all((values >= 0.0) & (values <= 1.0)):
            raise ValueError(f"AU thresholds are probabilities in [0, 1], got {values.tolist()}.")
        return values

    # ------------------------------------------------------------------ the three stages

    def preprocess(self, image: Any, **options) -> dict[str, Any]:
        """Detect, align and crop the faces of one image (`MF2ImageProcessor`)."""
        features = self.image_processor([image], return_tensors="pt", **options)
        return {key: features[key] for key in ("pixel_values", "au_boxes", *_FACE_FIELDS)}

    def _forward(self, model_inputs: dict[str, Any], identity_features: bool = False) -> dict[str, Any]:
        """The model's logits for the faces of `model_inputs`; with `identity_features` (videos: `mf2.face_identity`)
        also each face's identity feature: the vision encoder's class token, taken from this same forward pass, or
        with onnxruntime (whose graph gives only the logits) a thumbnail of the crop (`pixel_feature`)."""
        pixel_values = model_inputs["pixel_values"]
        config = self.model.config
        # Face fields (boxes, landmarks) ride along when present, so `run_single`-style calls keep them together.
        outputs = {key: value for key, value in model_inputs.items() if key in _FACE_FIELDS}
        if len(pixel_values) == 0:  # no face in the image(s): nothing to run
            outputs["au_logits"] = torch.zeros(0, len(config.au_names))
            outputs["emotion_logits"] = torch.zeros(0, len(config.id2label))
            return outputs
        captured: list[torch.Tensor] = []
        if self.onnx_model is not None:  # float32 graph, results on the CPU
            result = self.onnx_model(pixel_values=pixel_values, au_boxes=model_inputs["au_boxes"])
        else:
            dtype = self.model.dtype
            capture = identity_features and self.vision_encoder is not None
            hook = capture_vision_tokens(self.vision_encoder, captured) if capture else None
            try:
                result = self.model(pixel_values=pixel_values.to(dtype), au_boxes=model_inputs["au_boxes"].to(dtype))
            finally:
                if hook is not None:
                    hook.remove()
        outputs["au_logits"], outputs["emotion_logits"] = result.au_logits, result.emotion_logits
        if identity_features:
            if captured and captured[-1].ndim == 3 and len(captured[-1]) == len(pixel_values):
                outputs["identity_features"] = captured[-1][:, 0].float()  # the class token
            else:
                outputs["identity_features"] = torch.from_numpy(pixel_feature(pixel_values))
        return outputs

    def postprocess(
        self,
        model_outputs: dict[str, Any],
        top_k: int = DEFAULT_TOP_K,
        threshold: np.ndarray | None = None,
        return_landmarks: bool = False,
        explain: bool = False,
        return_features: bool = False,
    ) -> list[dict[str, Any]]:
        config = self.model.config
        au_names = list(config.au_names)
        labels = [config.id2label[index] for index in range(len(config.id2label))]
        thresholds = self.thresholds() if threshold is None else threshold
        finite = torch.isfinite(model_outputs["au_logits"]).all(-1) & torch.isfinite(
            model_outputs["emotion_logits"]
        ).all(-1)
        if not finite.all():
            raise NonFiniteOutputError(torch.nonzero(~finite).flatten().tolist(), str(self.model.dtype))
        au_probs = torch.sigmoid(model_outputs["au_logits"].float()).numpy()
        emotion_probs = torch.softmax(model_outputs["emotion_logits"].float(), dim=-1).numpy()
        boxes = as_numpy(model_outputs["face_boxes"])
        landmarks = as_numpy(model_outputs["landmarks"])
        backends = model_outputs["landmark_backend"]
        scales = as_numpy(model_outputs["detection_scale"]) if "detection_scale" in model_outputs else None
        tracks = model_outputs.get("face_tracks")  # videos: each face's person (`mf2.face_identity`)
        top_k = min(int(top_k), len(labels))
        faces = []
        for row in range(len(au_probs)):
            order = np.argsort(-emotion_probs[row], kind="stable")[:top_k]
            emotions = [{"label": labels[k], "score": float(emotion_probs[row, k])} for k in order]
            active = [name for name, p, t in zip(au_names, au_probs[row], thresholds) if p >= t]
            face = {} if tracks is None else {"track": tracks[row]}
            face |= {
                "box": [float(v) for v in boxes[row]],
                "emotion": dict(emotions[0]),
                "emotions": emotions,
                "action_units": {name: float(p) for name, p in zip(au_names, au_probs[row])},
                "active_action_units": active,
                "landmark_backend": str(backends[row]),
            }
            if scales is not None and scales[row] < 1:  # searched on a downscaled copy: small faces are not seen
                face["detection_scale"] = float(scales[row])
                if face["landmark_backend"] == FALLBACK_LABEL:  # no face found; its box is the whole image
                    longest = round(max(boxes[row][2] - boxes[row][0], boxes[row][3] - boxes[row][1]))
                    face["warning"] = f"no face found: {search_warning(longest, float(scales[row]))}"
            if return_landmarks:
                face["landmarks"] = landmarks[row].astype(float).tolist()
            if explain:
                face["explanation"] = explanation(face["emotion"]["label"], active)
            if return_features:
                face["features"] = _face_features(model_outputs, row)
            faces.append(face)
        return faces

    # ------------------------------------------------------------------ calling

    def __call__(self, inputs, *args, **kwargs):
        """Analyse one input, a list / batch of inputs, a generator, or a video path (→ a generator of frames)."""
        video_options = {VIDEO_OPTIONS[key]: kwargs.pop(key) for key in list(kwargs) if key in VIDEO_OPTIONS}
        if is_video(inputs):
            return self.video(inputs, **video_options, **kwargs)
        if video_options:
            raise TypeError(f"{sorted(VIDEO_OPTIONS)} only apply to a video path; the input is not a video file.")
        if isinstance(inputs, tuple) or (is_array(inputs) and inputs.ndim == 4):
            inputs = list(inputs)  # a tuple or an (N, H, W, C) batch is a list of images
        if isinstance(inputs, list):
            if not inputs:
                return []
            videos = [index for index, item in enumerate(inputs) if is_video(item)]
            if videos:
                raise ValueError(
                    f"Inputs {videos} are video files; analyse videos one at a time with `pipe(path)` or "
                    f"`pipe.video(path, fps=...)`."
                )
        return super().__call__(inputs, *args, **kwargs)

    def run_single(self, inputs, preprocess_params, forward_params, postprocess_params):
        # Same code path as lists, so a single image and a batch give the same results by construction.
        stream = FaceStream(self, 1, 0, preprocess_params, forward_params, postprocess_params)
        return next(stream([(inputs, {})]))[1]

    def get_iterator(self, inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params):
        """Results of a list, dataset or generator in input order, streamed.

        Replaces the base class's DataLoader batching, which assumes one model row per input; here an image has zero,
        one or several faces, so inputs are batched by faces and the outputs regrouped per input.
        """
        items = ((item, {"image_index": index}) for index, item in enumerate(inputs))
        stream = FaceStream(self, batch_size, num_workers, preprocess_params, forward_params, postprocess_params)
        return (faces for _, faces in stream(items))

    # ------------------------------------------------------------------ saving

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any):
        """Save the model, the processor(s) and, when the task is registered (`import mf2`), this pipeline's code.

        Two departures from `Pipeline.save_pretrained`:

        - it saves the multimodal `processor` too (the base class saves only the tokenizer and the image processor,
          and `pipeline()` then fails to load the folder back);
        - the `custom_pipelines` entry of `config.json` is keyed `REMOTE_TASK` ("mf2-facial-state"), not
          "facial-state". transformers refuses to build a task listed in `custom_pipelines` without
          `trust_remote_code=True` even when the task is registered locally, so under the registered name every saved
          checkpoint would need remote code in a process that imported `mf2`. With the distinct key,
          `pipeline("facial-state", model=folder)` uses the installed package, and where it is not installed
          `pipeline(model=folder, trust_remote_code=True)` (or task "mf2-facial-state") uses the exported code.
        """
        if hasattr(self.model, "peft_config"):  # saved, the folder would hold the adapter alone, and not load back
            raise ValueError(
                "This pipeline runs a DFN adapter, which a pipeline folder cannot hold: save the base model's pipeline "
                "(built without adapter=) and keep the adapter folder beside it, or publish both with `mf2 push`."
            )
        registered = [
            info for info in getattr(type(self), "_registered_impl", {}).values() if info["impl"] is type(self)
        ]
        if registered:
            # Without "default": the registered default model is the shipped folder's path on this machine.
            entry = {key: value for key, value in registered[0].items() if key != "default"}
            self._registered_impl = {REMOTE_TASK: entry}
        try:
            super().save_pretrained(save_directory, **kwargs)
        finally:
            self.__dict__.pop("_registered_impl", None)
        if self.processor is not None:
            self.processor.save_pretrained(save_directory, **kwargs)

    @classmethod
    def export_code(cls, folder: str | os.PathLike) -> list[str]:
        """Make a saved MF² checkpoint folder loadable as this pipeline through remote code, weights untouched.

        Copies `pipeline_mf2.py` and the flat modules it imports into `folder` and adds the `custom_pipelines` entry
        (under `REMOTE_TASK`) to its `config.json`, as `save_pretrained` does for a registered pipeline. Use it on a
        folder staged for the Hub (e.g. by `mf2 push`). Returns the copied file names.
        """
        folder = Path(folder)
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise ValueError(f"{folder} holds no config.json: save the model there first.")
        copied = [Path(name).name for name in custom_object_save(cls, folder) or []]
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config["custom_pipelines"] = {
            REMOTE_TASK: {
                "impl": f"{Path(__file__).stem}.{cls.__name__}",
                "pt": ["AutoModelForImageClassification"],
                "type": "image",
            }
        }
        write_json(config_file, config)  # whole or not at all: a killed call leaves the model's config as it was
        return copied


def _face_features(model_outputs: dict[str, Any], row: int) -> dict[str, Any]:
    """One face's row of the image processor's output, shaped as the processor returns it for a single face."""
    keys = ("pixel_values", "au_boxes", "landmarks", "face_boxes", "alignment", "detection_scale")
    features = {key: as_numpy(model_outputs[key])[row : row + 1] for key in keys if key in model_outputs}
    features["image_index"] = np.zeros(1, dtype=np.int64)
    features["landmark_backend"] = [str(model_outputs["landmark_backend"][row])]
    return features


__all__ = ["REMOTE_TASK", "FacialStatePipeline", "InputError", "NonFiniteOutputError", "explanation"]
