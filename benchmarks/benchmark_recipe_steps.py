"""What each step of mf2-base 2.0's training budget is worth: the recipe's emotion stage run with one step off at a
time, on the data and pretrained model of a finished recipe run, and scored on the development data.

Each row trains the emotion stage from the run's pretrained model on the same seeded subset of FER+ train (a reduced
budget: `--samples` images, `--epochs` epochs), with the shipped run's settings but for the step it turns off, and
scores it on FER+ valid (accuracy, macro-F1) and on CK+ dev peak frames (the FER+-only model on another lab's faces:
the dev proxy of faces the model never saw). Differences from the "all on" row come with paired bootstrap 95%
intervals over the dev faces. The flip test-time average is scored on the "all on" model, with the model's own cost.

Two rows change the starting point: "no MF² pretraining" starts from the data stage's base model (the encoders, with
freshly initialised Q-Formers and heads), and "MF² pretraining on 6000 FER+ images" runs the pretrain stage again
with more images (the run's used 1,000) before the same emotion stage.

The rows share one vision-token cache of the subset (in the run's cache folder; the run's views and trainable blocks):
"no augmented views" replays only the original and mirrored tokens, and "4 trainable blocks" freezes the lowest 2 of
the run's 6 trainable ones (the same model as a cache at block 8). Each row's model, metrics and predictions stay in `--output`; a second call resumes.

    python benchmarks/benchmark_recipe_steps.py --run outputs/recipe2 --data ../shared/data --output outputs/steps
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mf2.configuration_mf2 import MF2Config
from mf2.modeling_mf2 import MF2ForFacialStateRecognition
from mf2.training.ablation import link_stages
from mf2.training.ablation_report import paired_interval
from mf2.training.metrics import emotion_scores
from mf2.training.recipe_settings import RecipeSettings
from mf2.training.recipe_stages import Recipe
from mf2.training.vision_cache import VisionTokenDataset


@dataclass(frozen=True)
class Step:
    """One row: the shipped settings with `changes`, and what the row leaves out of the cached run."""

    name: str
    changes: dict[str, Any] = field(default_factory=dict)
    augmented_views: int | None = None  # replay at most this many cached augmented views (None: all)
    frozen_blocks: int = 0  # of the run's trainable vision blocks, the lowest this many stay frozen
    pretraining: dict[str, Any] | None = None  # pretrain again with these settings instead of using the run's model
    pretrained: bool = True  # False: the emotion stage starts from the encoders, with no MF² pretraining


STEPS = (
    Step("all on (2.0)"),
    Step("majority labels (no vote targets, no class weights)", {"soft_targets": False}),
    Step("no class weights", {"class_weight_power": 0.0}),
    Step("no augmented views (mirror only)", augmented_views=0),
    Step("no EMA", {"ema_decay": 0.0}),
    Step("4 trainable vision blocks (1.1)", frozen_blocks=2),
    Step("no MF² pretraining", pretrained=False),
    Step("MF² pretraining on 6000 FER+ images", pretraining={"pretrain_ferplus_samples": 6000}),
)


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")[:40]


class StepRecipe(Recipe):
    """The recipe's emotion stage for one `Step`, on a seeded subset of FER+ train (the stage keeps its dev
    predictions)."""

    def __init__(self, step: Step, samples: int, **kwargs):
        super().__init__(**kwargs)
        self.step, self.samples = step, samples

    def emotion_start_model(self):
        if self.step.pretrained:
            model = super().emotion_start_model()
        else:  # the data stage's base model: the encoders and freshly initialised Q-Formers and heads
            model = MF2ForFacialStateRecognition.from_pretrained(str(self.stage_dir("data") / "base"))
            model.mf2.apply_vision_freezing()
        if self.step.frozen_blocks:
            trainable = model.config.vision_trainable_layers
            for block in model.mf2.vision_blocks[-trainable : -trainable + self.step.frozen_blocks]:
                block.requires_grad_(False)
        return model

    def emotion_training_set(self, model) -> Dataset:
        rows = self.dataset("ferplus_train")
        chosen = np.random.default_rng(self.settings.seed).permutation(len(rows))[: self.samples]
        rows = rows.select(sorted(chosen.tolist()))  # every row keeps its example_id: the vote targets follow it
        cached = self.tokens(model, "ferplus_train", True, rows=rows, views=self.settings.augmented_views)
        return VisionTokenDataset(cached, augmented_views=self.step.augmented_views)


def scores(logits: np.ndarray, labels: np.ndarray, classes: int) -> dict[str, float]:
    result = emotion_scores(logits, labels, classes)
    return {"accuracy": float(result["accuracy"]), "macro_f1": float(result["macro_f1"])}


def dev_sets(predictions: np.lib.npyio.NpzFile, neutral: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    peak = predictions["ckplus_labels"] != neutral  # CK+ labels neutral only on onset frames
    return {
        "ferplus": (predictions["valid_logits"], predictions["valid_labels"]),
        "ckplus": (predictions["ckplus_logits"][peak], predictions["ckplus_labels"][peak]),
    }


def flip_average(recipe: StepRecipe) -> dict[str, Any]:
    """The "all on" model scored with its mirror image averaged in, and what that costs per face."""
    model = MF2ForFacialStateRecognition.from_pretrained(str(recipe.stage_dir("emotion") / "model")).eval()
    rows = recipe.dataset("ferplus_valid")
    cached = recipe.tokens(model, "ferplus_valid", True, rows=rows)  # original + mirror, no augmented views
    parts = recipe.predict(model, cached)
    plain, labels = parts["emotion_logits"], parts["emotion_labels"]
    mirrored = recipe.predict(model, cached, view="flipped_tokens")["emotion_logits"]
    averaged = (torch.tensor(plain).softmax(-1) + torch.tensor(mirrored).softmax(-1)).log().numpy()
    # The average costs a second pass of the whole model (all vision blocks) per face: time one on real AU boxes.
    examples = VisionTokenDataset(cached, augment=False)
    boxes = torch.stack([examples[i]["au_boxes"] for i in range(32)]).float()
    pixels = torch.randn(32, 3, recipe.settings.image_size, recipe.settings.image_size)
    with torch.no_grad():
        model(pixel_values=pixels[:4], au_boxes=boxes[:4])  # warm-up
        start = time.perf_counter()
        for _ in range(3):
            model(pixel_values=pixels, au_boxes=boxes)
        per_face = (time.perf_counter() - start) / (3 * len(pixels))
    return {"plain": (plain, labels), "averaged": (averaged, labels), "model_ms_per_face": 1000 * per_face}


def table(rows: list[dict[str, Any]], flip: dict[str, Any] | None, rounds: int) -> str:
    def accuracy(logits, labels):
        return float((logits.argmax(-1) == labels).mean())

    def macro_f1(logits, labels):
        return float(emotion_scores(logits, labels, logits.shape[1])["macro_f1"])

    base = rows[0]
    lines = [
        "| step | FER+ valid accuracy | FER+ valid macro-F1 | CK+ dev peak (FER+-only model) | minutes |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [row["name"]]
        for key, metric in (("ferplus", accuracy), ("ferplus", macro_f1), ("ckplus", accuracy)):
            value = metric(*row["sets"][key])
            if row is base:
                cells.append(f"{value:.4f}")
                continue
            delta, low, high = paired_interval(metric, [base["sets"][key]], [row["sets"][key]], rounds)
            cells.append(f"{value:.4f} ({delta:+.4f}, 95% CI {low:+.4f} to {high:+.4f})")
        cells.append(f"{row['seconds'] / 60:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    if flip is not None:
        cells = ["all on + flip test-time average"]
        for metric in (accuracy, macro_f1):
            value = metric(*flip["averaged"])
            delta, low, high = paired_interval(metric, [flip["plain"]], [flip["averaged"]], rounds)
            cells.append(f"{value:.4f} ({delta:+.4f}, 95% CI {low:+.4f} to {high:+.4f})")
        cells += ["not scored", f"model {flip['model_ms_per_face']:.1f} ms/face more"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--run", type=Path, required=True, help="a finished `mf2 recipe` output folder (data, pretrain)"
    )
    parser.add_argument("--data", type=Path, required=True, help="the data folder the run was made with, as given")
    parser.add_argument("--output", type=Path, default=Path("outputs/steps"))
    parser.add_argument("--samples", type=int, default=8000, help="FER+ train images each row learns from")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--steps", nargs="*", help="row names (default: all)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap rounds of the intervals")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_flush_denormal(True)
    run_settings = RecipeSettings(**json.loads((args.run / "settings.json").read_text()))
    steps = [step for step in STEPS if not args.steps or step.name in args.steps or slug(step.name) in args.steps]
    rows, flip = [], None
    for step in steps:
        output = args.output / slug(step.name)
        link_stages(args.run, output, ("data",) if step.pretraining else ("data", "pretrain"))
        settings = replace(run_settings, emotion_epochs=args.epochs, **step.changes, **(step.pretraining or {}))
        recipe = StepRecipe(
            step,
            args.samples,
            data_dir=args.data,
            output_dir=output,
            export_dir=output / "export",
            settings=settings,
            device="cpu",
        )
        recipe.cache_dir = args.run / "cache"
        recipe.run(("pretrain", "emotion") if step.pretraining else ("emotion",))
        done = json.loads((recipe.stage_dir("emotion") / "done.json").read_text())
        neutral = MF2Config.from_pretrained(str(recipe.stage_dir("pretrain") / "model")).label2id["neutral"]
        predictions = np.load(recipe.stage_dir("emotion") / "predictions.npz")
        rows.append({"name": step.name, "sets": dev_sets(predictions, neutral), "seconds": done["seconds"]})
        if step is STEPS[0]:
            flip = flip_average(recipe)
    text = table(rows, flip, args.bootstrap)
    header = (
        f"Emotion stage only, {args.samples} FER+ train images x {args.epochs:g} epochs from the run "
        f"`{args.run}`'s pretrained model; settings of that run but for each row's step."
    )
    (args.output / "steps.md").write_text(header + "\n\n" + text + "\n")
    (args.output / "steps.json").write_text(
        json.dumps({"samples": args.samples, "epochs": args.epochs, "run_settings": asdict(run_settings)}, indent=2)
    )
    print(header + "\n\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
