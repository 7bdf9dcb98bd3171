"""Command-line / YAML arguments of the MF² training entry points, with the paper's Table VI as defaults.

Three dataclasses, parsed together by `parse_args`:

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

import argparse
import dataclasses
import os
import shutil
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser, TrainingArguments

from ..cache_home import mf2_home
from ..image_processing_mf2 import DEPRECATED_NO_FACE, NO_FACE_CHOICES
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

    def __post_init__(self):
        if self.model_name_or_path is not None:
            from ..integration.default_model import resolve_model

            self.model_name_or_path = resolve_model(self.model_name_or_path)  # the short name → the shipped folder
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"--validation_fraction must be in [0, 1), got {self.validation_fraction}.")
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
        super().__post_init__()


def _yaml_defaults(path: str | os.PathLike, dataclass_types: tuple[type, ...]) -> dict[str, Any]:
    """The YAML file's mapping, checked against the fields of `dataclass_types`."""
    with open(path, encoding="utf-8") as handle:
        values = yaml.safe_load(handle) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: the YAML file must hold a mapping of option names to values.")
    known = {item.name for kind in dataclass_types for item in dataclasses.fields(kind) if item.init}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown option(s) {unknown}.")
    return values


_DATA_OPTIONS = (
    "image_size",
    "landmark_backend",
    "no_face",
    "pixel_format",
    "preprocessing_num_workers",
    "preprocessing_batch_size",
    "cache_dir",
)
_TRAINER_OPTIONS = (
    "output_dir",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "warmup_steps",
    "weight_decay",
    "save_steps",
    "save_strategy",
    "logging_steps",
    "eval_strategy",
    "seed",
    "use_cpu",
    "bf16",
    "report_to",
)
HELP_OPTIONS: dict[str, tuple[str, ...]] = {
    "mf2 train": (
        "model_name_or_path",
        "config_name",
        "vision_encoder",
        "text_encoder",
        "tokenizer_name",
        "config_overrides",
        "stage",
        "train_data",
        "eval_data",
        "validation_fraction",
        "captioner",
        "max_au_captions_per_image",
        *_DATA_OPTIONS,
        "max_train_samples",
        "max_eval_samples",
        "tune_thresholds",
        "save_predictions",
        "mixed_precision",
        "resume",
        *_TRAINER_OPTIONS,
    ),
    "mf2 finetune": (
        "model_name_or_path",
        "train_data",
        "eval_data",
        "validation_fraction",
        *_DATA_OPTIONS,
        "max_train_samples",
        "max_eval_samples",
        "tune_thresholds",
        "save_predictions",
        "mixed_precision",
        "resume",
        *(item.name for item in dataclasses.fields(MF2FinetuneArguments)),
        *_TRAINER_OPTIONS,
    ),
    "mf2 evaluate": (
        "model_name_or_path",
        "adapter_name_or_path",
        "eval_data",
        *_DATA_OPTIONS,
        "max_eval_samples",
        "tune_thresholds",
        "store_thresholds",
        "save_predictions",
        "mixed_precision",
        "output_dir",
        "per_device_eval_batch_size",
        "dataloader_num_workers",
        "use_cpu",
        "bf16",
        "report_to",
    ),
}
"""The options each command's `--help` lists, one line each (`MF2ArgumentParser`); `--help-all` lists them all, with
every other option these commands accept (the other `TrainingArguments`, options of the other commands)."""


def _summary(action: argparse.Action, width: int) -> str:
    """`--name[=default]  help`, on one line of at most `width` characters (the help cut at a word, with `…`)."""
    name = max(action.option_strings, key=lambda option: (option.startswith("--"), "_" in option, len(option)))
    default = action.default
    if default not in (None, [], "", False, argparse.SUPPRESS) and action.nargs != 0:
        name += f"={' '.join(map(str, default)) if isinstance(default, list) else default}"
    text = " ".join((action.help or "").replace("%%", "%").split())
    line = f"  {name:<34} {text}" if len(name) <= 34 else f"  {name}  {text}"
    if len(line) > width:
        cut = line[: width - 1]
        line = (cut[: cut.rfind(" ")] if cut.rfind(" ") > len(name) + 4 else cut).rstrip(" ,;:(") + "…"
    return line


def _is_negation(action: argparse.Action) -> bool:
    """`HfArgumentParser`'s `--no_X` twin of a boolean option `--X` whose default is True (same dest)."""
    return bool(action.option_strings) and action.option_strings[0].startswith("--no_") and action.nargs == 0


class _HelpAction(argparse.Action):
    """`-h/--help` (the short help: `MF2ArgumentParser.format_short_help`) or `--help-all` (every option in full)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None, full=False):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)
        self.full = full

    def __call__(self, parser, namespace, values, option_string=None):
        parser._print_message(parser.format_help() if self.full else parser.format_short_help(), sys.stdout)
        parser.exit()


_SECTION_TITLES = {
    MF2ScriptArguments: "model, data and outputs",
    MF2FinetuneArguments: "fine-tuning (DFN unless --full)",
}


class MF2ArgumentParser(HfArgumentParser):
    """`HfArgumentParser` for the `mf2` training commands: named after the command (`usage: mf2 finetune ...`), with a
    short `--help` (one line per option of `help_options`, by default `HELP_OPTIONS[prog]`) and every option behind
    `--help-all` (each of transformers' ~100 other `TrainingArguments` too, with its full text and default)."""

    def __init__(self, dataclass_types: tuple[type, ...], *, help_options: Sequence[str] | None = None, **kwargs):
        self._dataclass_order = tuple(dataclass_types)
        super().__init__(dataclass_types, add_help=False, **kwargs)
        self._help_options = tuple(HELP_OPTIONS.get(self.prog, ()) if help_options is None else help_options)
        self.add_argument("-h", "--help", action=_HelpAction, help="show the main options and exit")
        self.add_argument(
            "--help-all",
            action=_HelpAction,
            full=True,
            help="show every option (all TrainingArguments too), in full, and exit",
        )

    def _sections(self) -> list[tuple[str, list[argparse.Action]]]:
        """`(title, actions)` of `--help`: the general options, then one section per dataclass."""
        by_dest: dict[str, argparse.Action] = {}
        for action in self._actions:
            if not _is_negation(action):
                by_dest.setdefault(action.dest, action)
        fields = {kind: [item.name for item in dataclasses.fields(kind) if item.init] for kind in self._dataclass_order}
        every_field = {name for names in fields.values() for name in names}
        sections = [("general", [action for action in self._actions if action.dest not in every_field])]
        for kind, names in fields.items():
            title = _SECTION_TITLES.get(kind) or (kind.__doc__ or kind.__name__).split(":")[0].strip().rstrip(".")
            if issubclass(kind, TrainingArguments):
                title = "training (transformers.TrainingArguments; defaults: the paper's Table VI)"
            shown = [name for name in (self._help_options or names) if name in names and name in by_dest]
            sections.append((title, [by_dest[name] for name in shown]))
        return sections

    def count_hidden(self) -> int:
        """How many options `--help` leaves out (all of them are in `--help-all`)."""
        listed = {id(action) for _, actions in self._sections() for action in actions}
        return sum(1 for action in self._actions if id(action) not in listed and not _is_negation(action))

    def format_usage(self) -> str:
        """The usage line (wrapped to the terminal's width when the command gave its own)."""
        if self.usage is None:
            return super().format_usage()
        width = max(80, min(shutil.get_terminal_size((120, 24)).columns, 160))
        usage = "usage: " + self.usage % {"prog": self.prog}
        return (
            "\n".join(textwrap.wrap(usage, width, subsequent_indent=" " * (len(self.prog) + 8), break_on_hyphens=False))
            + "\n"
        )

    def format_help(self) -> str:
        """`--help-all`: argparse's help of every option, under the wrapped usage line."""
        text = super().format_help()
        return text if self.usage is None else self.format_usage() + text.split("\n", 1)[1]

    def format_short_help(self) -> str:
        """The usage, the description and one line per option of `help_options` (cut to the terminal's width)."""
        width = max(80, min(shutil.get_terminal_size((120, 24)).columns, 160))
        lines = [self.format_usage().rstrip()]
        if self.description:
            lines += ["", *textwrap.wrap(self.description, width)]
        for title, actions in self._sections():
            if actions:
                lines += ["", f"{title}:", *(_summary(action, width) for action in actions)]
        more = (
            f"{self.count_hidden()} more options (the rest of transformers' TrainingArguments, e.g. "
            f"--gradient_checkpointing) and each option's full text: `{self.prog} --help-all`."
        )
        return "\n".join([*lines, "", *textwrap.wrap(more, width)]) + "\n"


def check_command(
    prog: str, script_args: MF2ScriptArguments, training_args: TrainingArguments, *, required: tuple[str, ...] = ()
) -> None:
    """Refuse a command line that lacks `--output_dir` or a `required` option of `MF2ScriptArguments`, and check the
    data specs (`mf2.training.preprocess.check_data_specs`): all before any model is loaded.

    Raises:
        mf2.data.DataError: one line naming the option and the fix (the commands print it and exit with status 2).
    """
    from ..data.schema import DataError
    from .preprocess import check_data_specs

    missing = [f"--{name}" for name in required if not getattr(script_args, name)]
    if not getattr(training_args, "output_dir_given", training_args.output_dir is not None):
        missing.append("--output_dir")
    if missing:
        raise DataError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required (`{prog} --help`).")
    check_data_specs(script_args.train_data, "--train_data")
    check_data_specs(script_args.eval_data, "--eval_data")


def parse_args(
    dataclass_types: tuple[type, ...],
    argv: list[str] | None = None,
    description: str | None = None,
    *,
    prog: str | None = None,
    usage: str | None = None,
    help_options: Sequence[str] | None = None,
):
    """Parse `argv` into instances of `dataclass_types`, with `--config file.yaml` as the defaults under the command line.

    Args:
        prog: the command's name in its usage and help (`"mf2 finetune"`).
        usage: the usage line's arguments (after `prog`), e.g. `"--model_name_or_path MODEL ... [option ...]"`;
            default: argparse's list of every option.
        help_options: the options `--help` lists (default: `HELP_OPTIONS[prog]`, else every MF² option).

    Returns:
        One instance per dataclass type, in order.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(argv)
    parser = MF2ArgumentParser(
        dataclass_types,
        prog=prog,
        description=description,
        help_options=help_options,
        usage=None if usage is None else f"{prog or '%(prog)s'} {usage}",
    )
    parser.add_argument("--config", default=None, help="YAML file of options; the command line overrides it.")
    if known.config:
        parser.set_defaults(**_yaml_defaults(known.config, dataclass_types))
    # The extra `--config` argument comes back as a trailing namespace after the dataclasses; unknown options and the
    # dataclasses' own checks (`__post_init__`) are one line with the usage, exit status 2, as argparse's errors are.
    try:
        *outputs, unknown = parser.parse_args_into_dataclasses(
            args=rest, look_for_args_file=False, return_remaining_strings=True
        )
    except ValueError as error:
        parser.error(str(error))
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return tuple(outputs[: len(dataclass_types)])


__all__ = [
    "LABEL_NAMES",
    "HELP_OPTIONS",
    "MF2ArgumentParser",
    "MF2FinetuneArguments",
    "MF2ScriptArguments",
    "MF2TrainingArguments",
    "check_command",
    "parse_args",
]
