"""Training MF² with `transformers.Trainer` and Accelerate: pretraining, DFN / full fine-tuning, evaluation, Hub upload.

Entry points (each a `main(argv) -> int`, runnable with `python -m` and under `accelerate launch`):

| command        | module                         | what                                                           |
|----------------|--------------------------------|----------------------------------------------------------------|
| `mf2 train`    | `mf2.training.pretrain`        | MF² pretraining (Emo-VL + AU-VL + recognisers; `--stage`)      |
| `mf2 finetune` | `mf2.training.finetune`        | DFN on a frozen MF² (`--full` for full fine-tuning; `--cv_folds`) |
| `mf2 evaluate` | `mf2.training.evaluate`        | metrics (and tuned AU thresholds) of a checkpoint on a dataset |
| `mf2 push`     | `mf2.training.hub`             | model, processor, DFN adapter and model card to the Hub        |

The entry modules are not imported here (so that `python -m mf2.training.pretrain` runs its module once); the
building blocks are.
"""

from pathlib import Path

from .argument_parser import parse_args
from .arguments import LABEL_NAMES, MF2FinetuneArguments, MF2ScriptArguments, MF2TrainingArguments
from .collator import MF2DataCollator
from .data_specs import DataSpec
from .metrics import au_f1_scores, compute_mf2_metrics, emotion_scores, tune_au_thresholds
from .preprocess import add_example_ids, prepare_data, preprocess_dataset
from .pretraining_stages import PRETRAINING_STAGES, TASKS, Stage, get_stage
from .run_setup import last_complete_checkpoint
from .trainer import MF2Trainer, make_compute_metrics

METRIC_MODULE_PATH: Path = Path(__file__).resolve().parent / "mf2_metric"
"""Folder of the `evaluate` metric module: `evaluate.load(str(METRIC_MODULE_PATH), "au" | "emotion" | "default")`."""

__all__ = [
    "LABEL_NAMES",
    "METRIC_MODULE_PATH",
    "PRETRAINING_STAGES",
    "TASKS",
    "DataSpec",
    "MF2DataCollator",
    "MF2FinetuneArguments",
    "MF2ScriptArguments",
    "MF2Trainer",
    "MF2TrainingArguments",
    "Stage",
    "add_example_ids",
    "au_f1_scores",
    "compute_mf2_metrics",
    "emotion_scores",
    "get_stage",
    "last_complete_checkpoint",
    "make_compute_metrics",
    "parse_args",
    "prepare_data",
    "preprocess_dataset",
    "tune_au_thresholds",
]
