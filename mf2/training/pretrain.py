"""`mf2 train` / `python -m mf2.training.pretrain`: MF² pretraining (Emo-VL + AU-VL + both recognisers) with `Trainer`.

```
python -m mf2.training.pretrain --vision_encoder offline --text_encoder offline \\
    --train_data ferplus:/data/ferplus/train.parquet ckplus:/data/ckplus/dev.parquet \\
    --eval_data ferplus:/data/ferplus/valid.parquet --output_dir outputs/pretrain
accelerate launch --multi_gpu --num_processes 2 -m mf2.training.pretrain --config pretrain.yaml   # data parallel
python -m mf2.training.pretrain --config pretrain.yaml --resume                                 # after a kill
```

Steps: build or load the model (`--stage` picks the branches and targets, see `mf2.training.pretraining_stages`), load and caption
the data, pre-process every image once (cached, `mf2.training.preprocess`), train with `MF2Trainer` (Table VI defaults,
checkpoints every `--save_steps`), save the model and processor, then evaluate on `--eval_data` and store the per-AU
thresholds tuned there in the saved config. `training_data.json` records the data for the model card.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from transformers import set_seed

from ..configuration_mf2 import MF2Config
from ..data.schema import DataError
from ..local_files import write_config, write_json
from ..modeling_mf2 import MF2ForPreTraining
from .argument_parser import check_command, parse_args
from .arguments import MF2ScriptArguments, MF2TrainingArguments
from .collator import MF2DataCollator
from .pretraining_stages import Stage, get_stage
from .run_setup import (
    TRAINING_DATA_FILE,
    EarlierRunError,
    apply_mixed_precision,
    check_run_key,
    load_processor,
    load_splits,
    prepare_output_dir,
    resolve_encoders,
    resolve_resume_checkpoint,
    setup_torch,
    write_jsonl,
)
from .scoring import NonFinitePredictionsError, predict, score
from .trainer import MF2Trainer, NonFiniteLossError, make_compute_metrics, prediction_records

logger = logging.getLogger(__name__)


def build_pretraining_model(script_args: MF2ScriptArguments, stage: Stage, vision: str | None, text: str | None):
    """`MF2ForPreTraining` from a checkpoint, from pretrained encoders, or randomly initialised from a config."""
    overrides = json.loads(script_args.config_overrides or "{}")
    if script_args.model_name_or_path:
        model = MF2ForPreTraining.from_pretrained(script_args.model_name_or_path, **overrides)
        stage.check_config(model.config)
        return model
    overrides.update(stage.config_overrides())
    if vision and text:
        return MF2ForPreTraining.from_encoders(vision, text, **overrides)
    if script_args.config_name:
        return MF2ForPreTraining(MF2Config.from_pretrained(script_args.config_name, **overrides))
    raise ValueError("Give --model_name_or_path, --vision_encoder/--text_encoder, or --config_name.")


def finish_evaluation(trainer: MF2Trainer, evaluation, processor, script_args, output_dir: str) -> dict[str, float]:
    """Final evaluation: metrics with the model's thresholds, tuned thresholds stored in the saved config (on the
    main process), predictions written on request. Captions are not needed to predict, so they are not tokenised."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    config = model.config
    start = time.perf_counter()
    collator = MF2DataCollator(processor, with_captions=False)
    parts, trainer_metrics = predict(trainer, evaluation, collator=collator)
    metrics, thresholds = score(parts, config, tune=script_args.tune_thresholds)
    # The recognition losses of the evaluation (no captions here, so no alignment terms).
    metrics.update({key: value for key, value in trainer_metrics.items() if key.endswith("loss")})
    metrics["eval_samples"] = len(evaluation)
    metrics["eval_seconds"] = time.perf_counter() - start
    if thresholds is not None:
        config.au_thresholds = thresholds
        metrics["eval_au_thresholds"] = thresholds
    if trainer.is_world_process_zero():
        if thresholds is not None:
            write_config(config, output_dir)  # whole or not at all, beside the trained weights
        if script_args.save_predictions:
            write_jsonl(Path(output_dir) / "eval_predictions.jsonl", prediction_records(parts, config))
    trainer.log_metrics("eval", {k: v for k, v in metrics.items() if not isinstance(v, list)})
    trainer.save_metrics("eval", metrics)
    return metrics


def run_pretraining(script_args: MF2ScriptArguments, training_args: MF2TrainingArguments) -> dict[str, float]:
    """Pretrain as `main` does; returns the train (and eval) metrics."""
    setup_torch()
    apply_mixed_precision(script_args.mixed_precision, training_args)
    if not script_args.train_data:
        raise ValueError("mf2 train needs --train_data.")
    stage = get_stage(script_args.stage)
    set_seed(training_args.seed)
    vision, text = resolve_encoders(script_args.vision_encoder, script_args.text_encoder)
    model = build_pretraining_model(script_args, stage, vision, text)
    processor = load_processor(script_args, model.config, text_encoder=text)

    start = time.perf_counter()
    train, evaluation, summary = load_splits(script_args, training_args, processor)
    preprocess_seconds = time.perf_counter() - start
    rows = f"{len(train)} training rows, {len(evaluation) if evaluation is not None else 0} evaluation rows"
    logger.info("Stage %s (%s): %s.", stage.name, stage.description, rows)
    captions = script_args.max_au_captions_per_image
    check_run_key(model, train, script_args, training_args, stage=stage.name, captions=captions)
    collator = MF2DataCollator(
        processor,
        emotion_targets=stage.emotion_targets,
        au_targets=stage.au_targets,
        max_au_captions=script_args.max_au_captions_per_image,
    )
    trainer = MF2Trainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=collator,
        processing_class=processor,
        compute_metrics=make_compute_metrics(model.config),
    )
    checkpoint = resolve_resume_checkpoint(
        script_args.resume, training_args.resume_from_checkpoint, training_args.output_dir
    )
    result = trainer.train(resume_from_checkpoint=checkpoint)
    metrics = dict(result.metrics)
    metrics.update(
        train_samples=len(train), preprocess_seconds=preprocess_seconds, global_step=trainer.state.global_step
    )
    trainer.model.config.trained = True  # travels with the checkpoint: results then say "model_trained": true
    trainer.save_model()
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    if trainer.is_world_process_zero():
        write_json(
            Path(training_args.output_dir) / TRAINING_DATA_FILE,
            {"stage": stage.name, "stage_description": stage.description, **summary},
        )
    if evaluation is not None:
        metrics.update(finish_evaluation(trainer, evaluation, processor, script_args, training_args.output_dir))
    return metrics


USAGE = (
    "--train_data SPEC [SPEC ...] --output_dir DIR (--model_name_or_path MODEL | --vision_encoder ENC --text_encoder "
    "ENC | --config_name CONFIG) [option ...]"
)


def main(argv: list[str] | None = None) -> int:
    """`mf2 train`: see the module docstring; `--help` lists the main options, `--help-all` every option. A bad command
    line or data is one line on stderr, exit status 2."""
    script_args, training_args = parse_args(
        (MF2ScriptArguments, MF2TrainingArguments),
        argv,
        description="MF² pretraining.",
        prog="mf2 train",
        usage=USAGE,
    )
    try:
        check_command("mf2 train", script_args, training_args, required=("train_data",))
        prepare_output_dir("mf2 train", script_args, training_args)
        run_pretraining(script_args, training_args)
    except (DataError, EarlierRunError, NonFinitePredictionsError, NonFiniteLossError) as error:
        print(f"mf2 train: {error}", file=sys.stderr)
        return 2
    return 0


__all__ = ["TRAINING_DATA_FILE", "build_pretraining_model", "load_splits", "main", "run_pretraining"]

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(name)s: %(message)s")
    raise SystemExit(main())
