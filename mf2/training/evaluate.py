"""`mf2 evaluate` / `python -m mf2.training.evaluate`: score an MF² checkpoint (optionally with a DFN adapter) on a dataset.

Writes to `--output_dir`:

- `eval_results.json`: the paper's metrics (`mf2.training.metrics.compute_mf2_metrics`, with the checkpoint's AU
  thresholds), plus with `--tune_thresholds` the per-AU thresholds that maximise F1 on this data and the metrics
  under them (`*_tuned`). Tuned-on-test numbers are optimistic; tune on validation data, then `--store_thresholds`.
- `predictions.jsonl` with `--save_predictions`: one line per example (id, AU probabilities, emotion scores, labels).

Runs under `accelerate launch` (data parallel): `Trainer.predict` shards the data and gathers predictions without the
padding duplicates, so every example is scored exactly once.

```
python -m mf2.training.evaluate --model_name_or_path outputs/pretrain \\
    --eval_data ferplus:/data/ferplus/valid.parquet --output_dir outputs/eval-ferplus --save_predictions
```
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from ..data.schema import DataError
from .arguments import MF2ScriptArguments, MF2TrainingArguments, check_command, parse_args
from .collator import MF2DataCollator
from .metrics import compute_mf2_metrics, tune_au_thresholds
from .preprocess import prepare_data
from .run_setup import apply_mixed_precision, load_processor, setup_torch, write_json, write_jsonl
from .trainer import MF2Trainer, make_compute_metrics, prediction_records, split_predictions

logger = logging.getLogger(__name__)

THRESHOLDS_FILE = "thresholds.json"


def predict(trainer: MF2Trainer, dataset, collator: MF2DataCollator | None = None, prefix: str = "eval"):
    """Predict `dataset` with `trainer` (optionally with another collator), gathered over processes.

    Returns:
        `(parts, metrics)`: `parts` from `split_predictions` (AU probabilities, emotion logits, labels, example ids) and
        the metrics `Trainer` computed (with `prefix`).
    """
    original = trainer.data_collator
    if collator is not None:
        trainer.data_collator = collator
    try:
        output = trainer.predict(dataset, metric_key_prefix=prefix)
    finally:
        trainer.data_collator = original
    return split_predictions(output.predictions, output.label_ids), dict(output.metrics)


def score(
    parts: dict[str, Any], config, tune: bool = False, prefix: str = "eval"
) -> tuple[dict[str, float], list | None]:
    """Metrics of predictions with the config's thresholds, and with `tune` the thresholds tuned on them (AUs without
    a positive label keep the config's).

    Returns:
        `(metrics, thresholds)`; `thresholds` is None without `tune` or when no AU is labelled.
    """
    kwargs = dict(
        au_probs=parts["au_probs"],
        au_labels=parts["au_labels"],
        emotion_predictions=parts["emotion_logits"],
        emotion_labels=parts["emotion_labels"],
        au_names=config.au_names,
        emotion_names=config.emotion_labels,
    )
    metrics = {f"{prefix}_{k}": v for k, v in compute_mf2_metrics(au_thresholds=config.au_thresholds, **kwargs).items()}
    thresholds = None
    labels = parts["au_labels"]
    if tune and labels is not None and parts["au_probs"] is not None and (labels == 1).any():
        thresholds = tune_au_thresholds(parts["au_probs"], labels, default=config.au_decision_thresholds)
        tuned = compute_mf2_metrics(au_thresholds=thresholds, **{**kwargs, "emotion_predictions": None})
        metrics.update({f"{prefix}_{k}_tuned": v for k, v in tuned.items() if k.startswith("au_f1")})
    return metrics, thresholds


def load_recognition_model(model_name_or_path: str, adapter_name_or_path: str | None = None):
    """The image-only recogniser of a checkpoint (text side left out), with a DFN adapter when given
    (`mf2.dfn.load_adapter`: the AU thresholds of the adapter folder's `thresholds.json`, written by `mf2 finetune`,
    replace the checkpoint's)."""
    from ..modeling_mf2 import MF2ForFacialStateRecognition

    model = MF2ForFacialStateRecognition.from_pretrained(model_name_or_path)
    if adapter_name_or_path is None:
        return model
    from ..dfn import load_adapter

    return load_adapter(model, adapter_name_or_path)


def read_thresholds(folder: str | Path) -> list[float] | None:
    """AU thresholds from `<folder>/thresholds.json`, if the folder is local and has one."""
    import json

    path = Path(folder) / THRESHOLDS_FILE
    if not path.is_file():
        return None
    return [float(value) for value in json.loads(path.read_text())["au_thresholds"]]


def store_thresholds(thresholds: list[float], model_dir: str | Path, adapter_dir: str | Path | None = None) -> Path:
    """Store tuned thresholds: in the adapter folder's `thresholds.json` with an adapter, else in the checkpoint's
    `config.json` (`MF2Config.au_thresholds`)."""
    from ..configuration_mf2 import MF2Config

    if adapter_dir is not None:
        target = Path(adapter_dir) / THRESHOLDS_FILE
        write_json(target, {"au_thresholds": list(thresholds)})
        return target
    config = MF2Config.from_pretrained(model_dir)
    config.au_thresholds = list(thresholds)
    config.save_pretrained(model_dir)
    return Path(model_dir) / "config.json"


def run_evaluation(script_args: MF2ScriptArguments, training_args: MF2TrainingArguments) -> dict[str, float]:
    """Evaluate as `main` does and return the metrics (identical on every process)."""
    setup_torch()
    apply_mixed_precision(script_args.mixed_precision, training_args)
    if not script_args.model_name_or_path:
        raise ValueError("mf2 evaluate needs --model_name_or_path.")
    if not script_args.eval_data:
        raise ValueError("mf2 evaluate needs --eval_data.")
    model = load_recognition_model(script_args.model_name_or_path, script_args.adapter_name_or_path)
    config = model.config
    processor = load_processor(script_args, config)
    start = time.perf_counter()
    with training_args.main_process_first(desc="pre-processing"):
        dataset, summary = prepare_data(
            script_args.eval_data,
            processor.image_processor,
            script_args.resolved_cache_dir,
            default_backend=script_args.landmark_backend,
            no_face=script_args.no_face,
            captioner="none",
            pixel_format=script_args.pixel_format,
            batch_size=script_args.preprocessing_batch_size,
            num_proc=script_args.preprocessing_num_workers,
        )
    if script_args.max_eval_samples is not None:
        dataset = dataset.select(range(min(script_args.max_eval_samples, len(dataset))))
    preprocess_seconds = time.perf_counter() - start
    dataset = dataset.with_format("numpy")
    collator = MF2DataCollator(processor, with_captions=False)
    trainer = MF2Trainer(
        model=model,
        args=training_args,
        data_collator=collator,
        compute_metrics=make_compute_metrics(config),
    )
    start = time.perf_counter()
    parts, _ = predict(trainer, dataset)
    metrics, thresholds = score(parts, config, tune=script_args.tune_thresholds)
    metrics.update(
        eval_samples=len(dataset), eval_seconds=time.perf_counter() - start, preprocess_seconds=preprocess_seconds
    )
    if trainer.is_world_process_zero():
        output_dir = Path(training_args.output_dir)
        payload = {**metrics, "data": summary}
        if thresholds is not None:
            payload["tuned_au_thresholds"] = dict(zip(config.au_names, thresholds))
        write_json(output_dir / "eval_results.json", payload)
        if script_args.save_predictions:
            write_jsonl(output_dir / "predictions.jsonl", prediction_records(parts, config))
        if script_args.store_thresholds and thresholds is not None:
            where = store_thresholds(thresholds, script_args.model_name_or_path, script_args.adapter_name_or_path)
            logger.info("Stored tuned AU thresholds in %s.", where)
        for key in sorted(metrics):
            print(f"{key}: {metrics[key]:.4f}" if isinstance(metrics[key], float) else f"{key}: {metrics[key]}")
    return metrics


USAGE = (
    "--model_name_or_path MODEL [--adapter_name_or_path DIR] --eval_data SPEC [SPEC ...] --output_dir DIR [option ...]"
)


def main(argv: list[str] | None = None) -> int:
    """`mf2 evaluate`: see the module docstring; `--help` lists the main options, `--help-all` every option. A bad
    command line or data is one line on stderr, exit status 2."""
    script_args, training_args = parse_args(
        (MF2ScriptArguments, MF2TrainingArguments),
        argv,
        description="Evaluate an MF² checkpoint.",
        prog="mf2 evaluate",
        usage=USAGE,
    )
    try:
        check_command("mf2 evaluate", script_args, training_args, required=("model_name_or_path", "eval_data"))
        run_evaluation(script_args, training_args)
    except DataError as error:
        print(f"mf2 evaluate: {error}", file=sys.stderr)
        return 2
    return 0


__all__ = [
    "THRESHOLDS_FILE",
    "load_recognition_model",
    "main",
    "predict",
    "read_thresholds",
    "run_evaluation",
    "score",
    "store_thresholds",
]

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(name)s: %(message)s")
    raise SystemExit(main())
