"""Training stages of the MF² paper: which branches a model has and which targets a stage trains on.

| stage         | branches          | targets (labels and captions) | paper                                   |
|---------------|-------------------|-------------------------------|-----------------------------------------|
| `both`        | Emo-VL + AU-VL    | emotion + AU                  | MF² pretraining (§III, Tables II-III)   |
| `no_au_vl`    | Emo-VL            | emotion + AU                  | Table IV "w/o AU-VL"                    |
| `no_emo_vl`   | AU-VL             | emotion + AU                  | Table IV "w/o Emo-VL"                   |
| `au_pretrain` | Emo-VL + AU-VL    | AU only                       | appendix D, Table V: AU pretraining ... |

... followed, for the transition experiment, by `mf2 finetune --task emotion` (emotion targets only) on the
`au_pretrain` checkpoint. In the one-branch ablations both recognisers stay: they read the remaining branch's
features (`MF2RecognitionHeads`). Targets a stage does not train on are turned into "unknown" (-1) labels and missing
captions by the collator, so every batch keeps the same keys.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    """One training stage.

    Attributes:
        name: the `--stage` value.
        use_emotion_branch, use_au_branch: `MF2Config` flags of the model the stage trains.
        emotion_targets: emotion labels and emotion captions are used.
        au_targets: AU labels and AU captions are used.
        description: one line for logs and model cards.
    """

    name: str
    use_emotion_branch: bool
    use_au_branch: bool
    emotion_targets: bool
    au_targets: bool
    description: str

    def config_overrides(self) -> dict[str, bool]:
        """The `MF2Config` fields this stage fixes."""
        return {"use_emotion_branch": self.use_emotion_branch, "use_au_branch": self.use_au_branch}

    def check_config(self, config) -> None:
        """Raise if an existing model's branches do not match the stage (a branch cannot be removed after the fact)."""
        for name, wanted in self.config_overrides().items():
            if bool(getattr(config, name)) != wanted:
                raise ValueError(
                    f"Stage {self.name!r} needs {name}={wanted}, but the checkpoint has {name}={getattr(config, name)}; "
                    "start this stage from encoders (--vision_encoder/--text_encoder) or a matching checkpoint."
                )


PRETRAINING_STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage("both", True, True, True, True, "MF² pretraining: Emo-VL + AU-VL, emotion and AU recognisers"),
        Stage("no_au_vl", True, False, True, True, "ablation without AU-VL (Table IV)"),
        Stage("no_emo_vl", False, True, True, True, "ablation without Emo-VL (Table IV)"),
        Stage("au_pretrain", True, True, False, True, "AU-VL pretraining for the AU-to-emotion transition (Table V)"),
    )
}
"""Every pretraining stage by name."""

TASKS: dict[str, tuple[bool, bool]] = {"both": (True, True), "emotion": (True, False), "au": (False, True)}
"""Fine-tuning tasks: name -> (emotion targets, AU targets)."""


def get_stage(name: str) -> Stage:
    """The stage called `name`."""
    try:
        return PRETRAINING_STAGES[name]
    except KeyError:
        raise ValueError(f"Unknown stage {name!r}; choose from {sorted(PRETRAINING_STAGES)}.") from None


__all__ = ["PRETRAINING_STAGES", "TASKS", "Stage", "get_stage"]
