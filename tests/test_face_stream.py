"""The pipeline's streaming engine on a stub pipeline: faces batched across inputs, regrouped per input, in order;
failures named by the input's position and path."""

from types import SimpleNamespace

import pytest
import torch

from mf2.face_search import NoFaceError
from mf2.face_stream import FaceStream, InputError
from mf2.image_loading import ImageInputError


class StubPipeline:
    """Each input is its number of faces (or an error to raise); a face's result is its row in the forward pass."""

    image_processor = SimpleNamespace(num_workers=2)

    def __init__(self):
        self.forward_sizes = []

    def preprocess(self, item):
        if isinstance(item, Exception):
            raise item
        return {"pixel_values": torch.zeros(item, 1), "au_boxes": torch.zeros(item, 1)}

    def forward(self, batch):
        rows = len(batch["pixel_values"])
        self.forward_sizes.append(rows)
        return {"au_logits": torch.arange(rows, dtype=torch.float32)[:, None], "emotion_logits": torch.zeros(rows, 1)}

    def postprocess(self, outputs):
        return [{"row": int(value)} for value in outputs["au_logits"][:, 0]]


def test_faces_are_batched_across_inputs_and_regrouped_in_order():
    pipe = StubPipeline()
    stream = FaceStream(pipe, 3, 0, {}, {}, {})
    items = [(count, {"image_index": index}) for index, count in enumerate([2, 0, 3, 1])]
    results = list(stream(items))
    assert [extra["image_index"] for extra, _ in results] == [0, 1, 2, 3]
    assert [len(faces) for _, faces in results] == [2, 0, 3, 1]  # a faceless input gives no rows
    assert pipe.forward_sizes == [2, 3, 1]  # an input's faces are never split across forward passes
    assert results[2][1] == [{"image_index": 2, "row": 0}, {"image_index": 2, "row": 1}, {"image_index": 2, "row": 2}]
    with pytest.raises(ValueError, match="batch_size"):
        FaceStream(pipe, 0, 0, {}, {}, {})


def test_a_failed_input_is_named_by_its_position_from_the_errors_fields():
    unreadable = ImageInputError(0, "a.png", "no such file.")  # the processor saw it alone, as its "image 0"
    stream = FaceStream(StubPipeline(), 2, 1, {}, {}, {})
    with pytest.raises(InputError, match=r"Could not read input 1 \('a.png'\): no such file.") as raised:
        list(stream([(1, {"image_index": 0}), (unreadable, {"image_index": 1})]))
    error = raised.value
    assert (error.index, error.path, error.reason, error.where) == (1, "a.png", "no such file.", "input 1")
    assert (error.kind, error.detail) == ("unreadable", {})
    with pytest.raises(InputError, match=r"frame 12 \(t=0.480 s\): bad frame") as raised:
        list(stream([(ValueError("bad frame"), {"frame": 12, "time": 0.48})]))
    assert raised.value.reason == "bad frame" and raised.value.path is None and raised.value.kind == "invalid"
    faceless = NoFaceError(0, "b.png", "dlib", scale=0.25, longest=4096)
    with pytest.raises(InputError, match=r"No face found in input 3 \('b.png'\)") as raised:
        list(stream([(faceless, {"image_index": 3})]))
    assert raised.value.kind == "no_face"
    assert raised.value.detail == {"backend": "dlib", "scale": 0.25, "longest": 4096}


def test_results_leave_as_soon_as_their_input_is_done_whatever_the_stretch_without_faces():
    """A faceless input is released at once, and a forward pass never waits on more than `batch_size` inputs: how
    far the stream reads ahead of its results is bounded by the batch and the look-ahead, never by the input."""
    batch_size, workers = 4, 1
    lookahead = batch_size + 2 * workers  # `_prepared` submits this many inputs ahead
    counts = [0] * 60 + [1] + [0] * 30 + [2, 0, 3, 0, 0, 1] + [0] * 20  # faceless stretches, a face among them
    read = []

    def items():
        for index, count in enumerate(counts):
            read.append(index)
            yield count, {"image_index": index}

    pipe = StubPipeline()
    lags, order = [], []
    for extra, faces in FaceStream(pipe, batch_size, workers, {}, {}, {})(items()):
        order.append(extra["image_index"])
        lags.append(len(read) - len(order))  # inputs read but not yet out
        assert len(faces) == counts[extra["image_index"]]
    assert order == list(range(len(counts)))  # faceless and face inputs alike, in input order
    assert max(lags) <= lookahead + batch_size
    assert max(lags[:60]) <= lookahead  # a faceless input with nothing before it leaves at once
    assert max(pipe.forward_sizes) <= batch_size


class OneFacePerImage(StubPipeline):
    def preprocess(self, item):
        return super().preprocess(1)


def _lags(image, count: int) -> list[int]:
    """How many of `count` copies of `image` were read and not yet out, each time one comes out."""
    read, lags = [], []

    def items():
        for index in range(count):
            read.append(index)
            yield image, {"image_index": index}

    for done, _ in enumerate(FaceStream(OneFacePerImage(), 16, 2, {}, {}, {})(items()), start=1):
        lags.append(len(read) - done)
    assert len(lags) == count
    return lags


def test_decoded_images_in_flight_are_bounded_by_their_pixels():
    """Photos near PIL's 178 MP limit: the stream reads ahead (and a pass waits on) no more than `max_pixels` of
    decoded inputs, or one input, not `batch_size` plus the look-ahead of them (20 of 30 MP: 600 MP)."""
    import numpy as np

    from mf2.face_stream import MAX_PIXELS_IN_FLIGHT, pixels_of

    photo = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (6000, 5000, 3))  # 30 MP, taking no memory
    assert pixels_of(photo) == 30_000_000 and pixels_of(photo.transpose(2, 0, 1)) == 30_000_000
    held = MAX_PIXELS_IN_FLIGHT // 30_000_000 + 1  # the budget, and the one that crosses it
    assert max(_lags(photo, 30)) <= 2 * held  # read ahead (≤ held) and a pass's inputs (≤ held)
    huge = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (15000, 11800, 3))  # 177 MP: over the budget alone
    assert max(_lags(huge, 5)) == 0  # one at a time
    assert max(_lags(np.zeros((4, 4, 3), np.uint8), 40)) > 2 * held  # small images: the look-ahead by count
