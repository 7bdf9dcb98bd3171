"""The emotion recogniser refit on frozen MF² features (the recipe's `emotion_head` stage).

The emotion recogniser reads the Emo-VL feature and the mean AU-VL feature (`config.emotion_reads_au_features`, as in
`MF2RecognitionHeads.emotion_logits`). Emotions in CK+ are posed as FACS prototypes, so the AU-VL feature carries most
of what tells them apart; the Emo-VL feature, trained on FER+'s 48-px crops, carries FER+. The features are computed
once per trained model and the recogniser (a LayerNorm and a linear layer) is fitted on them full-batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..modeling_mf2 import MF2ForFacialStateRecognition, MF2RecognitionHeads
from .metrics import sigmoid
from .scoring import check_finite
from .vision_cache import flip_au_boxes

VIEWS = {"tokens": False, "flipped_tokens": True}  # cache view -> mirrored AU boxes


def emotion_head_inputs(
    model: MF2ForFacialStateRecognition,
    cached,
    views: tuple[str, ...] = ("tokens",),
    device: str = "cpu",
    batch_size: int = 128,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, np.ndarray]:
    """The emotion recogniser's input `(N, 2H)` (Emo-VL feature, then the mean AU-VL feature; `(N, H)` for a model with
    one branch) of every cached example in each of `views`, keyed by view, the AU recogniser's logits `(N, A)` keyed
    `<view>_au_logits` (kept so a refit can weigh what the AU model sees per AU, which the mean feature blurs), and
    `labels` `(N,)`. `cached` holds tokens for `model`'s frozen vision part."""
    model = model.eval().to(device)
    features: dict[str, np.ndarray] = {}
    total = len(cached) * len(views)
    if progress is not None:
        progress(0, total)
    for number, view in enumerate(views):
        parts, au_logits, labels = [], [], []
        loader = DataLoader(cached, batch_size=batch_size, collate_fn=lambda rows: rows)
        with torch.no_grad():
            for rows in loader:
                tokens = torch.stack([row["cached_features"][view] for row in rows]).float().to(device)
                boxes = torch.stack([row["au_boxes"] for row in rows]).float()
                boxes = flip_au_boxes(boxes) if VIEWS[view] else boxes
                output = model.mf2(vision_tokens=tokens, au_boxes=boxes.to(device))
                present = [output.emotion_embeds, None if output.au_embeds is None else output.au_embeds.mean(dim=1)]
                joined = torch.cat([part for part in present if part is not None], dim=-1)  # one branch: its own
                parts.append(joined.float().cpu().numpy())
                au = model.heads.au_logits(output.emotion_embeds, output.au_embeds)
                au_logits.append(np.zeros((len(rows), 0), np.float32) if au is None else au.float().cpu().numpy())
                labels.append(np.asarray([int(row["emotion_labels"]) for row in rows]))
                if progress is not None:  # over every view, so the ETA holds for the whole pass
                    progress(number * len(cached) + sum(len(part) for part in labels), total)
        features[view] = np.concatenate(parts)
        features[f"{view}_au_logits"] = np.concatenate(au_logits)
        features["labels"] = np.concatenate(labels)
    return features


def head_features(features: Mapping[str, np.ndarray], key: str, with_au_probabilities: bool) -> np.ndarray:
    """The recogniser's input for `features[key]` (as `emotion_head_inputs` keys them, with an optional `<set>.`
    prefix): the features, then with `with_au_probabilities` the AU recogniser's probabilities, as
    `MF2RecognitionHeads.emotion_logits` reads them under `config.emotion_reads_au_probabilities`."""
    if not with_au_probabilities:
        return features[key]
    probabilities = sigmoid(features[f"{key}_au_logits"])
    return np.concatenate([features[key], probabilities.astype(features[key].dtype)], axis=1)


def class_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits, labels.long())


def fit_emotion_head(
    sets: list[tuple[np.ndarray, np.ndarray, float]],
    num_classes: int,
    steps: int,
    learning_rate: float,
    seed: int = 0,
    loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = class_loss,
) -> torch.nn.Sequential:
    """A LayerNorm + linear recogniser fitted full-batch on `(features, labels, weight)` sets: the loss is the weighted
    sum of each set's mean `loss_function` (cross-entropy over `num_classes`; `mf2 ablate`'s AU probe passes its own),
    so a small set (CK+) is not drowned by a large one (FER+)."""
    if not any(len(labels) for _, labels, _ in sets):
        raise ValueError("fit_emotion_head needs at least one labelled row.")
    torch.manual_seed(seed)
    width = sets[0][0].shape[1]
    head = torch.nn.Sequential(torch.nn.LayerNorm(width), torch.nn.Linear(width, num_classes))
    tensors = [(torch.from_numpy(x).float(), torch.from_numpy(y), w) for x, y, w in sets if len(y)]
    optimizer = torch.optim.AdamW(head.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        loss = sum(w * loss_function(head(x), y) for x, y, w in tensors)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return head.eval()


def head_logits(head: torch.nn.Module, features: np.ndarray) -> np.ndarray:
    """`head`'s logits of `features`. Raises `NonFinitePredictionsError` where some are NaN or infinite (a refit that
    diverged), as every prediction the training commands score does."""
    with torch.no_grad():
        logits = head(torch.from_numpy(features).float()).numpy()
    check_finite({"emotion_logits": logits})
    return logits


def install_emotion_head(
    model: MF2ForFacialStateRecognition, head: torch.nn.Sequential, reads_au_probabilities: bool = False
) -> None:
    """Give `model` an emotion recogniser that reads the features `head` was fitted on (Emo-VL and the mean AU-VL
    feature, or the one branch a one-branch model has, then with `reads_au_probabilities` the AU probabilities, as
    `head_features` composes them), with `head`'s weights; the AU recogniser's weights are kept."""
    model.config.emotion_reads_au_features = True
    model.config.emotion_reads_au_probabilities = reads_au_probabilities
    heads = MF2RecognitionHeads(model.config)
    state: Mapping[str, torch.Tensor] = {
        **{k: v for k, v in model.heads.state_dict().items() if k.startswith("au_")},
        **{f"emotion_norm.{k}": v for k, v in head[0].state_dict().items()},
        **{f"emotion_classifier.{k}": v for k, v in head[1].state_dict().items()},
    }
    heads.load_state_dict(state)
    model.heads = heads.to(next(model.parameters()).dtype).train(model.training)  # a new module starts in train()


__all__ = ["emotion_head_inputs", "fit_emotion_head", "head_features", "head_logits", "install_emotion_head"]
