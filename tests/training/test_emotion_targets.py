"""FER+ vote distributions as emotion targets, class weights, and the soft cross-entropy."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mf2.configuration_mf2 import EMOTION_LABELS
from mf2.training.emotion_targets import (
    SoftEmotionTargets,
    class_weights,
    ferplus_vote_distributions,
    soft_emotion_loss,
)


def _votes_file(tmp_path):
    # FER+ order: neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF
    table = pa.table(
        {
            "file_name": ["fer0000001.png", "fer0000002.png"],
            "votes": [[6, 0, 0, 0, 0, 0, 0, 2, 2, 0], [0, 0, 0, 0, 5, 5, 0, 0, 0, 0]],
        }
    )
    pq.write_table(table, tmp_path / "train.parquet")
    return tmp_path / "train.parquet"


def test_votes_become_distributions_in_mf2_order(tmp_path):
    rows = ferplus_vote_distributions(_votes_file(tmp_path), ["fer0000002", "fer0000001"])
    index = {name: i for i, name in enumerate(EMOTION_LABELS)}
    np.testing.assert_allclose(rows.sum(axis=1), 1.0)
    assert rows[0, index["anger"]] == rows[0, index["disgust"]] == pytest.approx(0.5)
    # unknown votes carry no emotion; contempt is MF2's "other"
    assert rows[1, index["neutral"]] == pytest.approx(0.75) and rows[1, index["other"]] == pytest.approx(0.25)
    with pytest.raises(KeyError, match="no FER\\+ votes"):
        ferplus_vote_distributions(_votes_file(tmp_path), ["fer0000003"])


def test_class_weights_favour_rare_classes_and_average_one():
    distributions = np.eye(3)[[0] * 90 + [1] * 9 + [2]]
    weights = class_weights(distributions, power=0.5)
    assert weights[2] > weights[1] > weights[0]
    assert float((distributions * weights).sum(axis=1).mean()) == pytest.approx(1.0)
    np.testing.assert_allclose(class_weights(distributions, power=0.0), 1.0)


def test_soft_targets_replace_the_majority_label_and_the_loss_is_cross_entropy():
    distributions = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    collate = SoftEmotionTargets(
        lambda examples: {"example_ids": torch.tensor([1, 0]), "emotion_labels": torch.tensor([2, 0])}, distributions
    )
    batch = collate([])
    assert "emotion_labels" not in batch
    assert torch.equal(batch["labels"], torch.tensor([[0.0, 0.0, 1.0], [0.5, 0.5, 0.0]]))
    logits = torch.tensor([[0.1, 0.2, 2.0], [1.0, -1.0, 0.0]])
    one_hot = torch.nn.functional.one_hot(torch.tensor([2, 0]), 3).float()
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([2, 0]))
    assert soft_emotion_loss()({"emotion_logits": logits}, one_hot).item() == pytest.approx(expected.item())
    weighted = soft_emotion_loss(np.array([1.0, 1.0, 3.0]))({"emotion_logits": logits}, one_hot)
    manual = (3 * -torch.log_softmax(logits, -1)[0, 2] - torch.log_softmax(logits, -1)[1, 0]) / 2
    assert weighted.item() == pytest.approx(manual.item())
