"""Drawing MF²'s results: one face's landmarks, face box and AU boxes on its photo (`visualize`), and the annotated
sheet of `mf2 analyze --annotate` (`annotate`: every face, its emotion, and a panel of AU probability bars).

This file uses only relative imports of flat sibling modules, so it travels with remote code.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .alignment import apply_affine, invert_affine
from .configuration_mf2 import AU_NAMES
from .facs import au_label
from .image_loading import load_image
from .landmark_backend import as_numpy

_PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def visualize(image, features, index: int = 0, au_names: Sequence[str] | None = None) -> Image.Image:
    """Draw one face of `MF2ImageProcessor`'s output on the original image.

    Args:
        image: the original input (path, PIL, array), or the list of inputs given to the processor (then the one
            `features["image_index"][index]` names is used).
        features: the processor's output.
        index: which face (output row) to draw.
        au_names: names of the AU boxes; defaults to MF²'s 12 AUs (or `AU#k` if the count differs).

    Returns:
        A new PIL image (the input is left as it is): the 68 landmarks, the face box with the back-end's name, and
        each AU box (mapped back from the aligned crop, so rotated with the face) labelled with its AU.
    """
    image_index = int(as_numpy(features["image_index"])[index])
    if isinstance(image, (list, tuple)):
        image = image[image_index]
    canvas = load_image(image, image_index).copy()
    draw_face(canvas, features, index, au_names)
    return canvas


def draw_face(canvas: Image.Image, features, index: int = 0, au_names: Sequence[str] | None = None) -> None:
    """`visualize`'s drawing, in place on `canvas` (an RGB image in the processor's original pixel frame)."""
    draw = ImageDraw.Draw(canvas)
    landmarks = as_numpy(features["landmarks"])[index].astype(np.float64)
    face_box = as_numpy(features["face_boxes"])[index].astype(np.float64)
    boxes = as_numpy(features["au_boxes"])[index].astype(np.float64)
    inverse = invert_affine(as_numpy(features["alignment"])[index])
    size = as_numpy(features["pixel_values"]).shape[-1]
    if au_names is None:
        au_names = list(AU_NAMES) if len(boxes) == len(AU_NAMES) else [f"AU#{k}" for k in range(len(boxes))]

    face_size = max(face_box[2] - face_box[0], face_box[3] - face_box[1], 1.0)
    width = max(1, int(round(face_size / 150)))
    font = _font(max(9, int(face_size / 22)))
    labels = features.get("landmark_backend") if hasattr(features, "get") else None
    draw.rectangle([float(v) for v in face_box], outline=(255, 255, 255), width=width + 1)
    if labels is not None:
        draw.text(
            (float(face_box[0]), float(face_box[1]) - font.size - 2),
            str(labels[index]),
            fill=(255, 255, 255),
            font=font,
        )
    for k, name in enumerate(au_names):
        colour = _PALETTE[k % len(_PALETTE)]
        for side in range(boxes.shape[1]):
            x1, y1, x2, y2 = boxes[k, side] * size - 0.5  # crop edges → crop pixel coordinates
            corners = apply_affine(inverse, np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]]))
            draw.polygon([tuple(p) for p in corners], outline=colour, width=width)
            top = corners[np.argmin(corners[:, 1])]
            draw.text((float(top[0]) + 1, float(top[1]) + 1), name, fill=colour, font=font)
    radius = max(1.0, face_size / 120)
    for x, y in landmarks:
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=(0, 255, 0))


def annotate(
    image: Image.Image, faces: list[dict], image_processor, thresholds: np.ndarray | None = None
) -> Image.Image:
    """The image with each face's box, landmarks and AU boxes (`draw_face`), its number and emotion under the box,
    and a side panel per face: the top emotions and one probability bar per AU, named in full ("AU6 cheek raiser";
    threshold ticked, active AUs filled). A video frame's faces are named by their `track` ("track 2"), a photo's
    by their number ("#0").

    `faces` are pipeline results computed with `return_features=True`; the image is copied once and drawn on.
    """
    canvas = image.convert("RGB")  # a copy: the caller's image stays clean
    for face in faces:
        draw_face(canvas, face["features"], 0, image_processor.au_names)
    draw = ImageDraw.Draw(canvas)
    scale = max(canvas.height / 512, 0.6)
    label_font = _font(max(10, int(14 * scale)))
    for number, face in enumerate(faces):
        x1, _, _, y2 = face["box"]
        text = f"{_face_name(face, number)} {face['emotion']['label']} {face['emotion']['score']:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y2 + 3), text, font=label_font)
        draw.rectangle([left - 2, top - 2, right + 2, bottom + 2], fill=(0, 0, 0))
        draw.text((x1, y2 + 3), text, fill=(255, 255, 0), font=label_font)
    if not faces:
        return canvas
    panels = [_face_panel(face, number, canvas.height, thresholds) for number, face in enumerate(faces)]
    width = canvas.width + sum(panel.width for panel in panels)
    sheet = Image.new("RGB", (width, max(canvas.height, max(panel.height for panel in panels))), (255, 255, 255))
    sheet.paste(canvas, (0, 0))
    x = canvas.width
    for panel in panels:
        sheet.paste(panel, (x, 0))
        x += panel.width
    return sheet


def _face_name(face: dict, number: int) -> str:
    """How the drawing names a face: its person in a video (`track`), its number in a photo."""
    return f"track {face['track']}" if face.get("track") is not None else f"#{number}"


def _face_panel(face: dict, number: int, height: int, thresholds: np.ndarray | None) -> Image.Image:
    """Text and bars for one face, sized to the image height: as tall as the image on large ones (a fixed size was
    unreadable beside a 4000-px photo), at least readable on small ones. AUs are named in full (`au_label`)."""
    aus = list(face["action_units"].items())
    rows = len(aus) + len(face["emotions"]) + 3
    line = max(14, height // rows)
    font = _font(int(line * 0.7))
    labels = [au_label(name) for name, _ in aus]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = max([probe.textlength(label, font=font) for label in labels] + [3 * line])
    bar_left = int(line // 2 + label_width + line // 2)
    width = bar_left + 10 * line
    panel = Image.new("RGB", (width, max(height, rows * line + line)), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    y = line // 2
    heading = f"face {_face_name(face, number)}" if face.get("track") is None else _face_name(face, number)
    draw.text((line // 2, y), heading, fill=(0, 0, 0), font=font)
    y += line
    for item in face["emotions"]:
        draw.text((line // 2, y), f"{item['label']}: {item['score']:.2f}", fill=(0, 0, 160), font=font)
        y += line
    y += line // 2
    bar_right = width - 3 * line
    active = set(face["active_action_units"])
    for k, ((name, probability), label) in enumerate(zip(aus, labels)):
        draw.text((line // 2, y), label, fill=(0, 0, 0), font=font)
        top, bottom = y + line // 6, y + line - line // 6
        draw.rectangle([bar_left, top, bar_right, bottom], outline=(120, 120, 120))
        filled = bar_left + (bar_right - bar_left) * float(probability)
        colour = (220, 60, 40) if name in active else (150, 170, 200)
        draw.rectangle([bar_left, top, filled, bottom], fill=colour)
        if thresholds is not None and k < len(thresholds):
            tick = bar_left + (bar_right - bar_left) * float(thresholds[k])
            draw.line([tick, top - 2, tick, bottom + 2], fill=(0, 0, 0), width=2)
        draw.text((bar_right + line // 4, y), f"{probability:.2f}", fill=(0, 0, 0), font=font)
        y += line
    return panel


__all__ = ["annotate", "draw_face", "visualize"]
