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
metrics. With `--cv_folds K`: `cv_results.json` (per-fold, mean and pooled metrics) and `cv_predictions.jsonl`; each
finished fold is kept in `fold-N/`, and `--resume` after a kill trains only the folds not finished.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset
from transformers import set_seed

from ..data.schema import DataError
from ..local_files import write_config, write_json
from ..modeling_mf2 import MF2ForFacialStateRecognition
from .argument_parser import check_command, parse_args
from .arguments import MF2FinetuneArguments, MF2ScriptArguments, MF2TrainingArguments
from .collator import MF2DataCollator
from .cross_validation import cross_validate
from .fitting import (
    FitResult,
    cached_collator,
    cached_features,
    fit_and_score,
    make_finetune_model,
    trainable_parameters,
    uses_feature_cache,
)
from .metrics import compute_mf2_metrics
from .pretraining_stages import TASKS
from .recipe_progress import save_npz
from .run_setup import (
    TRAINING_DATA_FILE,
    EarlierRunError,
    apply_mixed_precision,
    check_run_key,
    load_processor,
    load_splits,
    prepare_output_dir,
    resolve_resume_checkpoint,
    run_key,
    setup_torch,
    write_jsonl,
)
from .scoring import NonFinitePredictionsError, merge_parts, predict, score, store_thresholds
from .trainer import MF2Trainer, NonFiniteLossError, make_compute_metrics, prediction_records

logger = logging.getLogger(__name__)


def _fold_sets(full_features, dataset, train_rows, test_rows, collator):
    """A fold's training and test sets, and their collator: rows of the feature cache, or of the dataset."""
    if full_features is not None:
        return Subset(full_features, train_rows.tolist()), Subset(full_features, test_rows.tolist()), cached_collator()
    return dataset.select(train_rows), dataset.select(test_rows), collator


def _pooled_report(results: list[dict[str, Any]], pooled: list[dict[str, Any]], config) -> tuple[dict, dict]:
    """The cross-validation report (per-fold metrics, their mean, pooled metrics) and the pooled predictions."""
    merged = merge_parts(pooled)
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


FOLD_RESULT, FOLD_PREDICTIONS = "fold_result.json", "fold_predictions.npz"


def cv_run_key(key: dict[str, str]) -> str:
    """What a kept fold must have been trained with to be read by `--resume`: the run's `run_key` (model, data,
    settings), as one hash."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _save_fold(folder: Path, run: str, result: dict[str, Any], parts: dict[str, Any], test_rows: np.ndarray) -> None:
    """A finished fold's predictions, then its result: the result file is the fold's done mark for `--resume`."""
    save_npz(folder / FOLD_PREDICTIONS, test_rows=test_rows, **{k: v for k, v in parts.items() if v is not None})
    absent = [k for k, v in parts.items() if v is None]
    write_json(folder / FOLD_RESULT, {"run": run, "result": result, "absent": absent})


def _finished_fold(folder: Path, run: str, test_rows: np.ndarray) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """What `_save_fold` kept of this fold, or None: none kept, or kept by another run (`cv_run_key`: other model,
    data or settings) or for other test rows (other folds)."""
    if not (folder / FOLD_RESULT).is_file():
        return None
    stored = json.loads((folder / FOLD_RESULT).read_text(encoding="utf-8"))
    if stored.get("run") != run:
        logger.warning("%s: kept by a run with other data or settings; training this fold again", folder)
        return None
    with np.load(folder / FOLD_PREDICTIONS) as arrays:
        parts = {name: arrays[name] for name in arrays.files}
    if not np.array_equal(parts.pop("test_rows"), test_rows):
        return None
    return stored["result"], {**parts, **dict.fromkeys(stored["absent"])}


def _fold(base, dataset, full_features, collator, finetune_args, training_args, run: str, resume: bool = False):
    """`cross_validate`'s work for one fold: a fresh adapter (or a fresh copy of the model with `--full`) fine-tuned
    on the training rows and tested on the test rows, AU thresholds tuned on the training rows' predictions. Each
    finished fold is kept in its folder; with `resume`, a fold kept for the same test rows is read, not trained."""
    config = base.config

    def run_fold(fold: int, train_rows: np.ndarray, test_rows: np.ndarray) -> tuple[dict[str, Any], dict[str, Any]]:
        folder = Path(training_args.output_dir) / f"fold-{fold}"
        kept = _finished_fold(folder, run, test_rows) if resume else None
        if kept is not None:
            logger.info("Fold %d: done already (%s)", fold, folder / FOLD_RESULT)
            return kept
        set_seed(training_args.seed + fold)
        model = make_finetune_model(copy.deepcopy(base), finetune_args)
        train_part, test_part, data_collator = _fold_sets(full_features, dataset, train_rows, test_rows, collator)
        fold_args = dataclasses.replace(
            training_args,
            output_dir=str(folder),
            save_strategy="no",
            eval_strategy="no",
        )
        trainer = MF2Trainer(
            model=model,
            args=fold_args,
            train_dataset=train_part,
            data_collator=data_collator,
            compute_metrics=make_compute_metrics(config),
        )
        fit = fit_and_score(trainer, config, test_part, prefix="test", tune_set=train_part)
        groups = sorted(set(np.asarray(dataset.select(test_rows)["group"]).tolist()))
        result = {
            "fold": fold,
            "test_groups": groups,
            "train_rows": len(train_rows),
            "test_rows": len(test_rows),
            "train_seconds": fit.train_seconds,
            "au_thresholds": fit.thresholds,
            **fit.metrics,
        }
        parts = fit.parts
        parts["fold"] = np.full(len(test_rows), fold)
        parts["thresholds"] = np.tile(np.asarray(fit.thresholds or config.au_decision_thresholds), (len(test_rows), 1))
        logger.info(
            "Fold %d: %s", fold, {k: round(v, 4) for k, v in fit.metrics.items() if k.endswith(("au_f1", "accuracy"))}
        )
        if training_args.process_index == 0:
            _save_fold(folder, run, result, parts, test_rows)
        return result, parts

    return run_fold


def cross_validated_finetuning(
    base, dataset, collator, script_args, finetune_args, training_args, is_main_process: bool, key=None
) -> dict[str, Any]:
    """`--cv_folds K`: fine-tuning cross-validated over the dataset's groups (subjects) with `cross_validate`; every
    example is tested exactly once, by the fold that did not train on its subject.

    Returns:
        `{"folds": [...], "mean": {...}, "pooled": {...}}`: per-fold metrics, their mean, and the metrics of all test
        predictions pooled. Written to `cv_results.json`, the pooled predictions to `cv_predictions.jsonl`.
    """
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
    run = cv_run_key(key or run_key(base, dataset, training_args, finetune=finetune_args))  # `key`: `check_run_key`'s
    run_fold = _fold(base, dataset, full_features, collator, finetune_args, training_args, run, script_args.resume)
    folds = cross_validate(dataset["group"], finetune_args.cv_folds, finetune_args.cv_seed, run_fold)
    report, merged = _pooled_report([result for result, _ in folds], [parts for _, parts in folds], base.config)
    if is_main_process:
        output_dir = Path(training_args.output_dir)
        write_json(output_dir / "cv_results.json", report)
        records = prediction_records(merged, base.config)
        for record, fold in zip(records, merged["fold"]):
            record["fold"] = int(fold)
        write_jsonl(output_dir / "cv_predictions.jsonl", records)
    return report


def check_cv_options(script_args, finetune_args) -> None:
    """Refuse evaluation options beside `--cv_folds`, which tests every subject with the fold that did not train on
    it: they would be read and then ignored (and `--validation_fraction` would leave subjects out of every fold)."""
    if not finetune_args.cv_folds:
        return
    options = {
        "--eval_data": bool(script_args.eval_data),
        "--validation_fraction": script_args.validation_fraction > 0,
        "--evaluate_base": finetune_args.evaluate_base,
    }
    given = [name for name, on in options.items() if on]
    if given:
        raise DataError(
            f"--cv_folds tests every subject with the fold that did not train on it; drop {', '.join(given)}, "
            "which apply to a single run"
        )


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
    return train_set, eval_set, cached_collator()


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
        write_config(config, output_dir)  # whole or not at all, beside the trained weights
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
    groups = len(set(train["group"])) if finetune_args.cv_folds else 0
    if finetune_args.cv_folds > groups:  # before the run's key is kept: a refused run leaves nothing behind
        raise DataError(
            f"--cv_folds {finetune_args.cv_folds}: the training data has {groups} groups; give at most that"
        )
    key = check_run_key(base, train, script_args, training_args, finetune=finetune_args)
    if finetune_args.cv_folds:
        main_process = training_args.process_index == 0
        return cross_validated_finetuning(
            base, train, collator, script_args, finetune_args, training_args, main_process, key
        )
    data = (train, evaluation, collator, summary, preprocess_seconds)
    return _finetune(base, processor, data, script_args, finetune_args, training_args)


def _finetune(base, processor, data: tuple, script_args, finetune_args, training_args) -> dict[str, Any]:
    """One fine-tuning run on the pre-processed `data` (train, evaluation, collator, summary, preprocessing time):
    DFN or full model, feature cache, optional evaluation of the base, training, saving and evaluation."""
    train, evaluation, collator, summary, preprocess_seconds = data
    config, output_dir = base.config, Path(training_args.output_dir)
    model = make_finetune_model(base, finetune_args)
    trainable, total = trainable_parameters(model)
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
        check_cv_options(script_args, finetune_args)
        prepare_output_dir("mf2 finetune", script_args, training_args)
        run_finetuning(script_args, finetune_args, training_args)
    except (DataError, EarlierRunError, NonFinitePredictionsError, NonFiniteLossError) as error:
        print(f"mf2 finetune: {error}", file=sys.stderr)
        return 2
    return 0


__all__ = ["cross_validated_finetuning", "main", "run_finetuning"]

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(name)s: %(message)s")
    torch.set_flush_denormal(True)
    raise SystemExit(main())
