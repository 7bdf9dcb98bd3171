"""The `face_alignment` landmark back-end: FAN (2D-FAN-4, the MF² paper's detector) on dlib's face boxes, through
the `face-alignment` package; its weights download on first use unless offline.

This file uses only relative imports of flat sibling modules, so it travels with remote code.
"""

from __future__ import annotations

import threading
import urllib.request
import warnings
from pathlib import Path

import numpy as np

from .landmark_backend import (
    FaceLandmarks,
    LandmarkBackend,
    MissingModelFileError,
    check_image,
    largest_first,
    require_module,
)
from .landmarks_dlib import DlibFaceDetector, to_gray
from .local_files import env_flag, written_aside

FAN_WEIGHTS_FILE = "2DFAN4-11f355bf06.pth.tar"
FAN_WEIGHTS_URL = f"https://www.adrianbulat.com/downloads/python-fan/{FAN_WEIGHTS_FILE}"


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

    def __init__(
        self,
        device: str = "cpu",
        flip_input: bool = False,
        upsample: int | None = None,
        threshold=0.0,
        allow_download: bool = True,
    ):
        fa = require_module("face_alignment", "fan", "face_alignment")
        require_module("dlib", "dlib", "face_alignment")
        self.weights_path = fan_weights_path()
        if not self.weights_path.is_file():
            self._download(allow_download and not (env_flag("HF_HUB_OFFLINE") or env_flag("MF2_OFFLINE")))
        self.detector = DlibFaceDetector(upsample=upsample, threshold=threshold)
        with warnings.catch_warnings():  # "dlib detector is deprecated, use S3FD": S3FD would need a download
            warnings.filterwarnings("ignore", message=".*detector is deprecated.*")
            self.model = fa.FaceAlignment(
                fa.LandmarksType.TWO_D, device=device, flip_input=flip_input, face_detector="dlib", compile=False
            )

    def _download(self, allowed: bool) -> None:
        reason = "downloads are switched off (HF_HUB_OFFLINE / MF2_OFFLINE or allow_download=False)"
        if allowed:
            try:
                with (
                    written_aside(self.weights_path) as partial,
                    urllib.request.urlopen(FAN_WEIGHTS_URL, timeout=30) as response,
                    open(partial, "wb") as out,
                ):
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
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

    fits_boxes = True

    def detect(self, image: np.ndarray) -> list[FaceLandmarks]:
        image = check_image(image)
        return largest_first(self._landmarks(image, self.detector(to_gray(image))))

    def detect_coarse(self, image: np.ndarray) -> list[FaceLandmarks] | None:
        image = check_image(image)
        found = self.detector.coarse(to_gray(image))
        return None if found is None else largest_first(self._landmarks(image, found))

    def fit(self, image: np.ndarray, boxes: np.ndarray) -> list[FaceLandmarks]:
        found = [(box, 0.0) for box in np.asarray(boxes, dtype=np.float64).reshape(-1, 4)]
        return self._landmarks(check_image(image), found)

    def sees_faces(self, image: np.ndarray, boxes: np.ndarray) -> list[bool]:
        image = check_image(image)
        return [self.detector.finds_face_near(image, box) for box in np.asarray(boxes, np.float64).reshape(-1, 4)]

    def _landmarks(self, image: np.ndarray, found) -> list[FaceLandmarks]:
        if not found:
            return []
        with self._lock:  # FAN uses torch's own threads; one call at a time
            points = self._fan(image, [box for box, _ in found])
        return [FaceLandmarks(box=box, points=p, score=score) for (box, score), p in zip(found, points)]

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


__all__ = ["FAN_WEIGHTS_FILE", "FAN_WEIGHTS_URL", "FaceAlignmentBackend", "fan_heatmaps_to_points", "fan_weights_path"]
