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

from ..data.schema import DataError
from ..local_files import write_json
from .argument_parser import check_command, parse_args
from .arguments import MF2ScriptArguments, MF2TrainingArguments
from .collator import MF2DataCollator
from .preprocess import prepare_data
from .run_setup import apply_mixed_precision, load_processor, setup_torch, write_jsonl
from .scoring import (
    NonFinitePredictionsError,
    check_threshold_target,
    load_recognition_model,
    predict,
    score,
    store_thresholds,
)
from .trainer import MF2Trainer, make_compute_metrics, prediction_records

logger = logging.getLogger(__name__)


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
    dataset = rows_to_evaluate(dataset, script_args.max_eval_samples)
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
        elif script_args.store_thresholds:
            logger.warning("--store_thresholds: no AU is labelled positive in the evaluation data; nothing stored.")
        for key in sorted(metrics):
            print(f"{key}: {metrics[key]:.4f}" if isinstance(metrics[key], float) else f"{key}: {metrics[key]}")
    return metrics


def rows_to_evaluate(dataset, max_eval_samples: int | None):
    """The first `max_eval_samples` rows (all by default); none left is a `DataError`, not a score of nothing."""
    if max_eval_samples is not None:
        dataset = dataset.select(range(min(max_eval_samples, len(dataset))))
    if not len(dataset):
        raise DataError(
            "no rows left to evaluate (with --no_face skip, every image without a face is left out; "
            "--no_face fallback keeps them)"
        )
    return dataset


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
        if script_args.store_thresholds and not script_args.tune_thresholds:
            raise DataError(
                "--store_thresholds stores the thresholds --tune_thresholds tunes; leave out --tune_thresholds false"
            )
        if script_args.store_thresholds:  # before the evaluation, not after it
            check_threshold_target(script_args.model_name_or_path, script_args.adapter_name_or_path)
        run_evaluation(script_args, training_args)
    except (DataError, NonFinitePredictionsError) as error:
        print(f"mf2 evaluate: {error}", file=sys.stderr)
        return 2
    return 0


__all__ = ["main", "run_evaluation"]

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(name)s: %(message)s")
    raise SystemExit(main())
