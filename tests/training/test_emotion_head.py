"""The emotion recogniser's refit: its inputs are what the model's own recogniser reads, and the refit installs."""

import numpy as np
import pytest
import torch
from tiny import tiny_batch, tiny_config

from mf2 import MF2ForFacialStateRecognition
from mf2.training.emotion_head import (
    emotion_head_inputs,
    fit_emotion_head,
    head_features,
    head_logits,
    install_emotion_head,
)
from mf2.training.vision_cache import flip_au_boxes


def _cached_rows(model, batch):
    """What a `VisionTokenCache` entry serves for `batch`: frozen tokens of both views, boxes and labels."""
    tokens = model.mf2.frozen_vision_tokens(batch["pixel_values"])
    flipped = model.mf2.frozen_vision_tokens(batch["pixel_values"].flip(-1))
    return [
        {
            "cached_features": {"tokens": tokens[i], "flipped_tokens": flipped[i]},
            "au_boxes": batch["au_boxes"][i],
            "emotion_labels": batch["emotion_labels"][i],
        }
        for i in range(len(tokens))
    ]


@pytest.mark.parametrize("with_au_probabilities", [False, True])
def test_refit_recogniser_reads_emo_vl_and_au_vl_exactly_as_the_installed_model_does(with_au_probabilities):
    torch.manual_seed(0)
    model = MF2ForFacialStateRecognition(tiny_config(emotion_reads_au_features=False)).eval()
    batch = tiny_batch(model.config)
    au_before = model(pixel_values=batch["pixel_values"], au_boxes=batch["au_boxes"]).au_logits
    inputs = emotion_head_inputs(model, _cached_rows(model, batch), views=("tokens", "flipped_tokens"), batch_size=2)
    hidden = model.config.qformer_config.hidden_size
    assert inputs["tokens"].shape == (len(inputs["labels"]), 2 * hidden)
    np.testing.assert_array_equal(inputs["labels"], batch["emotion_labels"].numpy())
    np.testing.assert_allclose(inputs["tokens_au_logits"], au_before.detach().numpy(), atol=1e-5)
    features = {view: head_features(inputs, view, with_au_probabilities) for view in ("tokens", "flipped_tokens")}
    extra = model.config.num_aus if with_au_probabilities else 0
    assert features["tokens"].shape == (len(inputs["labels"]), 2 * hidden + extra)
    head = fit_emotion_head(
        [(features["tokens"], inputs["labels"], 1.0)], len(model.config.id2label), steps=5, learning_rate=1e-2
    )
    install_emotion_head(model, head, reads_au_probabilities=with_au_probabilities)
    assert model.config.emotion_reads_au_features is True
    assert model.config.emotion_reads_au_probabilities is with_au_probabilities
    output = model(pixel_values=batch["pixel_values"], au_boxes=batch["au_boxes"])
    np.testing.assert_allclose(output.emotion_logits.detach().numpy(), head_logits(head, features["tokens"]), atol=1e-5)
    torch.testing.assert_close(output.au_logits, au_before)  # the AU recogniser is kept as it was
    # The mirrored view reads the mirrored image with mirrored AU boxes.
    mirrored = model(pixel_values=batch["pixel_values"].flip(-1), au_boxes=flip_au_boxes(batch["au_boxes"]))
    np.testing.assert_allclose(
        mirrored.emotion_logits.detach().numpy(), head_logits(head, features["flipped_tokens"]), atol=1e-5
    )


def test_fit_weighs_each_set_by_its_mean_loss():
    # Two sets drawn alike but labelled apart: the fitted probability of the small set's class is its share of the
    # weight, not its share of the rows (8 of 408).
    rng = np.random.default_rng(0)
    large = rng.normal(size=(400, 4)).astype(np.float32)
    small = rng.normal(size=(8, 4)).astype(np.float32)
    for weight, expected in ((1.0, 0.5), (1 / 3, 0.25)):
        sets = [(large, np.zeros(400, dtype=np.int64), 1.0), (small, np.ones(8, dtype=np.int64), weight)]
        head = fit_emotion_head(sets, num_classes=2, steps=300, learning_rate=5e-2)
        probability = torch.softmax(torch.from_numpy(head_logits(head, large)), -1)[:, 1].mean().item()
        assert probability == pytest.approx(expected, abs=0.1), weight
    with pytest.raises(ValueError, match="at least one"):
        fit_emotion_head([], num_classes=2, steps=1, learning_rate=1e-2)


def test_emotion_recogniser_reads_au_probabilities_without_training_the_au_recogniser():
    torch.manual_seed(0)
    model = MF2ForFacialStateRecognition(tiny_config(emotion_reads_au_probabilities=True)).train()
    batch = tiny_batch(model.config)
    output = model(pixel_values=batch["pixel_values"], au_boxes=batch["au_boxes"])
    output.emotion_logits.sum().backward()
    assert model.heads.emotion_classifier.weight.grad[:, -model.config.num_aus :].abs().sum() > 0  # it reads them
    assert model.heads.au_weight.grad is None or not model.heads.au_weight.grad.any()
