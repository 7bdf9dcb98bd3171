"""`mf2 ablate`: the paper's Table IV on open data. Each row of `mf2.training.ablation_rows.ROWS` is the recipe with
one part removed, run on the same data, seeds and budget, then scored side by side with paired bootstrap intervals.

```
mf2 ablate --data ../shared/data --output_dir outputs/ablation                   # reduced budget, 2 seeds
mf2 ablate --data ../shared/data --output_dir /tmp/ablation --preset smoke       # mechanics only (CI)
```

Every (row, seed) run is a recipe folder `OUTPUT_DIR/<row>/seed-<n>/` and resumes as the recipe does; the rows share
one vision-token cache (`OUTPUT_DIR/cache`), the "DFN" and "linear probe" rows also the "full" row's data (and, for
DFN, its pretrained model). When every run is done the table is written to `OUTPUT_DIR/ablations.md` and, with
`--docs`, to that file with its plot beside it (`.png`), headed by the command and commit that made it.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..local_files import write_json, written_aside
from .ablation_report import INTRO, plot, report
from .ablation_rows import RECIPE_ROW_STAGES, ROWS, AblationRow, DFNRecipe
from .argument_parser import parse_args
from .collator import MF2DataCollator
from .recipe_settings import PRESETS, RecipeSettings, chosen_preset
from .recipe_stages import RUN_ERRORS, Recipe, development_data_problem

logger = logging.getLogger("mf2.ablate")

MADE_BY = "made_by.json"

ABLATION_PRESETS = {
    # Table IV in under two hours of the 2-core CPU (2 seeds): a FER+ train sample, a short pretraining, 3 CK+ folds.
    "reduced": {
        "max_ferplus_train": 2000,
        "pretrain_ferplus_samples": 300,
        "augmented_views": 1,
        "emotion_epochs": 2.0,
        "au_epochs": 2.0,
        "cv_folds": 3,
        "head_ferplus_samples": 500,
    },
    "cpu": {},  # the shipped model's budget per row (about two hours per run)
    "smoke": {
        **PRESETS["smoke"],
        "max_ferplus_train": 32,
        "max_ferplus_valid": 16,
        "max_ckplus": 24,
        "pretrain_ferplus_samples": 8,
        "head_steps": 20,
        "head_ferplus_samples": 16,
    },
}


@dataclass
class MF2AblationArguments:
    """`mf2 ablate`'s own options."""

    data: str | None = field(
        default=None, metadata={"help": "folder holding ferplus/{train,valid}.parquet and ckplus/dev.parquet"}
    )
    output_dir: str = field(default="outputs/ablation", metadata={"help": "the runs, their caches and the table"})
    preset: str = field(
        default="reduced",
        metadata={
            "help": "the settings' budget: reduced (under 2 h), cpu (the shipped one), smoke (CI)",
            "choices": list(ABLATION_PRESETS),
        },
    )
    seeds: list[int] = field(default_factory=lambda: [0, 1], metadata={"help": "the seeds every row runs with"})
    rows: list[str] = field(
        default_factory=lambda: [row.slug for row in ROWS],
        metadata={"help": "the rows to run ('full' always runs)", "choices": [row.slug for row in ROWS]},
    )
    docs: str | None = field(default=None, metadata={"help": "also write the table here (e.g. docs/ablations.md)"})
    bootstrap: int = field(default=1000, metadata={"help": "bootstrap rounds of each interval"})
    device: str = field(default="cpu", metadata={"help": "where it trains", "choices": ["cpu", "cuda"]})


def ablation_arguments(argv: list[str] | None = None) -> tuple[MF2AblationArguments, RecipeSettings]:
    preset = chosen_preset(argv, "reduced", ABLATION_PRESETS, "mf2 ablate")
    return parse_args(
        (MF2AblationArguments, RecipeSettings),
        argv,
        description="The paper's Table IV on the development data: the recipe with one part removed per row.",
        prog="mf2 ablate",
        usage="--data DIR [--output_dir DIR] [--preset reduced|cpu|smoke] [--seeds 0 1] [--SETTING VALUE ...]",
        defaults=ABLATION_PRESETS[preset],
    )


def link_stages(source: Path, target: Path, stages: tuple[str, ...]) -> None:
    """`target` shares `source`'s finished `stages` (symbolic links)."""
    target.mkdir(parents=True, exist_ok=True)
    for stage in stages:
        link = target / stage
        if not link.exists():
            link.symlink_to((source / stage).resolve(), target_is_directory=True)


def run_row(row: AblationRow, seed: int, args: MF2AblationArguments, settings: RecipeSettings) -> Recipe:
    """One (row, seed) run, resumed where it stopped; the "full" run of the seed must be done before DFN's or the
    probe's."""
    from .ablation_probe import ProbeRecipe

    output = Path(args.output_dir)
    folder = output / row.slug / f"seed-{seed}"
    full = output / "full" / f"seed-{seed}"
    kind = {"recipe": Recipe, "dfn": DFNRecipe, "probe": ProbeRecipe}[row.kind]
    settings = replace(settings, seed=seed, **row.changes)
    recipe = kind(Path(args.data), folder, folder / "export", settings, args.device)
    recipe.cache_dir = output / "cache"  # one vision-token cache for every row
    if row.kind == "recipe":
        recipe.run(RECIPE_ROW_STAGES)
    elif row.kind == "dfn":
        link_stages(full, folder, ("data", "pretrain"))
        recipe.run(("data", "pretrain", "emotion"))
    else:
        link_stages(full, folder, ("data",))
        recipe.run(("data", "emotion_head"))  # the probe's stage after the shared data stage
    if not (folder / "inference.json").is_file():
        recipe._write("inference.json", {"inference_ms_per_face": inference_ms_per_face(recipe, row)})
    return recipe


def inference_ms_per_face(recipe: Recipe, row: AblationRow, faces: int = 32, repeats: int = 3) -> float:
    """Milliseconds per face of the row's recogniser on a batch of CK+ faces (pixels in, AUs and emotions out)."""
    from ..modeling_mf2 import MF2ForFacialStateRecognition

    rows = recipe.dataset("ckplus")
    batch = MF2DataCollator(recipe.processor, with_captions=False)([rows[i] for i in range(min(faces, len(rows)))])
    inputs = {"pixel_values": batch["pixel_values"], "au_boxes": batch["au_boxes"]}
    if row.kind == "recipe":
        model = MF2ForFacialStateRecognition.from_pretrained(str(recipe.stage_dir("emotion_head") / "model"))
    elif row.kind == "dfn":
        from ..dfn import DFNModel

        base = MF2ForFacialStateRecognition.from_pretrained(str(recipe.stage_dir("pretrain") / "model"))
        model = DFNModel.from_pretrained(base, str(recipe.stage_dir("emotion") / "adapter"))
    else:  # the probe: the encoder and two linear layers (their cost is nothing beside it)
        base = MF2ForFacialStateRecognition.from_pretrained(str(recipe.stage_dir("data") / "base"))
        model, inputs = base.mf2.vision_model, {"pixel_values": batch["pixel_values"]}
    model.eval()
    with torch.no_grad():
        model(**inputs)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            model(**inputs)
    return 1000 * (time.perf_counter() - start) / (repeats * len(batch["pixel_values"]))


def commit_of_checkout() -> str:
    try:
        found = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        return found.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def record_first_call(args: MF2AblationArguments, argv: list[str]) -> None:
    """`made_by.json` in the output folder: the command and commit that started its runs (later calls resume them)."""
    path = Path(args.output_dir) / MADE_BY
    if not path.is_file():
        write_json(path, {"command": f"mf2 ablate {' '.join(argv)}", "commit": commit_of_checkout()})


def write_table(args: MF2AblationArguments, settings: RecipeSettings, seconds: float) -> str:
    text, rows = report(Path(args.output_dir), args.bootstrap)
    path = Path(args.output_dir) / MADE_BY
    made_by = json.loads(path.read_text())
    if "minutes" not in made_by:  # the call that first finished every run
        made_by["minutes"] = round(seconds / 60)
        write_json(path, made_by)
    head = (
        f"Runs made by `{made_by['command']}` at commit {made_by['commit']} ({made_by['minutes']} min on the 2-core "
        f"CPU); table written at commit {commit_of_checkout()} (preset {args.preset}, seeds {args.seeds}). "
        f"Settings: `{json.dumps(asdict(settings))}`.\n\n"
    )
    with written_aside(Path(args.output_dir) / "ablations.md") as partial:  # whole or not at all, as every report
        partial.write_text(head + text + "\n")
    if args.docs:
        docs = Path(args.docs)
        with written_aside(docs) as partial:
            partial.write_text(INTRO + head + text + "\n")
        plot(rows, docs.with_suffix(".png"), args.bootstrap)
    return head + text


def main(argv: list[str] | None = None) -> int:
    """`mf2 ablate`: see the module docstring and `--help`. Missing data, a run folder in use or started with other
    settings (another preset), or predictions that are not finite is one line on stderr, exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args, settings = ablation_arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    problem = development_data_problem(args.data)
    if problem:
        print(f"mf2 ablate: {problem}.", file=sys.stderr)
        return 2
    if args.device == "cpu":
        torch.set_flush_denormal(True)
    record_first_call(args, argv)
    start = time.perf_counter()
    chosen = [row for row in ROWS if row.slug in args.rows or row.slug == "full"]
    try:
        for seed in args.seeds:
            for row in chosen:
                logger.info("row %s, seed %d", row.name, seed)
                run_row(row, seed, args, settings)
    except RUN_ERRORS as error:
        print(f"mf2 ablate: {error}.", file=sys.stderr)
        return 2
    print(write_table(args, settings, time.perf_counter() - start))
    return 0


__all__ = ["ABLATION_PRESETS", "MF2AblationArguments", "ablation_arguments", "main", "run_row"]


if __name__ == "__main__":
    sys.exit(main())
