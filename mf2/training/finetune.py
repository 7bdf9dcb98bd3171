"""`mf2 finetune` / `python -m mf2.training.finetune`: DFN fine-tuning of a frozen MF² (or full fine-tuning, `--full`).

```
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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset
from transformers import set_seed

from ..modeling_mf2 import MF2ForFacialStateRecognition
from .arguments import MF2FinetuneArguments, MF2ScriptArguments, MF2TrainingArguments, parse_args
from .collator import MF2DataCollator
from .evaluate import predict, score, store_thresholds
from .metrics import compute_mf2_metrics, tune_au_thresholds
from .preprocess import group_folds
from .pretrain import TRAINING_DATA_FILE, load_splits
from .stages import TASKS
from .trainer import (
    MF2Trainer,
    apply_mixed_precision,
    load_processor,
    make_compute_metrics,
    prediction_records,
    resolve_resume_checkpoint,
    setup_torch,
    write_json,
    write_jsonl,
)

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
        logger.warning("DFN: %d cells requested, the Q-Former has %d layers; using %d.", finetune_args.dfn_num_layers,
                       layers, layers)  # fmt: skip
    options: dict[str, Any] = {"num_layers": min(finetune_args.dfn_num_layers, layers),
                               "gate_scaling": finetune_args.dfn_gate_scaling}  # fmt: skip
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
        return cache.build(dataset, collate_fn=collator, batch_size=batch_size, fingerprint=fingerprint,
                           label_names=CACHE_LABELS)  # fmt: skip


def _trainable_parameters(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate `split_predictions` dicts."""
    return {key: None if parts[0][key] is None else np.concatenate([part[key] for part in parts]) for key in parts[0]}


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
        full_features = cached_features(make_finetune_model(copy.deepcopy(base), finetune_args), dataset, collator,
                                        script_args.resolved_cache_dir, training_args.per_device_eval_batch_size,
                                        training_args)  # fmt: skip
    results, pooled = [], []
    for fold, test_rows in enumerate(folds):
        train_rows = np.sort(np.concatenate([rows for other, rows in enumerate(folds) if other != fold]))
        set_seed(training_args.seed + fold)
        model = make_finetune_model(copy.deepcopy(base), finetune_args)
        if full_features is not None:
            train_part, test_part = (
                Subset(full_features, train_rows.tolist()),
                Subset(full_features, test_rows.tolist()),
            )
            data_collator = _cached_collator()
        else:
            train_part, test_part = dataset.select(train_rows), dataset.select(test_rows)
            data_collator = collator
        fold_args = dataclasses.replace(
            training_args, output_dir=str(output_dir / f"fold-{fold}"), save_strategy="no", eval_strategy="no"
        )
        trainer = MF2Trainer(model=model, args=fold_args, train_dataset=train_part, data_collator=data_collator,
                             compute_metrics=make_compute_metrics(config))  # fmt: skip
        start = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - start
        train_parts, _ = predict(trainer, train_part)
        test_parts, _ = predict(trainer, test_part)
        thresholds = None
        if train_parts["au_labels"] is not None and (train_parts["au_labels"] == 1).any():
            thresholds = tune_au_thresholds(train_parts["au_probs"], train_parts["au_labels"])
        metrics, _ = score(test_parts, config, prefix="test")
        if thresholds is not None:
            tuned = compute_mf2_metrics(au_probs=test_parts["au_probs"], au_labels=test_parts["au_labels"],
                                        au_thresholds=thresholds, au_names=config.au_names)  # fmt: skip
            metrics.update(
                {f"test_{key}_train_tuned": value for key, value in tuned.items() if key.startswith("au_f1")}
            )
        groups = sorted(set(np.asarray(dataset.select(test_rows)["group"]).tolist()))
        results.append({"fold": fold, "test_groups": groups, "train_rows": len(train_rows), "test_rows": len(test_rows),
                        "train_seconds": train_seconds, "au_thresholds": thresholds, **metrics})  # fmt: skip
        test_parts["fold"] = np.full(len(test_rows), fold)
        test_parts["thresholds"] = np.tile(np.asarray(thresholds or config.au_decision_thresholds),
                                           (len(test_rows), 1))  # fmt: skip
        pooled.append(test_parts)
        logger.info(
            "Fold %d: %s", fold, {k: round(v, 4) for k, v in metrics.items() if k.endswith(("au_f1", "accuracy"))}
        )
    merged = _merge(pooled)
    pooled_metrics, _ = score(merged, config, prefix="pooled")
    tuned = compute_mf2_metrics(au_probs=merged["au_probs"] >= merged["thresholds"], au_labels=merged["au_labels"],
                                au_names=config.au_names)  # fmt: skip
    pooled_metrics.update(
        {f"pooled_{key}_train_tuned": value for key, value in tuned.items() if key.startswith("au_f1")}
    )
    numeric = [key for key in results[0] if isinstance(results[0][key], float) and all(key in r for r in results)]
    mean = {key: float(np.mean([r[key] for r in results])) for key in numeric}
    report = {"num_folds": len(folds), "folds": results, "mean": mean, "pooled": pooled_metrics}
    if trainer.is_world_process_zero():
        write_json(output_dir / "cv_results.json", report)
        records = prediction_records(merged, config)
        for record, fold in zip(records, merged["fold"]):
            record["fold"] = int(fold)
        write_jsonl(output_dir / "cv_predictions.jsonl", records)
    return report


def _cached_collator():
    from ..dfn import collate_cached_features

    return collate_cached_features


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

    config = base.config
    model = make_finetune_model(base, finetune_args)
    trainable, total = _trainable_parameters(model)
    logger.info("%s: %d of %d parameters train (%.2f%%).", "Full fine-tuning" if finetune_args.full else "DFN",
                trainable, total, 100 * trainable / total)  # fmt: skip
    train_set, eval_set, data_collator = train, evaluation, collator
    start = time.perf_counter()
    if uses_feature_cache(finetune_args):
        cache_dir, batch = script_args.resolved_cache_dir, training_args.per_device_eval_batch_size
        train_set = cached_features(model, train, collator, cache_dir, batch, training_args)
        eval_set = None if evaluation is None else cached_features(model, evaluation, collator, cache_dir, batch,
                                                                   training_args)  # fmt: skip
        data_collator = _cached_collator()
    cache_seconds = time.perf_counter() - start
    trainer = MF2Trainer(
        model=model, args=training_args, train_dataset=train_set, eval_dataset=eval_set, data_collator=data_collator,
        processing_class=processor, compute_metrics=make_compute_metrics(config),
    )  # fmt: skip
    base_metrics: dict[str, Any] = {}
    if finetune_args.evaluate_base and eval_set is not None:
        # Before any update: a fresh DFN adapter (zero up-projections, head copies) gives the base model's outputs.
        start = time.perf_counter()
        parts, _ = predict(trainer, eval_set, prefix="base_eval")
        base_metrics, _ = score(parts, config, prefix="base_eval")
        base_metrics["base_eval_seconds"] = time.perf_counter() - start
        trainer.log_metrics("base_eval", base_metrics)
        trainer.save_metrics("base_eval", base_metrics)
    checkpoint = resolve_resume_checkpoint(script_args.resume, training_args.resume_from_checkpoint,
                                           training_args.output_dir)  # fmt: skip
    result = trainer.train(resume_from_checkpoint=checkpoint)
    metrics: dict[str, Any] = dict(result.metrics)
    metrics.update(train_samples=len(train), preprocess_seconds=preprocess_seconds, feature_cache_seconds=cache_seconds,
                   trainable_parameters=trainable, total_parameters=total, global_step=trainer.state.global_step)  # fmt: skip
    config_of_trained = getattr(trainer.model, "config", None)  # a DFN model saves its adapter; full, the model
    if config_of_trained is not None:
        config_of_trained.trained = True  # travels with the checkpoint: results then say "model_trained": true
    trainer.save_model()
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    output_dir = Path(training_args.output_dir)
    if trainer.is_world_process_zero():
        write_json(output_dir / TRAINING_DATA_FILE, {"stage": f"finetune-{'full' if finetune_args.full else 'dfn'}",
                                                     "task": finetune_args.task, **summary})  # fmt: skip
    if eval_set is not None:
        start = time.perf_counter()
        parts, trainer_metrics = predict(trainer, eval_set)
        eval_metrics, thresholds = score(parts, config, tune=script_args.tune_thresholds)
        eval_metrics.update({key: value for key, value in trainer_metrics.items() if key.endswith("loss")})
        eval_metrics.update(eval_samples=len(eval_set), eval_seconds=time.perf_counter() - start)
        if thresholds is not None:
            eval_metrics["eval_au_thresholds"] = thresholds
        if trainer.is_world_process_zero():
            if thresholds is not None:
                config.au_thresholds = thresholds
                if finetune_args.full:
                    config.save_pretrained(output_dir)
                else:
                    store_thresholds(thresholds, script_args.model_name_or_path, adapter_dir=output_dir)
            if script_args.save_predictions:
                write_jsonl(output_dir / "eval_predictions.jsonl", prediction_records(parts, config))
        trainer.log_metrics("eval", {k: v for k, v in eval_metrics.items() if not isinstance(v, list)})
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
    return {**base_metrics, **metrics}


def main(argv: list[str] | None = None) -> int:
    """`mf2 finetune`: see the module docstring; `--help` lists every option."""
    script_args, finetune_args, training_args = parse_args(
        (MF2ScriptArguments, MF2FinetuneArguments, MF2TrainingArguments), argv,
        description="DFN (or full) fine-tuning of an MF² checkpoint.",
    )  # fmt: skip
    if training_args.output_dir is None:
        raise SystemExit("mf2 finetune: --output_dir is required.")
    run_finetuning(script_args, finetune_args, training_args)
    return 0


__all__ = ["cross_validate", "main", "make_finetune_model", "run_finetuning"]

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(name)s: %(message)s")
    torch.set_flush_denormal(True)
    raise SystemExit(main())
