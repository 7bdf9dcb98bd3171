"""Augmented views: replayable from their seed, AU boxes carried through the same geometry as the pixels."""

import pytest
import torch

from mf2.training.view_augmentation import ViewJitter, augmented_view, view_generator

STILL = ViewJitter(shift=0.0, scale=0.0, rotation=0.0, contrast=0.0, brightness=0.0, blur_probability=0.0)


def _square_image(box: tuple[float, float, float, float], size: int = 64) -> torch.Tensor:
    """A dark `(3, size, size)` image with a bright square filling the normalised xyxy `box`."""
    image = torch.full((3, size, size), -1.0)
    x1, y1, x2, y2 = (round(v * size) for v in box)
    image[:, y1:y2, x1:x2] = 1.0
    return image


def _bright_extent(image: torch.Tensor) -> torch.Tensor:
    """Normalised xyxy extent of the pixels brighter than the midpoint."""
    ys, xs = torch.nonzero(image[0] > 0, as_tuple=True)
    size = image.shape[-1]
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32) / size


def test_the_same_seed_gives_the_same_view_and_other_seeds_other_views():
    image = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[[0.2, 0.2, 0.4, 0.4], [0.6, 0.2, 0.8, 0.4]]])
    first = augmented_view(image, boxes, view_generator(7, 1))
    again = augmented_view(image, boxes, view_generator(7, 1))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    other_view = augmented_view(image, boxes, view_generator(7, 2))
    other_example = augmented_view(image, boxes, view_generator(8, 1))
    assert not torch.equal(first[0], other_view[0]) and not torch.equal(first[0], other_example[0])


def test_without_jitter_the_view_is_the_image():
    image = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(1))
    boxes = torch.tensor([[[0.2, 0.3, 0.5, 0.6], [0.5, 0.3, 0.8, 0.6]]])
    view, carried = augmented_view(image, boxes, view_generator(0, 1), STILL)
    assert torch.allclose(view, image, atol=1e-5) and torch.allclose(carried, boxes, atol=1e-6)


@pytest.mark.parametrize("example_id", range(6))
def test_boxes_follow_the_pixels(example_id):
    box = (0.35, 0.4, 0.6, 0.65)
    image = _square_image(box)
    jitter = ViewJitter(shift=0.08, scale=0.1, rotation=0.0, contrast=0.0, brightness=0.0, blur_probability=0.0)
    view, carried = augmented_view(image, torch.tensor([[box, box]]), view_generator(example_id, 1), jitter)
    assert torch.allclose(_bright_extent(view), carried[0, 0], atol=2.5 / 64)
    assert not torch.allclose(carried[0, 0], torch.tensor(box), atol=1e-3)  # it did move


def test_a_rotated_box_is_the_box_around_its_rotated_corners():
    box = (0.4, 0.4, 0.6, 0.6)
    jitter = ViewJitter(shift=0.0, scale=0.0, rotation=10.0, contrast=0.0, brightness=0.0, blur_probability=0.0)
    view, carried = augmented_view(_square_image(box), torch.tensor([[box, box]]), view_generator(3, 1), jitter)
    extent = _bright_extent(view)
    assert (carried[0, 0, :2] <= extent[:2] + 2 / 64).all() and (carried[0, 0, 2:] >= extent[2:] - 2 / 64).all()
    assert (carried[0, 0, 2:] - carried[0, 0, :2] > 0.2).all()  # grown around the rotated square
