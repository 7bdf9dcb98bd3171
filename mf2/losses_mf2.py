"""Loss functions of MF²: BLIP-2's ITC / ITM / ITG pieces and the masked recognition losses.

Pure functions on tensors, so each one can be checked on its own against a hand computation.
"""

from collections.abc import Mapping

import torch
import torch.nn.functional as F

TEMPERATURE_RANGE = (0.001, 0.5)
"""Bounds of the learnable ITC temperature: below, the softmax saturates in half precision; above, ITC cannot sharpen."""


def clamp_temperature(temperature: torch.Tensor) -> torch.Tensor:
    """The learnable ITC temperature as every ITC term uses it, clamped to `TEMPERATURE_RANGE`."""
    return temperature.clamp(*TEMPERATURE_RANGE)


def weighted_loss(losses: Mapping[str, torch.Tensor], config) -> torch.Tensor | None:
    """`sum(config.loss_weight(name) * term)` over the loss terms present, None when there are none: the one place
    where MF²'s and DFN's totals are formed (weights from `MF2Config.loss_weights`)."""
    if not losses:
        return None
    return sum(config.loss_weight(name) * value for name, value in losses.items())


def caption_positive_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """`(M, M)` bool: pair (i, j) is positive when captions i and j are the same token sequence.

    Template captions repeat across a batch (two happy faces share one emotion caption); treating an identical
    caption as a negative would push apart what should be aligned, so identical captions count as positives.
    """
    tokens = input_ids.masked_fill(attention_mask == 0, -1)
    return (tokens[:, None, :] == tokens[None, :, :]).all(dim=-1)


def itc_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    temperature: torch.Tensor,
    positive_mask: torch.Tensor,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """In-batch image-text contrastive loss (paper eq. 3), image→text and text→image averaged.

    Args:
        image_features: `(M, Q, E)` L2-normalised query features; a pair's similarity is the best query's (BLIP-2).
        text_features: `(M, E)` L2-normalised caption features.
        temperature: scalar.
        positive_mask: `(M, M)` bool; every row holds at least its diagonal. Positives share the target mass.
        label_smoothing: as in `torch.nn.functional.cross_entropy`.

    Returns:
        The loss and the `(M, M)` image→text similarity matrix (before dividing by the temperature).
    """
    similarity = torch.einsum("iqe,te->itq", image_features, text_features).amax(dim=-1)  # (images, texts)
    targets = positive_mask.float() / positive_mask.float().sum(dim=1, keepdim=True)
    logits = similarity / temperature
    image_to_text = F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    text_to_image = F.cross_entropy(logits.t(), targets.t(), label_smoothing=label_smoothing)
    return (image_to_text + text_to_image) / 2, similarity


def sample_hard_negatives(
    similarity: torch.Tensor,
    positive_mask: torch.Tensor,
    generator: torch.Generator | None = None,
    hardest: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """BLIP-2's hard-negative mining for ITM: negatives drawn with probability softmax(similarity), positives excluded.

    Args:
        similarity: `(M, M)` image→text similarity (no gradient needed).
        positive_mask: `(M, M)` bool.
        hardest: take the most similar negative instead of drawing one: what the models do in eval mode, so that an
            evaluation loss does not depend on the random state (training keeps BLIP-2's draw).

    Returns:
        `negative_text` `(M,)`: for each image, a text index; `negative_image` `(M,)`: for each text, an image index;
        and two `(M,)` bool masks telling which rows had any negative to draw (a batch of identical captions has none).
    """
    similarity = similarity.detach().float()
    allowed = ~positive_mask

    def draw(scores: torch.Tensor, allowed_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = (F.softmax(scores, dim=1) + 1e-4) * allowed_rows
        has_negative = allowed_rows.any(dim=1)
        weights = torch.where(has_negative[:, None], weights, torch.ones_like(weights))
        if hardest:
            return weights.argmax(dim=1), has_negative
        return torch.multinomial(weights, 1, generator=generator).squeeze(1), has_negative

    negative_text, text_valid = draw(similarity, allowed)
    negative_image, image_valid = draw(similarity.t(), allowed.t())
    return negative_text, negative_image, text_valid, image_valid


def multimodal_causal_mask(num_queries: int, text_attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """BLIP-2's ITG mask, additive `(M, 1, Q+L, Q+L)`: queries see queries only; text sees all queries and earlier text.

    Padding text positions are never attended to.
    """
    batch, length = text_attention_mask.shape
    device = text_attention_mask.device
    total = num_queries + length
    allowed = torch.zeros(batch, total, total, dtype=torch.bool, device=device)
    allowed[:, :num_queries, :num_queries] = True
    allowed[:, num_queries:, :num_queries] = True
    causal = torch.tril(torch.ones(length, length, dtype=torch.bool, device=device))
    allowed[:, num_queries:, num_queries:] = causal[None] & text_attention_mask[:, None, :].bool()
    mask = torch.zeros(batch, 1, total, total, dtype=dtype, device=device)
    return mask.masked_fill(~allowed[:, None], torch.finfo(dtype).min)


def itg_loss(
    hidden_states: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    label_smoothing: float,
    lm_head=None,
) -> torch.Tensor:
    """Next-token cross-entropy of the caption given the image queries (paper eq. 5); padding is ignored.

    Args:
        hidden_states: `(M, L, H)` states at each caption position (position t predicts token t+1), or `(M, L, V)`
            logits when `lm_head` is None.
        lm_head: maps states to vocabulary logits. It runs only on the positions that predict a real token:
            vocabulary-wide logits at padding positions (most of a padded batch) would be computed and thrown away.
    """
    keep = attention_mask[:, 1:].bool()
    selected = hidden_states[:, :-1][keep]
    logits = selected if lm_head is None else lm_head(selected)
    return F.cross_entropy(logits.float(), input_ids[:, 1:][keep], label_smoothing=label_smoothing)


def masked_au_loss(logits: torch.Tensor, labels: torch.Tensor, pos_weight: torch.Tensor | None = None):
    """Binary cross-entropy over the known AU labels (label -1 = unknown, left out of the mean)."""
    known = labels >= 0
    if not known.any():
        return logits.sum() * 0.0  # keeps the graph connected (data-parallel needs every head in every step)
    return F.binary_cross_entropy_with_logits(
        logits[known].float(),
        labels[known].float(),
        pos_weight=None if pos_weight is None else pos_weight.expand_as(labels)[known],
    )


def masked_emotion_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the known emotion labels (label -1 = unknown)."""
    if not (labels >= 0).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), labels, ignore_index=-1)


__all__ = [
    "caption_positive_mask",
    "itc_loss",
    "itg_loss",
    "masked_au_loss",
    "masked_emotion_loss",
    "multimodal_causal_mask",
    "sample_hard_negatives",
]
