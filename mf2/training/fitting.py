"""What a fine-tuning run trains and the one fine-tuning sequence: DFN on the frozen model (or the model itself with
`--full`), the frozen backbone's feature cache, and `fit_and_score` (train, predict, score, tune AU thresholds), used
by `mf2 finetune`, each of its cross-validation folds and each CK+ fold of `mf2 recipe`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..modeling_mf2 import MF2ForFacialStateRecognition
from .arguments import MF2FinetuneArguments
from .collator import MF2DataCollator
from .metrics import compute_mf2_metrics
from .run_setup import write_jsonl
from .scoring import predict, score, tuned_thresholds
from .trainer import MF2Trainer, prediction_records

logger = logging.getLogger(__name__)

CACHE_LABELS = ("au_labels", "emotion_labels", "example_ids")


def make_finetune_model(base: MF2ForFacialStateRecognition, finetune_args: MF2FinetuneArguments) -> nn.Module:
    """DFN on `base` (`mf2.dfn.get_dfn_model`), or `base` itself unfrozen for `--full`."""
    if finetune_args.full:
        base.requires_grad_(True)
        if not finetune_args.train_vision_encoder:
            base.mf2.vision_model.requires_grad_(False)
        return base
    from ..dfn import DFNConfig, get_dfn_model

    layers = base.config.qformer_config.num_hidden_layers
    if finetune_args.dfn_num_layers > layers:
        logger.warning(
            "DFN: %d cells requested, the Q-Former has %d layers; using %d.",
            finetune_args.dfn_num_layers,
            layers,
            layers,
        )
    options: dict[str, Any] = {
        "num_layers": min(finetune_args.dfn_num_layers, layers),
        "gate_scaling": finetune_args.dfn_gate_scaling,
    }
    if finetune_args.dfn_bottleneck_size:
        options["bottleneck_size"] = finetune_args.dfn_bottleneck_size
    return get_dfn_model(base, DFNConfig(**options))


def uses_feature_cache(finetune_args: MF2FinetuneArguments) -> bool:
    return finetune_args.feature_cache and not finetune_args.full


def cached_features(model, dataset, collator: MF2DataCollator, cache_dir: Path, batch_size: int, training_args):
    """`dataset` as backbone features of `model` (a DFN model), from the feature cache (computed on first use)."""
    from ..dfn import DFNFeatureCache

    cache = DFNFeatureCache(model, cache_dir / "dfn-features")
    # The pre-processed dataset's fingerprint plus the collator's settings identify the inputs: no hashing pass.
    fingerprint = f"{dataset._fingerprint}|{collator.fingerprint()}"
    with training_args.main_process_first(desc="DFN feature cache"):
        return cache.build(
            dataset, collate_fn=collator, batch_size=batch_size, fingerprint=fingerprint, label_names=CACHE_LABELS
        )


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def cached_collator():
    from ..dfn import collate_cached_features

    return collate_cached_features


@dataclass
class FitResult:
    """What `fit_and_score` gives back: the trainer, `Trainer.train`'s output and time, and, when a set was scored, its
    predictions (`split_predictions` parts), metrics, tuned AU thresholds (None when not tuned), the losses `Trainer`
    computed on it, and the prediction + scoring time."""

    trainer: MF2Trainer
    train_output: Any
    train_seconds: float
    parts: dict[str, Any] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    thresholds: list[float] | None = None
    trainer_metrics: dict[str, Any] = field(default_factory=dict)
    score_seconds: float = 0.0


def _thresholds_tuned_on(trainer: MF2Trainer, dataset, config, collator) -> list[float] | None:
    """Per-AU thresholds tuned on `trainer`'s predictions of `dataset` (None when no AU is labelled positive)."""
    return tuned_thresholds(predict(trainer, dataset, collator)[0], config)


def fit_and_score(
    trainer: MF2Trainer,
    config,
    score_set=None,
    *,
    prefix: str = "eval",
    tune: bool = False,
    tune_set=None,
    resume: str | bool | None = None,
    after_training: Callable[[FitResult], None] | None = None,
    predictions_file: Path | None = None,
    predict_collator: Callable | None = None,
) -> FitResult:
    """The one fine-tuning sequence, for `mf2 finetune`, each of its cross-validation folds and each of the recipe's CK+
    folds: train → predict `score_set` → score → tune AU thresholds → write predictions.

    Args:
        trainer, config: the trainer to run and the base model's config (AU names, emotion labels, thresholds).
        score_set: the set to predict and score after training (None: train only).
        prefix: metric-name prefix.
        tune: tune the AU thresholds on `score_set`'s own predictions (`--tune_thresholds`).
        tune_set: tune them instead on this set's predictions (cross-validation: the training folds, never the test
            fold); `score_set` is then also scored with them, as `{prefix}_au_f1*_train_tuned`.
        resume: `Trainer.train`'s `resume_from_checkpoint`.
        after_training: called with the result so far between training and prediction (saving the model).
        predictions_file: where to write one JSON line per scored example (main process only).
        predict_collator: the collator of the predictions, when not the training one (the recipe's AU stage trains
            without emotion labels, and scores them).
    """
    start = time.perf_counter()
    train_output = trainer.train(resume_from_checkpoint=resume)
    result = FitResult(trainer, train_output, time.perf_counter() - start)
    if after_training is not None:
        after_training(result)
    if score_set is None:
        return result
    start = time.perf_counter()
    if tune_set is not None:
        result.thresholds = _thresholds_tuned_on(trainer, tune_set, config, predict_collator)
    result.parts, result.trainer_metrics = predict(trainer, score_set, predict_collator)
    result.metrics, tuned = score(result.parts, config, tune=tune and tune_set is None, prefix=prefix)
    if tune_set is None:
        result.thresholds = tuned
    elif result.thresholds is not None:
        parts = result.parts
        tuned_metrics = compute_mf2_metrics(
            au_probs=parts["au_probs"],
            au_labels=parts["au_labels"],
            au_thresholds=result.thresholds,
            au_names=config.au_names,
        )
        result.metrics.update(
            {f"{prefix}_{key}_train_tuned": value for key, value in tuned_metrics.items() if key.startswith("au_f1")}
        )
    result.score_seconds = time.perf_counter() - start
    if predictions_file is not None and trainer.is_world_process_zero():
        write_jsonl(predictions_file, prediction_records(result.parts, config))
    return result


__all__ = [
    "CACHE_LABELS",
    "FitResult",
    "cached_collator",
    "cached_features",
    "fit_and_score",
    "make_finetune_model",
    "trainable_parameters",
    "uses_feature_cache",
]
