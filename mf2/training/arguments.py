"""Command-line / YAML arguments of the MF² training entry points, with the paper's Table VI as defaults.

Three dataclasses, parsed together by `mf2.training.argument_parser.parse_args`:

- `MF2ScriptArguments`: model, data and pre-processing options shared by `pretrain`, `finetune` and `evaluate`.
- `MF2FinetuneArguments`: DFN / full fine-tuning and cross-validation options (`finetune` only).
- `MF2TrainingArguments`: `transformers.TrainingArguments` with MF²'s defaults (Table VI: AdamW, weight decay 0.05,
  learning rate 1e-4, linear warm-up over 2,000 steps, batch 56, 30 epochs; the 224x224 image size is
  `MF2ScriptArguments.image_size`'s default). Every `TrainingArguments` option stays available (`--gradient_accumulation_steps`,
  `--gradient_checkpointing`, `--bf16`, `--save_steps`, ...).

`--config file.yaml` loads any of these fields from a YAML mapping; options given on the command line override it:

```yaml
# pretrain.yaml
vision_encoder: offline
text_encoder: offline
train_data: ["ferplus:/data/ferplus/train.parquet,max_samples=6000", "ckplus:/data/ckplus/dev.parquet"]
image_size: 112
num_train_epochs: 1
output_dir: outputs/pretrain
```

```
python -m mf2.training.pretrain --config pretrain.yaml --learning_rate 5e-5
```
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainingArguments

from ..face_search import DEPRECATED_NO_FACE, NO_FACE_CHOICES
from ..local_files import mf2_home
from .pretraining_stages import PRETRAINING_STAGES, TASKS

LABEL_NAMES: list[str] = ["au_labels", "emotion_labels"]
"""Batch keys holding the labels, in the order `Trainer` hands them to `compute_metrics`."""

PIXEL_FORMATS = ("uint8", "float32")
MIXED_PRECISION_CHOICES = ("auto", "no", "fp16", "bf16")


@dataclass
class MF2ScriptArguments:
    """Model, data and pre-processing options of `mf2 train`, `mf2 finetune` and `mf2 evaluate`."""

    # ---- model
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "An MF² checkpoint (folder or Hub id; `mf2-base` = the shipped model): the model to continue "
            "from, fine-tune or evaluate."
        },
    )
    config_name: str | None = field(
        default=None,
        metadata={"help": "An MF2Config (folder or config.json) to build a randomly initialised model from."},
    )
    vision_encoder: str | None = field(
        default=None,
        metadata={
            "help": "Pretrained vision encoder (folder or Hub id) to build MF² from, with --text_encoder; 'offline' "
            "uses the converted DINOv2-small of `mf2 encoders`."
        },
    )
    text_encoder: str | None = field(
        default=None,
        metadata={"help": "Pretrained BERT-family text encoder; 'offline' uses all-MiniLM-L6-v2 of `mf2 encoders`."},
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={"help": "Tokenizer folder or id; defaults to the checkpoint's processor or the text encoder's."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "JSON object of MF2Config fields to override, e.g. '{\"num_query_tokens\": 16}'."},
    )
    stage: str = field(
        default="both",
        metadata={
            "help": f"Training stage, one of {sorted(PRETRAINING_STAGES)} (see mf2.training.pretraining_stages).",
            "choices": sorted(PRETRAINING_STAGES),
        },
    )
    # ---- data
    train_data: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Training data, each 'SOURCE:PATH[,key=value...]': 'mfa:FOLDER' (a folder of images with a "
            "labels.csv, see docs/finetuning.md), 'mfa:DATASET' (MFA-schema Parquet or save_to_disk), "
            "'ferplus:FILE', 'ckplus:FILE'; keys: split, max_samples (class-stratified subset), seed, "
            "landmark_backend, no_face."
        },
    )
    eval_data: list[str] = field(
        default_factory=list, metadata={"help": "Evaluation data, same format as --train_data."}
    )
    validation_fraction: float = field(
        default=0.0,
        metadata={"help": "Without --eval_data: hold out this fraction of the training groups (subjects, videos)."},
    )
    captioner: str = field(
        default="template",
        metadata={
            "help": "Fill empty caption columns with this captioner ('template': offline FACS templates; 'none': use "
            "the captions as they are).",
            "choices": ["template", "none"],
        },
    )
    max_au_captions_per_image: int | None = field(
        default=None,
        metadata={
            "help": "Pretraining: align at most this many (randomly drawn) AU captions per image and step; default all "
            "12 (the paper). Lower values cut AU-VL's cost roughly in proportion."
        },
    )
    image_size: int | None = field(
        default=None,
        metadata={"help": "Side of the aligned face crop; default: the checkpoint processor's, else 224 (Table VI)."},
    )
    landmark_backend: str = field(
        default="dlib",
        metadata={
            "help": "Landmark back-end for 'mfa' data (ferplus defaults to 'template', ckplus to 'dlib'); a spec's "
            "landmark_backend= overrides it."
        },
    )
    no_face: str = field(
        default="fallback",
        metadata={
            "help": "Rows where no face is found: 'fallback' treats the image as an aligned crop (template "
            "landmarks), 'skip' removes the row ('drop' is its deprecated spelling), 'error' stops.",
            "choices": [*NO_FACE_CHOICES, *DEPRECATED_NO_FACE],
        },
    )
    pixel_format: str = field(
        default="uint8",
        metadata={
            "help": "How the pre-processed crops are cached: 'uint8' (4x smaller, normalised in the collator) or "
            "'float32' (normalised once).",
            "choices": list(PIXEL_FORMATS),
        },
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes of the pre-processing `datasets.map` (default: one)."}
    )
    preprocessing_batch_size: int = field(default=64, metadata={"help": "Images per pre-processing batch."})
    cache_dir: str | None = field(
        default=None,
        metadata={"help": "Where pre-processed datasets and feature caches live (default: $MF2_HOME/cache)."},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep at most this many training rows (after concatenation; for debugging)."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep at most this many evaluation rows."})
    # ---- evaluation and outputs
    tune_thresholds: bool = field(
        default=True,
        metadata={"help": "Tune per-AU decision thresholds on the evaluation data and store them in the saved config."},
    )
    save_predictions: bool = field(
        default=False,
        metadata={"help": "Write every evaluated example's id, AU probabilities and emotion scores as JSON lines."},
    )
    adapter_name_or_path: str | None = field(
        default=None, metadata={"help": "A DFN adapter (folder or Hub id) on top of --model_name_or_path (evaluate)."}
    )
    store_thresholds: bool = field(
        default=False,
        metadata={
            "help": "evaluate: write the tuned AU thresholds into the checkpoint (its config.json, or the adapter "
            "folder's thresholds.json)."
        },
    )
    mixed_precision: str = field(
        default="auto",
        metadata={
            "help": "'auto': bf16 on a GPU that supports it, else fp16 on GPU, none on CPU (unless --bf16/--fp16 or "
            "`accelerate launch --mixed_precision` decide); or 'no', 'fp16', 'bf16'.",
            "choices": list(MIXED_PRECISION_CHOICES),
        },
    )
    resume: bool = field(
        default=False,
        metadata={"help": "Continue from the last complete checkpoint in --output_dir (after a crash or kill)."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start afresh in an --output_dir that holds an earlier run, removing its checkpoints, model and "
            "results first (without it, or --resume, such a folder is refused)."
        },
    )

    def __post_init__(self):
        if self.model_name_or_path is not None:
            from ..integration.default_model import resolve_model

            self.model_name_or_path = resolve_model(self.model_name_or_path)  # the short name → the shipped folder
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"--validation_fraction must be in [0, 1), got {self.validation_fraction}.")
        for name in ("max_train_samples", "max_eval_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1 (or left out for all rows), got {getattr(self, name)}.")
        if self.image_size is not None and self.image_size < 8:
            raise ValueError(f"--image_size must be >= 8, got {self.image_size}.")
        if (self.vision_encoder is None) != (self.text_encoder is None):
            raise ValueError("--vision_encoder and --text_encoder go together.")

    @property
    def resolved_cache_dir(self) -> Path:
        """`--cache_dir`, else `$MF2_HOME/cache` (default `~/.cache/mf2/cache`), beside the encoder cache."""
        if self.cache_dir:
            return Path(self.cache_dir)
        return mf2_home() / "cache"


@dataclass
class MF2FinetuneArguments:
    """Options of `mf2 finetune`: DFN (default) or full fine-tuning, the task, and cross-validation."""

    full: bool = field(
        default=False,
        metadata={"help": "Full fine-tuning (every Q-Former and head weight trains) instead of DFN, for comparison."},
    )
    train_vision_encoder: bool = field(
        default=False, metadata={"help": "With --full: also unfreeze the vision encoder."}
    )
    task: str = field(
        default="both",
        metadata={
            "help": "Targets fine-tuned: 'both', 'emotion' (the paper's AU-to-emotion transition, appendix D) or 'au'.",
            "choices": list(TASKS),
        },
    )
    dfn_num_layers: int = field(default=7, metadata={"help": "DFN cells per side network (Table VI: 7)."})
    dfn_bottleneck_size: int | None = field(
        default=None, metadata={"help": "DFN cell width (default: the DFNConfig default)."}
    )
    dfn_gate_scaling: float = field(default=0.1, metadata={"help": "DFN gate scaling factor (Table VI: 0.1)."})
    feature_cache: bool = field(
        default=True,
        metadata={
            "help": "DFN: compute the frozen backbone's features once (mf2.dfn.DFNFeatureCache) and train the side "
            "networks on them; exact for un-augmented data."
        },
    )
    cv_folds: int = field(
        default=0,
        metadata={
            "help": "K > 1: K-fold cross-validation over the training data's groups (subjects): fine-tune on K-1 "
            "folds, test on the held-out fold, report per-fold and pooled metrics."
        },
    )
    cv_seed: int = field(default=0, metadata={"help": "Seed of the assignment of groups to folds."})
    evaluate_base: bool = field(
        default=False,
        metadata={
            "help": "Also evaluate before fine-tuning (`base_eval_*` metrics): the checkpoint's own recognisers. Cheap "
            "with the DFN feature cache (a fresh adapter leaves the outputs unchanged)."
        },
    )

    def __post_init__(self):
        if self.cv_folds == 1 or self.cv_folds < 0:
            raise ValueError(f"--cv_folds must be 0 (off) or >= 2, got {self.cv_folds}.")
        if self.train_vision_encoder and not self.full:
            raise ValueError("--train_vision_encoder needs --full.")
        if self.dfn_num_layers < 1 or (self.dfn_bottleneck_size is not None and self.dfn_bottleneck_size < 1):
            raise ValueError("--dfn_num_layers and --dfn_bottleneck_size must be >= 1.")
        if not math.isfinite(self.dfn_gate_scaling):
            raise ValueError(f"--dfn_gate_scaling must be a finite number, got {self.dfn_gate_scaling}.")


@dataclass
class MF2TrainingArguments(TrainingArguments):
    """`TrainingArguments` with MF²'s defaults: the paper's Table VI, and what MF²'s multi-loss outputs need."""

    output_dir: str | None = field(
        default=None, metadata={"help": "Where checkpoints, the final model, metrics and predictions are written."}
    )
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak learning rate (Table VI: 1e-4)."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (Table VI: 0.05)."})
    warmup_steps: float = field(default=2000, metadata={"help": "Linear warm-up steps (Table VI: 2,000)."})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "Learning-rate schedule after warm-up."})
    optim: str = field(default="adamw_torch", metadata={"help": "Optimizer (Table VI: AdamW)."})
    per_device_train_batch_size: int = field(default=56, metadata={"help": "Batch per device (Table VI: 56)."})
    per_device_eval_batch_size: int = field(default=56, metadata={"help": "Evaluation batch per device."})
    num_train_epochs: float = field(default=30.0, metadata={"help": "Training epochs (Table VI: 30)."})
    save_steps: float = field(default=500, metadata={"help": "Save a checkpoint every N optimizer steps."})
    save_total_limit: int | None = field(default=3, metadata={"help": "Keep at most this many checkpoints."})
    logging_steps: float = field(default=50, metadata={"help": "Log the loss and each loss part every N steps."})
    # Raw images and captions reach the collator, so `Trainer` must not drop the columns `forward` does not name.
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep False: the MF² collator reads columns that forward() does not take."}
    )
    label_names: list[str] | None = field(
        default_factory=lambda: list(LABEL_NAMES), metadata={"help": "Label keys of a batch."}
    )
    # Some MF² parameters get no gradient in some steps (e.g. AU-VL's text side in a batch without AU captions);
    # without this, DDP stops with "Expected to have finished reduction" (HF_INTEGRATION.md §11).
    ddp_find_unused_parameters: bool | None = field(
        default=True, metadata={"help": "DDP find_unused_parameters (MF² needs True)."}
    )
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Experiment trackers to report to."})

    def __post_init__(self):
        # `TrainingArguments` turns a missing output_dir into "trainer_output"; the mf2 commands require one instead.
        self.output_dir_given = self.output_dir is not None
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"--learning_rate must be a finite number > 0, got {self.learning_rate}.")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}.")
        if self.max_steps <= 0 and not (math.isfinite(self.num_train_epochs) and self.num_train_epochs > 0):
            raise ValueError(f"--num_train_epochs must be > 0 (or --max_steps given), got {self.num_train_epochs}.")
        super().__post_init__()


__all__ = [
    "LABEL_NAMES",
    "MF2FinetuneArguments",
    "MF2ScriptArguments",
    "MF2TrainingArguments",
]
