"""What the training entry points (`mf2 train`, `mf2 finetune`, `mf2 evaluate`) share around `MF2Trainer`: finding
the checkpoint to resume from, the torch and precision set-up, the encoders and processor of a run, its pre-processed
training and evaluation data, and its JSON outputs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..local_files import write_json, written_aside
from ..processing_mf2 import load_processor as _load_processor
from .arguments import MF2ScriptArguments
from .preprocess import prepare_data, split_validation
from .trainer import TRAINER_STATE_NAME

logger = logging.getLogger(__name__)

TRAINING_DATA_FILE = "training_data.json"


# --------------------------------------------------------------------------------------------------- checkpoints
CHECKPOINT_FOLDER = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
"""A `Trainer` checkpoint's folder name, its step in group 1."""


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest `checkpoint-N` folder that was written to the end, or None.

    `Trainer` writes `trainer_state.json` last; a run killed while saving leaves a folder without it, which must not
    be resumed from (`transformers.trainer_utils.get_last_checkpoint` would pick it).
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    found = []
    for path in folder.iterdir():
        match = CHECKPOINT_FOLDER.match(path.name)
        if match and path.is_dir() and (path / TRAINER_STATE_NAME).is_file():
            found.append((int(match.group(1)), path))
    if not found:
        return None
    return str(max(found)[1])


# What a run of `mf2 train` / `mf2 finetune` leaves in its --output_dir that a later run must not take for its own:
# checkpoints a resume would pick, thresholds an adapter would be loaded with, results a model card would publish.
RUN_KEY_FILE = "run_key.json"
"""What the run in an --output_dir was started with (`run_key`), which a `--resume` must share."""
RUN_FILES = (
    RUN_KEY_FILE,
    *("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "adapter_config.json"),
    *("thresholds.json", "train_results.json", "eval_results.json", "base_eval_results.json", "all_results.json"),
    *("cv_results.json", "cv_predictions.jsonl", "eval_predictions.jsonl", TRAINER_STATE_NAME),
)
FOLD_FOLDER = re.compile(r"^fold-\d+$")  # `mf2 finetune --cv_folds`: one finished fold each


class EarlierRunError(ValueError):
    """A fresh run's --output_dir holds an earlier run's files (`found`, by name)."""

    def __init__(self, prog: str, output_dir: str, found: list[str]):
        self.output_dir, self.found = output_dir, found
        listed = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
        super().__init__(
            f"--output_dir {output_dir} holds an earlier run ({listed}); continue it with --resume, start afresh "
            f"there with --overwrite_output_dir (which removes those files), or give {prog} another --output_dir"
        )


def earlier_run_files(output_dir: str | os.PathLike) -> list[str]:
    """The names of an earlier run's files and folders (`RUN_FILES`, `checkpoint-N`, `fold-N`) in `output_dir`."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    return sorted(
        path.name
        for path in folder.iterdir()
        if path.name in RUN_FILES or CHECKPOINT_FOLDER.match(path.name) or FOLD_FOLDER.match(path.name)
    )


def check_output_apart(script_args: MF2ScriptArguments, output_dir: str | None) -> None:
    """Refuse an `--output_dir` that is the folder of the model the run starts from, or the model shipped in the
    package: the run's model would replace it, and `--overwrite_output_dir` would delete it before it is read.

    Raises:
        mf2.data.DataError: one line naming the folder and the fix.
    """
    from ..data.schema import DataError
    from ..integration.default_model import default_model_path

    if not output_dir:
        return
    output = Path(output_dir).resolve()
    source = script_args.model_name_or_path
    if source and Path(source).is_dir() and Path(source).resolve() == output:
        raise DataError(
            f"--output_dir {output_dir} is the folder of --model_name_or_path: the run would overwrite the model it "
            "starts from; give another --output_dir"
        )
    if output == default_model_path() or default_model_path() in output.parents:
        raise DataError(f"--output_dir {output_dir} is the model shipped in the mf2 package; give another --output_dir")


def prepare_output_dir(prog: str, script_args: MF2ScriptArguments, training_args: Any) -> None:
    """Refuse to start a fresh run over an earlier one (mixed checkpoints, stale thresholds and results), unless
    `--resume` continues it or `--overwrite_output_dir` removes its files first (on the main process).

    Raises:
        EarlierRunError: the folder holds an earlier run, and neither option was given.
        mf2.data.DataError: the folder is the model the run starts from, or the shipped one (`check_output_apart`).
    """
    check_output_apart(script_args, training_args.output_dir)
    if script_args.resume or training_args.resume_from_checkpoint:
        return
    found = earlier_run_files(training_args.output_dir)
    if not found:
        return
    if not script_args.overwrite_output_dir:
        raise EarlierRunError(prog, training_args.output_dir, found)
    if training_args.process_index == 0:
        logger.warning("--overwrite_output_dir: removing the earlier run's %s", ", ".join(found))
        for name in found:
            path = Path(training_args.output_dir) / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()


TRAINING_SETTINGS = ("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size", "seed")
TRAINING_SETTINGS += (
    "gradient_accumulation_steps",
    "weight_decay",
    "warmup_steps",
    "warmup_ratio",
    "lr_scheduler_type",
)
TRAINING_SETTINGS += ("max_grad_norm", "optim", "bf16", "fp16")
"""The `TrainingArguments` that shape what a run learns (not where it writes or how often it logs)."""


def run_key(model: torch.nn.Module, dataset, training_args, **settings: Any) -> dict[str, str]:
    """What a run is made of, one hash per part: `model`, the model it starts from (weights and the config its graph
    reads: `mf2.onnx_export.model_fingerprint`), `data`, its prepared training rows (their `datasets` fingerprint),
    `training`, the `TRAINING_SETTINGS`, and one part per keyword (a dataclass of the command's own options)."""
    from ..onnx_export import model_fingerprint

    def digest(value: Any) -> str:
        value = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]

    return {
        "model": model_fingerprint(model)[:16],
        "data": str(getattr(dataset, "_fingerprint", None)),
        "training": digest({name: getattr(training_args, name, None) for name in TRAINING_SETTINGS}),
        **{name: digest(value) for name, value in settings.items()},
    }


def check_run_key(model: torch.nn.Module, dataset, script_args, training_args, **settings: Any) -> dict[str, str]:
    """Refuse a `--resume` of a run started with another model, data or settings (`run_key` of the arguments): its
    checkpoints, thresholds and results would be mixed with this one's. Then keep the key in the --output_dir (the
    main process), and return it. A folder from before run keys were kept is resumed as it is.

    Raises:
        mf2.data.DataError: one line naming the parts that differ and the fix.
    """
    from ..data.schema import DataError

    output_dir = training_args.output_dir
    key = run_key(model, dataset, training_args, **settings)
    path = Path(output_dir, RUN_KEY_FILE)
    if (script_args.resume or training_args.resume_from_checkpoint) and path.is_file():
        kept = json.loads(path.read_text(encoding="utf-8"))
        differ = sorted(name for name in {*kept, *key} if kept.get(name) != key.get(name))
        if differ:
            raise DataError(
                f"--resume: {output_dir} holds a run started with another {', '.join(differ)}; resume it with the same "
                "model, data and settings, or start afresh with --overwrite_output_dir (or another --output_dir)"
            )
    if training_args.process_index == 0:
        write_json(path, key)
    return key


def resolve_resume_checkpoint(resume: bool, resume_from_checkpoint: str | None, output_dir: str | None) -> str | None:
    """The checkpoint to resume from: an explicit `--resume_from_checkpoint`, else with `--resume` the last complete
    checkpoint of `output_dir` (None, with a log line, when there is none yet: the run then starts fresh)."""
    if resume_from_checkpoint:
        return resume_from_checkpoint
    if not resume:
        return None
    checkpoint = last_complete_checkpoint(output_dir) if output_dir else None
    if checkpoint is None:
        logger.warning("--resume: no complete checkpoint in %s; starting from scratch.", output_dir)
    else:
        logger.info("Resuming from %s.", checkpoint)
    return checkpoint


# --------------------------------------------------------------------------------------------------- misc helpers
def setup_torch() -> None:
    """CPU runs: flush denormals (MF²'s encoders slow down ~10x without it; ENVIRONMENT.md §2.6)."""
    torch.set_flush_denormal(True)


def apply_mixed_precision(mode: str, training_args) -> None:
    """Resolve `--mixed_precision auto|no|fp16|bf16` onto `TrainingArguments.bf16` / `fp16`.

    "auto" leaves explicit `--bf16` / `--fp16` and `accelerate launch --mixed_precision` alone; otherwise it picks bf16
    on a GPU that supports it, fp16 on another GPU, and full precision on CPU.
    """
    if mode == "no" or training_args.bf16 or training_args.fp16:
        return
    if mode == "auto":
        if os.environ.get("ACCELERATE_MIXED_PRECISION") or not torch.cuda.is_available() or training_args.use_cpu:
            return
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    setattr(training_args, mode, True)


def resolve_encoders(vision: str | None, text: str | None) -> tuple[str | None, str | None]:
    """`--vision_encoder` / `--text_encoder`, with "offline" meaning the converted encoders of `mf2 encoders`."""
    if "offline" in (vision, text):
        from ..integration.encoders import fetch_encoders

        vision_path, text_path = fetch_encoders()
        vision = str(vision_path) if vision == "offline" else vision
        text = str(text_path) if text == "offline" else text
    return vision, text


def load_processor(script_args, config, text_encoder: str | None = None):
    """The `MF2Processor` of a run (`mf2.processing_mf2.load_processor`) from its `--model_name_or_path`,
    `--tokenizer_name`, `--landmark_backend` and `--image_size`."""
    return _load_processor(
        config,
        script_args.model_name_or_path,
        tokenizer_name=script_args.tokenizer_name,
        text_encoder=text_encoder,
        landmark_backend=script_args.landmark_backend,
        image_size=script_args.image_size,
    )


def write_jsonl(path: str | os.PathLike, records: list[dict[str, Any]]) -> None:
    """Write one JSON line per record to `path`, creating folders; whole or not at all."""
    with written_aside(path) as partial, partial.open("w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")


# --------------------------------------------------------------------------------------------------- data
def load_splits(script_args: MF2ScriptArguments, training_args, processor):
    """Pre-processed training and evaluation datasets (evaluation may be None) and the data summary."""
    options = dict(
        default_backend=script_args.landmark_backend,
        no_face=script_args.no_face,
        captioner=script_args.captioner,
        pixel_format=script_args.pixel_format,
        batch_size=script_args.preprocessing_batch_size,
        num_proc=script_args.preprocessing_num_workers,
    )
    cache_dir = script_args.resolved_cache_dir
    summary: dict[str, list] = {"train": [], "eval": []}
    # The main process fills the cache; the others then read the same files instead of detecting faces again.
    with training_args.main_process_first(desc="pre-processing"):
        train, summary["train"] = prepare_data(script_args.train_data, processor.image_processor, cache_dir, **options)
        evaluation = None
        if script_args.eval_data:
            evaluation, summary["eval"] = prepare_data(
                script_args.eval_data, processor.image_processor, cache_dir, **options
            )
    if evaluation is None and script_args.validation_fraction > 0:
        train, evaluation = split_validation(train, script_args.validation_fraction, seed=training_args.seed)
    if script_args.max_train_samples is not None:
        train = train.select(range(min(script_args.max_train_samples, len(train))))
    if evaluation is not None and script_args.max_eval_samples is not None:
        evaluation = evaluation.select(range(min(script_args.max_eval_samples, len(evaluation))))
    # numpy rows: crops arrive as arrays, not as nested Python lists.
    train = train.with_format("numpy")
    evaluation = None if evaluation is None else evaluation.with_format("numpy")
    return train, evaluation, summary


__all__ = [
    "RUN_FILES",
    "RUN_KEY_FILE",
    "TRAINING_SETTINGS",
    "check_run_key",
    "run_key",
    "TRAINING_DATA_FILE",
    "EarlierRunError",
    "apply_mixed_precision",
    "earlier_run_files",
    "last_complete_checkpoint",
    "load_processor",
    "load_splits",
    "prepare_output_dir",
    "resolve_encoders",
    "resolve_resume_checkpoint",
    "setup_torch",
    "write_jsonl",
]
