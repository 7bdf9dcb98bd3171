"""`mf2 finetune` / `python -m mf2.training.finetune`: DFN fine-tuning of a frozen MF² (or full fine-tuning, `--full`).

```
# your own faces: a folder of images with a labels.csv (docs/finetuning.md), on the shipped model
mf2 finetune --model_name_or_path mf2-base --dfn_num_layers 4 --train_data mfa:my_faces \\
    --eval_data mfa:my_faces_valid --output_dir outputs/my-dfn
python -m mf2.training.finetune --model_name_or_path outputs/pretrain \\
    --train_data ferplus:/data/ferplus/train.parquet ckplus:/data/ckplus/dev.parquet \\
    --eval_data ferplus:/data/ferplus/valid.parquet --output_dir outputs/dfn
# appendix D transition: AU pretraining, then emotion fine-tuning
python -m mf2.training.pretrain --stage au_pretrain ... --output_dir outputs/au-pretrain
python -m mf2.training.finetune --model_name_or_path outputs/au-pretrain --task emotion ... --output_dir outputs/au2emo
# subject-wise 5-fold cross-validation on CK+ (fine-tune on 4 folds' subjects, test on the 5th)
python -m mf2.training.finetune --model_name_or_path outputs/pretrain --train_data ckplus:/data/ckplus/dev.parquet \\
    --cv_folds 5 --output_dir outputs/dfn-cv
```

The model is the image-only recogniser of the checkpoint (`MF2ForFacialStateRecognition`: the text side is not even
loaded). DFN (`mf2.dfn`) freezes it and trains the side networks and copies of the heads; by default the frozen
backbone's features are computed once (`mf2.dfn.DFNFeatureCache`) and every epoch trains on them, which is exact for
un-augmented data. `--full` trains every Q-Former and head weight instead (the vision encoder too with
`--train_vision_encoder`), the paper's "w/o DFN" comparison.

Outputs: the adapter (`adapter_config.json`, `adapter_model.safetensors`) and `thresholds.json` (per-AU thresholds
tuned on `--eval_data`) for DFN, or the full model with the thresholds in its `config.json` for `--full`; the processor;
metrics. With `--cv_folds K`: `cv_results.json` (per-fold, mean and pooled metrics) and `cv_predictions.jsonl`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset
from transformers import set_seed

from ..data.schema import DataError
from ..modeling_mf2 import MF2ForFacialStateRecognition
from .arguments import MF2FinetuneArguments, MF2ScriptArguments, MF2TrainingArguments, check_command, parse_args
from .collator import MF2DataCollator
from .evaluate import predict, score, store_thresholds
from .metrics import compute_mf2_metrics, tune_au_thresholds
from .preprocess import group_folds
from .pretrain import TRAINING_DATA_FILE, load_splits
from .pretraining_stages import TASKS
from .run_setup import (
    apply_mixed_precision,
    load_processor,
    resolve_resume_checkpoint,
    setup_torch,
    write_json,
    write_jsonl,
)
from .trainer import MF2Trainer, make_compute_metrics, prediction_records

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


def _trainable_parameters(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate `split_predictions` dicts."""
    return {key: None if parts[0][key] is None else np.concatenate([part[key] for part in parts]) for key in parts[0]}


def _cached_collator():
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
) -> FitResult:
    """The one fine-tuning sequence, for `mf2 finetune` and each cross-validation fold: train → predict `score_set` →
    score → tune AU thresholds → write predictions.

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
        tune_parts, _ = predict(trainer, tune_set)
        labels = tune_parts["au_labels"]
        if labels is not None and tune_parts["au_probs"] is not None and (labels == 1).any():
            result.thresholds = tune_au_thresholds(
                tune_parts["au_probs"], labels, default=config.au_decision_thresholds
            )
    result.parts, result.trainer_metrics = predict(trainer, score_set)
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


def _fold_sets(full_features, dataset, train_rows, test_rows, collator):
    """A fold's training and test sets, and their collator: rows of the feature cache, or of the dataset."""
    if full_features is not None:
        return Subset(full_features, train_rows.tolist()), Subset(full_features, test_rows.tolist()), _cached_collator()
    return dataset.select(train_rows), dataset.select(test_rows), collator


def _pooled_report(results: list[dict[str, Any]], pooled: list[dict[str, Any]], config) -> tuple[dict, dict]:
    """The cross-validation report (per-fold metrics, their mean, pooled metrics) and the pooled predictions."""
    merged = _merge(pooled)
    pooled_metrics, _ = score(merged, config, prefix="pooled")
    tuned = compute_mf2_metrics(
        au_probs=merged["au_probs"] >= merged["thresholds"], au_labels=merged["au_labels"], au_names=config.au_names
    )
    pooled_metrics.update(
        {f"pooled_{key}_train_tuned": value for key, value in tuned.items() if key.startswith("au_f1")}
    )
    numeric = [key for key in results[0] if isinstance(results[0][key], float) and all(key in r for r in results)]
    mean = {key: float(np.mean([r[key] for r in results])) for key in numeric}
    return {"num_folds": len(results), "folds": results, "mean": mean, "pooled": pooled_metrics}, merged


def cross_validate(base, dataset, collator, processor, script_args, finetune_args, training_args) -> dict[str, Any]:
    """K-fold cross-validation over the dataset's groups (subjects): for every fold, a fresh adapter (or a fresh copy
    of the model with `--full`) is fine-tuned on the other folds and tested on this one. AU thresholds are tuned on the
    training folds' predictions (never on the test fold).

    Returns:
        `{"folds": [...], "mean": {...}, "pooled": {...}}`: per-fold metrics, their mean, and the metrics of all test
        predictions pooled (every example is tested exactly once).
    """
    output_dir = Path(training_args.output_dir)
    folds = group_folds(dataset["group"], finetune_args.cv_folds, seed=finetune_args.cv_seed)
    config = base.config
    full_features = None
    if uses_feature_cache(finetune_args):
        # One backbone for every fold, so one cache entry serves them all.
        full_features = cached_features(
            make_finetune_model(copy.deepcopy(base), finetune_args),
            dataset,
            collator,
            script_args.resolved_cache_dir,
            training_args.per_device_eval_batch_size,
            training_args,
        )
    results, pooled = [], []
    for fold, test_rows in enumerate(folds):
        train_rows = np.sort(np.concatenate([rows for other, rows in enumerate(folds) if other != fold]))
        set_seed(training_args.seed + fold)
        model = make_finetune_model(copy.deepcopy(base), finetune_args)
        train_part, test_part, data_collator = _fold_sets(full_features, dataset, train_rows, test_rows, collator)
        fold_args = dataclasses.replace(
            training_args, output_dir=str(output_dir / f"fold-{fold}"), save_strategy="no", eval_strategy="no"
        )
        trainer = MF2Trainer(
            model=model,
            args=fold_args,
            train_dataset=train_part,
            data_collator=data_collator,
            compute_metrics=make_compute_metrics(config),
        )
        fit = fit_and_score(trainer, config, test_part, prefix="test", tune_set=train_part)
        thresholds, metrics = fit.thresholds, fit.metrics
        groups = sorted(set(np.asarray(dataset.select(test_rows)["group"]).tolist()))
        results.append(
            {
                "fold": fold,
                "test_groups": groups,
                "train_rows": len(train_rows),
                "test_rows": len(test_rows),
                "train_seconds": fit.train_seconds,
                "au_thresholds": thresholds,
                **metrics,
            }
        )
        test_parts = fit.parts
        test_parts["fold"] = np.full(len(test_rows), fold)
        test_parts["thresholds"] = np.tile(np.asarray(thresholds or config.au_decision_thresholds), (len(test_rows), 1))
        pooled.append(test_parts)
        logger.info(
            "Fold %d: %s", fold, {k: round(v, 4) for k, v in metrics.items() if k.endswith(("au_f1", "accuracy"))}
        )
    report, merged = _pooled_report(results, pooled, config)
    if trainer.is_world_process_zero():
        write_json(output_dir / "cv_results.json", report)
        records = prediction_records(merged, config)
        for record, fold in zip(records, merged["fold"]):
            record["fold"] = int(fold)
        write_jsonl(output_dir / "cv_predictions.jsonl", records)
    return report


def _evaluate_base(trainer: MF2Trainer, eval_set, config) -> dict[str, Any]:
    """Metrics before any update: a fresh DFN adapter (zero up-projections, head copies) gives the base model's
    outputs. Logged and saved as `base_eval_results.json`."""
    start = time.perf_counter()
    parts, _ = predict(trainer, eval_set, prefix="base_eval")
    metrics, _ = score(parts, config, prefix="base_eval")
    metrics["base_eval_seconds"] = time.perf_counter() - start
    trainer.log_metrics("base_eval", metrics)
    trainer.save_metrics("base_eval", metrics)
    return metrics


def _finetune_sets(model, train, evaluation, collator, script_args, finetune_args, training_args):
    """Training and evaluation sets and their collator: backbone features from the cache under DFN, else the data."""
    if not uses_feature_cache(finetune_args):
        return train, evaluation, collator
    cache_dir, batch = script_args.resolved_cache_dir, training_args.per_device_eval_batch_size
    train_set = cached_features(model, train, collator, cache_dir, batch, training_args)
    eval_set = (
        None if evaluation is None else cached_features(model, evaluation, collator, cache_dir, batch, training_args)
    )
    return train_set, eval_set, _cached_collator()


def _save_training(fit: FitResult, facts: dict[str, Any], summary: dict, finetune_args) -> dict[str, Any]:
    """After training: the model saved (DFN: its adapter; full: the model) and marked trained, the train metrics
    (`Trainer`'s plus `facts`) logged and saved, the trainer state and the data summary written. Returns the metrics."""
    trainer = fit.trainer
    metrics: dict[str, Any] = dict(fit.train_output.metrics)
    metrics.update(facts, global_step=trainer.state.global_step)
    config_of_trained = getattr(trainer.model, "config", None)  # a DFN model saves its adapter; full, the model
    if config_of_trained is not None:
        config_of_trained.trained = True  # travels with the checkpoint: results then say "model_trained": true
    trainer.save_model()
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    if trainer.is_world_process_zero():
        write_json(
            Path(trainer.args.output_dir) / TRAINING_DATA_FILE,
            {"stage": f"finetune-{'full' if finetune_args.full else 'dfn'}", "task": finetune_args.task, **summary},
        )
    return metrics


def _eval_metrics(fit: FitResult, eval_set, config, script_args, finetune_args) -> dict[str, Any]:
    """The evaluation's metrics (plus `Trainer`'s losses, size, time and tuned thresholds), logged and saved; the tuned
    thresholds kept with the model."""
    trainer = fit.trainer
    metrics = dict(fit.metrics)
    metrics.update({key: value for key, value in fit.trainer_metrics.items() if key.endswith("loss")})
    metrics.update(eval_samples=len(eval_set), eval_seconds=fit.score_seconds)
    if fit.thresholds is not None:
        metrics["eval_au_thresholds"] = fit.thresholds
        if trainer.is_world_process_zero():
            _store_tuned_thresholds(fit.thresholds, config, script_args, finetune_args, Path(trainer.args.output_dir))
    trainer.log_metrics("eval", {k: v for k, v in metrics.items() if not isinstance(v, list)})
    trainer.save_metrics("eval", metrics)
    return metrics


def _store_tuned_thresholds(thresholds, config, script_args, finetune_args, output_dir: Path) -> None:
    """Keep the thresholds tuned on the evaluation set: in the model's config (full) or beside the adapter (DFN)."""
    config.au_thresholds = thresholds
    if finetune_args.full:
        config.save_pretrained(output_dir)
    else:
        store_thresholds(thresholds, script_args.model_name_or_path, adapter_dir=output_dir)


def run_finetuning(script_args, finetune_args, training_args) -> dict[str, Any]:
    """Fine-tune as `main` does; returns the metrics (or the cross-validation report)."""
    setup_torch()
    apply_mixed_precision(script_args.mixed_precision, training_args)
    if not script_args.model_name_or_path:
        raise ValueError("mf2 finetune needs --model_name_or_path (an MF² checkpoint).")
    if not script_args.train_data:
        raise ValueError("mf2 finetune needs --train_data.")
    set_seed(training_args.seed)
    emotion_targets, au_targets = TASKS[finetune_args.task]
    base = MF2ForFacialStateRecognition.from_pretrained(script_args.model_name_or_path)
    processor = load_processor(script_args, base.config)
    start = time.perf_counter()
    train, evaluation, summary = load_splits(script_args, training_args, processor)
    preprocess_seconds = time.perf_counter() - start
    collator = MF2DataCollator(processor, with_captions=False, emotion_targets=emotion_targets, au_targets=au_targets)
    if finetune_args.cv_folds:
        return cross_validate(base, train, collator, processor, script_args, finetune_args, training_args)

    config, output_dir = base.config, Path(training_args.output_dir)
    model = make_finetune_model(base, finetune_args)
    trainable, total = _trainable_parameters(model)
    logger.info(
        "%s: %d of %d parameters train (%.2f%%).",
        "Full fine-tuning" if finetune_args.full else "DFN",
        trainable,
        total,
        100 * trainable / total,
    )
    start = time.perf_counter()
    train_set, eval_set, data_collator = _finetune_sets(
        model, train, evaluation, collator, script_args, finetune_args, training_args
    )
    cache_seconds = time.perf_counter() - start
    trainer = MF2Trainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=data_collator,
        processing_class=processor,
        compute_metrics=make_compute_metrics(config),
    )
    base_metrics = (
        _evaluate_base(trainer, eval_set, config) if finetune_args.evaluate_base and eval_set is not None else {}
    )
    facts = dict(
        train_samples=len(train),
        preprocess_seconds=preprocess_seconds,
        feature_cache_seconds=cache_seconds,
        trainable_parameters=trainable,
        total_parameters=total,
    )
    metrics: dict[str, Any] = {}
    checkpoint = resolve_resume_checkpoint(
        script_args.resume, training_args.resume_from_checkpoint, training_args.output_dir
    )
    fit = fit_and_score(
        trainer,
        config,
        eval_set,
        tune=script_args.tune_thresholds,
        resume=checkpoint,
        after_training=lambda fit: metrics.update(_save_training(fit, facts, summary, finetune_args)),
        predictions_file=output_dir / "eval_predictions.jsonl" if script_args.save_predictions else None,
    )
    if eval_set is not None:
        metrics.update(_eval_metrics(fit, eval_set, config, script_args, finetune_args))
    return {**base_metrics, **metrics}


USAGE = "--model_name_or_path MODEL --train_data SPEC [SPEC ...] --output_dir DIR [option ...]"


def main(argv: list[str] | None = None) -> int:
    """`mf2 finetune`: see the module docstring; `--help` lists the main options, `--help-all` every option. A bad
    command line or data (a missing folder, a label file with a missing column) is one line on stderr, exit status 2."""
    script_args, finetune_args, training_args = parse_args(
        (MF2ScriptArguments, MF2FinetuneArguments, MF2TrainingArguments),
        argv,
        description="DFN (or full) fine-tuning of an MF² checkpoint. Data: `--train_data mfa:FOLDER` for a folder of "
        "images with a labels.csv (docs/finetuning.md), or 'ferplus:FILE', 'ckplus:FILE', 'mfa:DATASET'.",
        prog="mf2 finetune",
        usage=USAGE,
    )
    try:
        check_command("mf2 finetune", script_args, training_args, required=("model_name_or_path", "train_data"))
        run_finetuning(script_args, finetune_args, training_args)
    except DataError as error:
        print(f"mf2 finetune: {error}", file=sys.stderr)
        return 2
    return 0


__all__ = ["FitResult", "cross_validate", "fit_and_score", "main", "make_finetune_model", "run_finetuning"]

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(name)s: %(message)s")
    torch.set_flush_denormal(True)
    raise SystemExit(main())
