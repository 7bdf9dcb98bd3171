"""Replayable augmented views of aligned face crops, for the vision-token cache.

A face the model meets is never placed exactly where training put it: landmarks move a pixel or two between frames,
a photo is cropped or rescaled, JPEG blurs it. `augmented_view` draws one such variation of an aligned crop (a small
shift, scale and rotation, contrast and brightness, sometimes a blur) and carries the AU boxes through the same
geometry. Each view is drawn from a generator seeded by the example's id and the view's number, so the same data gives
the same views in every run: `mf2.training.vision_cache.VisionTokenCache` stores their tokens once, and training replays
them at the cache's speed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ViewJitter:
    """The largest variation of an augmented view (each drawn uniformly within ±).

    Args:
        shift: translation, as a fraction of the crop side (0.04 of 112 px is 4.5 px).
        scale: relative change of the face's size.
        rotation: degrees.
        contrast, brightness: relative contrast change; brightness offset in normalised pixel units.
        blur_probability: chance of a 3x3 box blur (a soft, re-compressed or upscaled photo).
    """

    shift: float = 0.04
    scale: float = 0.06
    rotation: float = 8.0
    contrast: float = 0.3
    brightness: float = 0.2
    blur_probability: float = 0.3


DEFAULT_JITTER = ViewJitter()


def view_generator(example_id: int, view: int, seed: int = 0) -> torch.Generator:
    """The generator of view `view` of example `example_id`: the same numbers in every run."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(example_id)) * 131 + int(view))


def _geometry(generator: torch.Generator, jitter: ViewJitter) -> torch.Tensor:
    """`(2, 3)` affine map of output crop coordinates in [-1, 1] to input ones (what `affine_grid` takes)."""
    draw = torch.rand(4, generator=generator) * 2 - 1
    scale = 1.0 + jitter.scale * float(draw[0])
    angle = math.radians(jitter.rotation * float(draw[1]))
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    shift_x, shift_y = 2 * jitter.shift * float(draw[2]), 2 * jitter.shift * float(draw[3])
    return torch.tensor([[cos, -sin, shift_x], [sin, cos, shift_y]], dtype=torch.float32)


def _carry_boxes(au_boxes: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """AU boxes `(..., 4)` (normalised xyxy) of the warped crop: the box around each box's warped corners."""
    forward = torch.linalg.inv(torch.cat([theta, torch.tensor([[0.0, 0.0, 1.0]])]))[:2]
    x1, y1, x2, y2 = au_boxes.unbind(-1)
    corners = torch.stack([torch.stack(c, -1) for c in ((x1, y1), (x2, y1), (x1, y2), (x2, y2))], -2)
    centred = corners * 2 - 1
    moved = (centred @ forward[:, :2].T + forward[:, 2] + 1) / 2
    boxes = torch.cat([moved.min(-2).values, moved.max(-2).values], -1)
    return boxes.clamp(0.0, 1.0)


def augmented_view(
    pixel_values: torch.Tensor, au_boxes: torch.Tensor, generator: torch.Generator, jitter: ViewJitter = DEFAULT_JITTER
) -> tuple[torch.Tensor, torch.Tensor]:
    """One augmented view of an aligned crop.

    Args:
        pixel_values: `(3, H, W)` normalised crop.
        au_boxes: `(num_aus, boxes_per_au, 4)` normalised xyxy boxes in the crop's frame.
        generator: the view's generator (`view_generator`).

    Returns:
        The view's `(3, H, W)` pixels and its AU boxes, same shapes.
    """
    theta = _geometry(generator, jitter)
    grid = F.affine_grid(theta[None], [1, *pixel_values.shape], align_corners=False)
    view = F.grid_sample(pixel_values[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast, brightness, blur = torch.rand(3, generator=generator)
    mean = view.mean(dim=(-2, -1), keepdim=True)
    view = (view - mean) * (1 + jitter.contrast * float(contrast * 2 - 1)) + mean
    view = view + jitter.brightness * float(brightness * 2 - 1)
    if float(blur) < jitter.blur_probability:
        view = F.avg_pool2d(F.pad(view, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return view[0].to(pixel_values.dtype), _carry_boxes(au_boxes.float(), theta).to(au_boxes.dtype)


__all__ = ["DEFAULT_JITTER", "ViewJitter", "augmented_view", "view_generator"]
