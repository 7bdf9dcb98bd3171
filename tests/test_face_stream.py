"""The pipeline's streaming engine on a stub pipeline: faces batched across inputs, regrouped per input, in order;
failures named by the input's position and path."""

from types import SimpleNamespace

import pytest
import torch

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
    assert error.__cause__ is unreadable
    with pytest.raises(InputError, match=r"frame 12 \(t=0.480 s\): bad frame") as raised:
        list(stream([(ValueError("bad frame"), {"frame": 12, "time": 0.48})]))
    assert raised.value.reason == "bad frame" and raised.value.path is None
