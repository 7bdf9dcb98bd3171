"""The recipe's settings: every choice `mf2 recipe` makes (`RecipeSettings`), the presets that scale them, and the
command's own options (`MF2RecipeArguments`), read by the training commands' one parser
(`mf2.training.argument_parser.parse_args`): `--preset` sets the settings' defaults, `--config FILE.yaml` and then
each `--SETTING VALUE` override them.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Collection
from dataclasses import dataclass, field, fields
from typing import Any

import yaml

from .argument_parser import parse_args, read_yaml_options

RECIPE_STAGES = ("data", "pretrain", "emotion", "au", "emotion_head", "export")


@dataclass
class RecipeSettings:
    """The recipe's settings: every choice it makes (the `cpu` preset's values; `gpu` scales them up), stored with
    its outputs."""

    image_size: int = field(default=112, metadata={"help": "side of the aligned face crop (px)"})
    vision_trainable_layers: int = field(
        default=8, metadata={"help": "top DINOv2 blocks that train (the tokens below them are cached once)"}
    )
    qformer_layers: int = field(default=4, metadata={"help": "layers of each Q-Former (MiniLM-initialised)"})
    num_query_tokens: int = field(default=16, metadata={"help": "Emo-VL's learned queries"})
    num_au_query_tokens: int = field(default=4, metadata={"help": "AU-VL's learned queries per AU"})
    use_emotion_branch: bool = field(
        default=True, metadata={"help": "build Emo-VL (off: the paper's Table IV w/o Emo-VL)"}
    )
    use_au_branch: bool = field(default=True, metadata={"help": "build AU-VL (off: the paper's Table IV w/o AU-VL)"})
    mf2_pretraining: bool = field(
        default=True,
        metadata={"help": "MF² pretraining (ITC, ITM, ITG); off: the recognisers start from the encoders (Table IV)"},
    )
    seed: int = field(default=0, metadata={"help": "seed of every draw (samples, folds, initialisation, augmentation)"})
    pretrain_ferplus_samples: int = field(
        default=1000, metadata={"help": "pretraining: FER+ train images (with all of CK+ dev)"}
    )
    pretrain_epochs: float = field(default=1.0, metadata={"help": "pretraining: epochs"})
    pretrain_batch_size: int = field(default=16, metadata={"help": "pretraining: batch"})
    pretrain_learning_rate: float = field(default=1e-4, metadata={"help": "pretraining: peak learning rate"})
    max_au_captions: int = field(default=2, metadata={"help": "pretraining: AU captions per image"})
    emotion_epochs: float = field(default=4.5, metadata={"help": "emotion stage: epochs over FER+ train"})
    emotion_batch_size: int = field(default=64, metadata={"help": "emotion stage: batch"})
    emotion_learning_rate: float = field(
        default=2e-4, metadata={"help": "emotion stage: peak learning rate of Emo-VL and the recogniser"}
    )
    vision_learning_rate: float = field(
        default=4e-5, metadata={"help": "emotion stage: peak learning rate of the trainable vision blocks"}
    )
    soft_targets: bool = field(
        default=True, metadata={"help": "FER+'s vote distribution as the target instead of the majority label"}
    )
    class_weight_power: float = field(
        default=0.75, metadata={"help": "class weights (1 / share) ** power; 0 turns them off"}
    )
    ema_decay: float = field(
        default=0.998, metadata={"help": "exponential moving average of the weights; 0 turns it off"}
    )
    augmented_views: int = field(
        default=2,
        metadata={"help": "seeded augmented views per training image in the token cache, besides the mirror image"},
    )
    au_epochs: float = field(default=8.0, metadata={"help": "AU stage: epochs over CK+ dev"})
    au_batch_size: int = field(default=32, metadata={"help": "AU stage: batch"})
    au_learning_rate: float = field(default=3e-4, metadata={"help": "AU stage: peak learning rate"})
    cv_folds: int = field(default=5, metadata={"help": "subject-wise cross-validation folds on CK+ dev"})
    head_steps: int = field(default=400, metadata={"help": "emotion recogniser refit: optimisation steps"})
    head_learning_rate: float = field(default=3e-3, metadata={"help": "emotion recogniser refit: learning rate"})
    ckplus_weight: float = field(
        default=0.5, metadata={"help": "emotion recogniser refit: CK+ dev's weight against the FER+ sample"}
    )
    head_ferplus_samples: int = field(default=10000, metadata={"help": "emotion recogniser refit: FER+ train images"})
    head_reads_au_probabilities: bool = field(
        default=False,
        metadata={"help": "emotion recogniser refit: it also reads the AU recogniser's probabilities"},
    )
    max_ferplus_train: int | None = field(
        default=None, metadata={"help": "at most this many FER+ train images (smoke runs)"}
    )
    max_ferplus_valid: int | None = field(
        default=None, metadata={"help": "at most this many FER+ valid images (smoke runs)"}
    )
    max_ckplus: int | None = field(default=None, metadata={"help": "at most this many CK+ dev images (smoke runs)"})
    cache_batch_size: int = field(default=64, metadata={"help": "batch of the vision-token cache's encoder passes"})

    def __post_init__(self):
        """Refuse settings no run could use, before hours of work: a number that is not finite, a count or size out of
        range, a model without a branch."""
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"--{item.name} must be a finite number, got {value}.")
            if item.name in _POSITIVE and not value > 0:
                raise ValueError(f"--{item.name} must be > 0, got {value}.")
            if value is not None and not isinstance(value, bool) and value < _AT_LEAST.get(item.name, value):
                raise ValueError(f"--{item.name} must be >= {_AT_LEAST[item.name]}, got {value}.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"--ema_decay must be in [0, 1) (0 turns it off), got {self.ema_decay}.")
        if not (self.use_emotion_branch or self.use_au_branch):
            raise ValueError("--use_emotion_branch and --use_au_branch are both false: the model needs a branch.")


_POSITIVE = {"pretrain_epochs", "emotion_epochs", "au_epochs"} | {
    f"{part}_learning_rate" for part in ("pretrain", "emotion", "vision", "au", "head")
}
_AT_LEAST = {
    "image_size": 14,  # one DINOv2 patch
    "cv_folds": 2,
    "class_weight_power": 0.0,
    "ckplus_weight": 0.0,
    **dict.fromkeys(
        ("vision_trainable_layers", "seed", "pretrain_ferplus_samples", "augmented_views", "head_ferplus_samples"), 0
    ),
    **dict.fromkeys(
        (
            *("qformer_layers", "num_query_tokens", "num_au_query_tokens", "max_au_captions", "head_steps"),
            *("pretrain_batch_size", "emotion_batch_size", "au_batch_size", "cache_batch_size"),
            *("max_ferplus_train", "max_ferplus_valid", "max_ckplus"),
        ),
        1,
    ),
}


PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {},
    "gpu": {
        "image_size": 224,
        "vision_trainable_layers": 8,
        "qformer_layers": 6,
        "num_query_tokens": 32,
        "num_au_query_tokens": 8,
        "pretrain_ferplus_samples": 25045,
        "pretrain_epochs": 2.0,
        "max_au_captions": 12,
        "emotion_epochs": 8.0,
        "au_epochs": 30.0,
    },
    # A few examples of each set, for CI and tests (minutes on a CPU): the mechanics, not the model.
    "smoke": {
        "max_ferplus_train": 48,
        "max_ferplus_valid": 24,
        "max_ckplus": 32,
        "pretrain_ferplus_samples": 16,
        "pretrain_batch_size": 8,
        "emotion_epochs": 1.0,
        "emotion_batch_size": 16,
        "au_epochs": 1.0,
        "au_batch_size": 16,
        "cv_folds": 2,
        "cache_batch_size": 16,
        "augmented_views": 1,
    },
}


@dataclass
class MF2RecipeArguments:
    """The recipe's command: where its data and outputs are, and what runs."""

    data: str | None = field(
        default=None, metadata={"help": "folder holding ferplus/{train,valid}.parquet and ckplus/dev.parquet"}
    )
    output_dir: str = field(default="outputs/recipe", metadata={"help": "work folder (caches, checkpoints, metrics)"})
    export_dir: str | None = field(
        default=None,
        metadata={"help": "where the finished model goes (default OUTPUT_DIR/<its name>, e.g. OUTPUT_DIR/mf2-base)"},
    )
    device: str = field(default="cpu", metadata={"help": "where it trains", "choices": ["cpu", "cuda"]})
    preset: str = field(
        default="cpu",
        metadata={"help": "the settings' defaults: cpu (the shipped model), gpu, smoke (CI)", "choices": list(PRESETS)},
    )
    stages: list[str] = field(
        default_factory=lambda: list(RECIPE_STAGES),
        metadata={"help": "the stages to run, in order (each resumes or skips when done)", "choices": RECIPE_STAGES},
    )


def chosen_preset(argv: list[str] | None, default: str, choices: Collection[str], prog: str) -> str:
    """The `--preset` of a command line (either spelling), else the `preset:` of its `--config` YAML file, read before
    the full parse because it sets the defaults. One not in `choices` is argparse's one-line error (exit status 2)
    here, since the full parser does not check a value the YAML file gives; an unreadable file is left to the full
    parser's own error."""
    pre = argparse.ArgumentParser(add_help=False, prog=prog)
    pre.add_argument("--preset", default=None)
    pre.add_argument("--config", default=None)
    known = pre.parse_known_args(argv)[0]
    if known.preset is None and known.config is not None:
        try:
            known.preset = read_yaml_options(known.config).get("preset")
        except (OSError, yaml.YAMLError, ValueError):
            pass
    preset = known.preset or default
    if preset not in choices:
        pre.error(f"argument --preset: invalid choice: {preset!r} (choose from {', '.join(choices)})")
    return preset


def recipe_arguments(argv: list[str] | None = None) -> tuple[MF2RecipeArguments, RecipeSettings]:
    """`mf2 recipe`'s command line: its options, and its settings (`--preset`'s, then the YAML file's, then the
    command line's). A bad option is argparse's one-line error, exit status 2."""
    preset = chosen_preset(argv, "cpu", PRESETS, "mf2 recipe")
    return parse_args(
        (MF2RecipeArguments, RecipeSettings),
        argv,
        description="Reproduce the shipped MF² model from the development data, resumable stage by stage. Each "
        "setting is a `RecipeSettings` field; --preset sets their defaults.",
        prog="mf2 recipe",
        usage="--data DIR [--output_dir DIR] [--preset cpu|gpu|smoke] [--SETTING VALUE ...]",
        defaults=PRESETS[preset],
    )


__all__ = ["PRESETS", "RECIPE_STAGES", "MF2RecipeArguments", "RecipeSettings", "chosen_preset", "recipe_arguments"]
