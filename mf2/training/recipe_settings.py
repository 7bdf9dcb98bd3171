"""The recipe's settings: every choice `mf2 recipe` makes, the presets that scale them, and `--set` overrides."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass
class RecipeSettings:
    """Every choice of the recipe (the `cpu` preset; `gpu` scales it up). Stored with the outputs."""

    image_size: int = 112
    vision_trainable_layers: int = 6
    qformer_layers: int = 4
    num_query_tokens: int = 16
    num_au_query_tokens: int = 4
    seed: int = 0
    # pretraining
    pretrain_ferplus_samples: int = 1000
    pretrain_epochs: float = 1.0
    pretrain_batch_size: int = 16
    pretrain_learning_rate: float = 1e-4
    max_au_captions: int = 2
    # emotion stage
    emotion_epochs: float = 3.0
    emotion_batch_size: int = 64
    emotion_learning_rate: float = 2e-4
    vision_learning_rate: float = 4e-5
    soft_targets: bool = True  # FER+'s vote distribution instead of the majority label (`emotion_targets`)
    class_weight_power: float = 0.5  # class weights (1 / share) ** power; 0 turns them off
    ema_decay: float = 0.998  # average of the weights (`ema`); 0 turns it off
    # seeded augmented views per training image in the token cache (`view_augmentation`), besides the mirror image
    augmented_views: int = 2
    # AU stage
    au_epochs: float = 8.0
    au_batch_size: int = 32
    au_learning_rate: float = 3e-4
    cv_folds: int = 5
    # emotion-recogniser refit on FER+ train + CK+ dev (frozen Emo-VL features)
    head_steps: int = 400
    head_learning_rate: float = 3e-3
    ckplus_weight: float = 0.5
    head_ferplus_samples: int = 2500
    # smoke runs
    max_ferplus_train: int | None = None
    max_ferplus_valid: int | None = None
    max_ckplus: int | None = None
    cache_batch_size: int = 64


PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {},
    "gpu": {
        "image_size": 224,
        "vision_trainable_layers": 6,
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


def settings_from(preset: str, overrides: list[str]) -> RecipeSettings:
    """`RecipeSettings` of `preset` with `KEY=VALUE` overrides (typed like the field they set)."""
    settings = replace(RecipeSettings(), **PRESETS[preset])
    for item in overrides:
        key, _, value = item.partition("=")
        if key not in RecipeSettings.__dataclass_fields__:
            raise SystemExit(f"mf2 recipe: unknown setting {key!r}; see RecipeSettings.")
        current = getattr(settings, key)
        if isinstance(current, bool):  # bool("false") is True: read the word
            if value.lower() not in ("true", "false", "1", "0"):
                raise SystemExit(f"mf2 recipe: {key} takes true or false, got {value!r}.")
            settings = replace(settings, **{key: value.lower() in ("true", "1")})
            continue
        kind = type(current) if current is not None else int
        settings = replace(settings, **{key: kind(value)})
    return settings


__all__ = ["PRESETS", "RecipeSettings", "settings_from"]
