"""`return_dict` is honoured as in transformers: `False` gives the output's `to_tuple()`, the default a `ModelOutput`
(`config.return_dict`, True unless set otherwise)."""

import pytest
import torch
from tiny import tiny_batch, tiny_config

from mf2 import MF2ForFacialStateRecognition, MF2ForPreTraining, MF2Model

IMAGE_KEYS = ("pixel_values", "au_boxes", "au_labels", "emotion_labels")


@pytest.mark.parametrize("model_class", [MF2Model, MF2ForFacialStateRecognition, MF2ForPreTraining])
def test_return_dict_false_gives_the_tuple_of_the_output(model_class):
    torch.manual_seed(0)
    config = tiny_config()
    model = model_class(config).eval()
    batch = tiny_batch(config)
    if model_class is MF2Model:
        batch = {"pixel_values": batch["pixel_values"], "au_boxes": batch["au_boxes"]}
    elif model_class is MF2ForFacialStateRecognition:
        batch = {key: batch[key] for key in IMAGE_KEYS}
    with torch.no_grad():
        torch.manual_seed(1)  # ITM samples its hard negatives
        as_dict = model(**batch)
        torch.manual_seed(1)
        as_tuple = model(**batch, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(as_dict.to_tuple()) > 0
    for first, second in zip(as_tuple, as_dict.to_tuple()):
        assert torch.equal(first, second)


def test_config_return_dict_false_is_the_default_and_keeps_inner_calls_working():
    torch.manual_seed(0)
    config = tiny_config(return_dict=False)
    model = MF2ForFacialStateRecognition(config).eval()
    batch = tiny_batch(config)
    with torch.no_grad():
        output = model(pixel_values=batch["pixel_values"], au_boxes=batch["au_boxes"])
        explicit = model(pixel_values=batch["pixel_values"], au_boxes=batch["au_boxes"], return_dict=True)
    assert isinstance(output, tuple)
    assert torch.equal(output[0], explicit.au_logits) and torch.equal(output[1], explicit.emotion_logits)
