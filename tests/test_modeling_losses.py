"""Each loss function against a hand computation with explicit loops."""

import math

import pytest
import torch
import torch.nn.functional as F

from mf2.modeling_mf2 import (
    caption_positive_mask,
    itc_loss,
    itg_loss,
    masked_au_loss,
    masked_emotion_loss,
    multimodal_causal_mask,
    sample_hard_negatives,
)


def _smoothed_cross_entropy(logits: list[float], target: list[float], smoothing: float) -> float:
    log_norm = math.log(sum(math.exp(v) for v in logits))
    count = len(logits)
    return -sum(((1 - smoothing) * t + smoothing / count) * (v - log_norm) for v, t in zip(logits, target))


def test_itc_matches_hand_computation_with_shared_captions():
    torch.manual_seed(0)
    images = F.normalize(torch.randn(4, 3, 5), dim=-1)
    texts = F.normalize(torch.randn(4, 5), dim=-1)
    positives = torch.eye(4, dtype=torch.bool)
    positives[1, 3] = positives[3, 1] = True  # captions 1 and 3 are the same sentence
    temperature, smoothing = 0.07, 0.1
    loss, similarity = itc_loss(images, texts, torch.tensor(temperature), positives, smoothing)

    sim = [[max(float(images[i, q] @ texts[j]) for q in range(3)) for j in range(4)] for i in range(4)]
    total = 0.0
    for i in range(4):
        target = [float(positives[i, j]) / float(positives[i].sum()) for j in range(4)]
        total += _smoothed_cross_entropy([sim[i][j] / temperature for j in range(4)], target, smoothing)
        total += _smoothed_cross_entropy([sim[j][i] / temperature for j in range(4)], target, smoothing)
    assert loss.item() == pytest.approx(total / 8, rel=1e-5)
    assert torch.allclose(similarity, torch.tensor(sim), atol=1e-6)


def test_positive_mask_ignores_padding_only_differences():
    ids = torch.tensor([[1, 7, 8, 0], [1, 7, 8, 9], [1, 7, 8, 5], [1, 7, 9, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 0]])
    positives = caption_positive_mask(ids, mask)
    assert positives[0, 1] and positives[1, 0]  # same tokens, different ids under padding
    assert not positives[0, 2] and not positives[0, 3]
    assert positives.diagonal().all()


def test_hard_negatives_never_pick_positives_and_follow_similarity():
    similarity = torch.tensor([[5.0, 4.0, -9.0], [4.0, 5.0, -9.0], [0.0, 0.0, 5.0]])
    positives = torch.eye(3, dtype=torch.bool)
    positives[0, 1] = positives[1, 0] = True
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        negative_text, negative_image, text_valid, image_valid = sample_hard_negatives(similarity, positives, generator)
        for i in range(3):
            assert not positives[i, negative_text[i]] and not positives[negative_image[i], i]
        assert text_valid.all() and image_valid.all()
    # Row 2's negatives are 0 and 1 with equal similarity; rows 0/1 can only draw 2.
    assert negative_text[:2].tolist() == [2, 2]
    all_positive = torch.ones(2, 2, dtype=torch.bool)
    *_, text_valid, image_valid = sample_hard_negatives(torch.zeros(2, 2), all_positive)
    assert not text_valid.any() and not image_valid.any()


def test_multimodal_causal_mask_by_hand():
    text_mask = torch.tensor([[1, 1, 1, 0]])
    mask = multimodal_causal_mask(2, text_mask, torch.float32)
    assert mask.shape == (1, 1, 6, 6)
    for row in range(6):
        for col in range(6):
            if row < 2:
                allowed = col < 2
            else:
                allowed = col < 2 or (col <= row and text_mask[0, col - 2] == 1)
            assert (mask[0, 0, row, col] == 0) == allowed, (row, col)


def test_itg_matches_hand_computation():
    torch.manual_seed(1)
    logits = torch.randn(2, 4, 6)
    ids = torch.tensor([[1, 3, 4, 2], [1, 5, 0, 0]])
    attention = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    smoothing = 0.1
    losses = []
    for b in range(2):
        for t in range(3):
            if attention[b, t + 1]:
                target = [1.0 if v == ids[b, t + 1] else 0.0 for v in range(6)]
                losses.append(_smoothed_cross_entropy(logits[b, t].tolist(), target, smoothing))
    assert itg_loss(logits, ids, attention, smoothing).item() == pytest.approx(sum(losses) / len(losses), rel=1e-5)


def test_recognition_losses_mask_unknown_labels():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -2.0]], requires_grad=True)
    labels = torch.tensor([[1, -1, 0], [-1, 1, -1]])
    known = [(0, 0, 1), (0, 2, 0), (1, 1, 1)]
    expected = sum(
        -(
            y * math.log(1 / (1 + math.exp(-logits[r, c].item())))
            + (1 - y) * math.log(1 - 1 / (1 + math.exp(-logits[r, c].item())))
        )
        for r, c, y in known
    ) / len(known)
    assert masked_au_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    unknown = masked_au_loss(logits, torch.full_like(labels, -1))
    assert unknown.item() == 0.0 and unknown.requires_grad

    emotion_logits = torch.randn(3, 8)
    emotion_labels = torch.tensor([2, -1, 5])
    expected = F.cross_entropy(emotion_logits[[0, 2]], emotion_labels[[0, 2]])
    assert masked_emotion_loss(emotion_logits, emotion_labels).item() == pytest.approx(expected.item(), rel=1e-6)
    assert masked_emotion_loss(emotion_logits, torch.full((3,), -1)).item() == 0.0


def test_itg_runs_the_head_only_where_a_token_is_predicted():
    torch.manual_seed(2)
    hidden = torch.randn(2, 4, 5)
    head = torch.nn.Linear(5, 6)
    ids = torch.tensor([[1, 3, 4, 2], [1, 5, 0, 0]])
    attention = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    rows = []
    head.register_forward_hook(lambda module, inputs, output: rows.append(inputs[0].shape[0]))
    value = itg_loss(hidden, ids, attention, 0.1, lm_head=head)
    assert rows == [4]  # 3 + 1 predicted tokens, not 2 x 3 positions
    expected = itg_loss(head(hidden), ids, attention, 0.1)
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
