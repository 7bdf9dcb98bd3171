"""`mf2 recipe` / `python -m mf2.training.recipe`: one command that reproduces the shipped MF² model.

```
python -m mf2.training.recipe --data ../shared/data --output_dir outputs/recipe           # 2-core CPU
python -m mf2.training.recipe --data ../shared/data --output_dir outputs/recipe --device cuda --preset gpu
```

Stages (each resumes after an interruption: a finished stage leaves `done.json`, a `Trainer` stage resumes from its
last checkpoint, the token caches are keyed and atomic):

1. `data`: FER+ train / valid and CK+ dev through the image processor (cached Arrow files), the MF² base model from the
   offline encoders (DINOv2-S, MiniLM-initialised Q-Formers), and the frozen vision tokens of every image and its
   mirror image (`mf2.training.vision_cache.VisionTokenCache`, below the top `vision_trainable_layers` blocks).
2. `pretrain`: MF² pretraining on cached tokens: Emo-VL (ITC, ITM, ITG on emotion captions) and AU-VL (on per-AU
   captions) with template captions, plus the recognisers; the vision encoder frozen, as in BLIP-2.
3. `emotion`: recognition fine-tuning of the image side on FER+ train: the top vision blocks, Emo-VL and the emotion
   recogniser (cached tokens below them, random flips).
4. `au`: the AU side on CK+ dev with the image side of stage 3 frozen: AU-VL and the AU recogniser. First a
   subject-wise K-fold cross-validation (thresholds tuned on the training folds; the figures in the model card), then
   the shipped fit on every CK+ dev subject, with per-AU thresholds tuned on the cross-validation's held-out
   predictions (validation data only). Each of these AU models also writes the emotion recogniser's inputs (Emo-VL
   and mean AU-VL features) of CK+ and a FER+ train sample.
5. `emotion_head`: the emotion recogniser (a LayerNorm and a linear layer on Emo-VL + the mean AU-VL feature,
   `emotion_reads_au_features=True`, and with `--head_reads_au_probabilities` the AU recogniser's probabilities)
   refit on the FER+ sample and CK+ dev together: CK+'s posed emotions are FACS prototypes, which AU-VL reads. A
   subject-wise cross-validation over the same folds (each fold with its own AU
   model, so no test subject's AU labels reach its features) first, then the shipped fit.
6. `export`: the recogniser (no text side) in half precision with its processor, config (`trained`, name, version,
   training data, thresholds), `metrics.json` and the model card, into `--export_dir`.

Honest limits: the pretraining stage sees every CK+ dev image with its AU captions, so the cross-validation of
stage 4 runs on a representation that has seen the test folds' captions (not their AU head); see the model card.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch

from .recipe_card import exported_name
from .recipe_settings import PRESETS, RECIPE_STAGES, RecipeSettings, recipe_arguments
from .recipe_stages import RUN_ERRORS, Recipe, development_data_problem

logger = logging.getLogger("mf2.recipe")


def stage_order_problem(recipe: Recipe, stages: tuple[str, ...]) -> str | None:
    """What is wrong with running `stages` in `recipe`'s folder, or None: a stage not done yet whose earlier stages
    (`RECIPE_STAGES` order) are neither done nor asked for before it would start from files that are not there."""
    ready = {stage for stage in RECIPE_STAGES if recipe.is_done(stage)}
    for stage in stages:
        missing = [earlier for earlier in RECIPE_STAGES[: RECIPE_STAGES.index(stage)] if earlier not in ready]
        if missing and stage not in ready:
            return (
                f"--stages {stage} starts from the stages before it, not done in {recipe.output_dir} "
                f"({', '.join(missing)}); add them to --stages, or leave --stages out"
            )
        ready.add(stage)
    return None


def main(argv: list[str] | None = None) -> int:
    """`mf2 recipe`: see the module docstring and `--help`. Missing data, a missing CUDA device, an output folder in
    use or started with other settings, or predictions that are not finite (a diverged training) is one line on stderr,
    exit status 2."""
    args, settings = recipe_arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    problem = development_data_problem(args.data)
    if problem:
        print(f"mf2 recipe: {problem}.", file=sys.stderr)
        return 2
    data = Path(args.data)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("mf2 recipe: --device cuda, but no CUDA device is visible; use --device cpu.", file=sys.stderr)
        return 2
    if args.device == "cpu":
        torch.set_flush_denormal(True)
    output = Path(args.output_dir)
    export = Path(args.export_dir) if args.export_dir else output / exported_name(settings)
    recipe = Recipe(data, output, export, settings, args.device)
    problem = stage_order_problem(recipe, tuple(args.stages))
    if problem:
        print(f"mf2 recipe: {problem}.", file=sys.stderr)
        return 2
    try:
        recipe.run(tuple(args.stages))
    except RUN_ERRORS as error:
        print(f"mf2 recipe: {error}.", file=sys.stderr)
        return 2
    return 0


__all__ = ["stage_order_problem", "PRESETS", "RECIPE_STAGES", "Recipe", "RecipeSettings", "main"]


if __name__ == "__main__":
    sys.exit(main())
