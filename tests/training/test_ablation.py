"""`mf2 ablate`: the paired bootstrap and the table on synthetic runs, and the rows that are not the recipe's (DFN, the
linear probe) on the recipe's smoke run. The whole command with its smoke preset runs in `.ci/run`."""

import json
from pathlib import Path

import numpy as np
import pytest

from mf2.training.ablation import MF2AblationArguments, ablation_arguments, link_stages, run_row
from mf2.training.ablation_report import accuracy, paired_interval, plot, report, verdict_of
from mf2.training.ablation_rows import RECIPE_ROW_STAGES, ROWS
from mf2.training.metrics import EMOTION_LABELS
from mf2.training.recipe_progress import save_npz

NEUTRAL = EMOTION_LABELS.index("neutral")


def test_paired_interval_is_zero_for_the_same_runs_and_positive_for_a_better_one():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 8, 400)
    worse = rng.normal(size=(400, 8))
    better = worse.copy()
    better[np.arange(200), labels[:200]] += 100  # right on half the faces whatever it said before
    same = paired_interval(accuracy, [(worse, labels)], [(worse, labels)], rounds=200)
    assert same == (0.0, 0.0, 0.0)
    delta, low, high = paired_interval(accuracy, [(worse, labels)] * 2, [(better, labels)] * 2, rounds=200)
    assert 0 < low < delta < high and delta == pytest.approx(accuracy(better, labels) - accuracy(worse, labels))


def test_verdict_says_what_the_interval_shows():
    assert verdict_of(0.01, 0.03) == "yes"
    assert verdict_of(-0.03, -0.01).startswith("no")
    assert verdict_of(-0.01, 0.02).startswith("not shown")


def write_run(folder: Path, valid_right: float, seed: int) -> None:
    """A finished run's files as the recipe writes them, right on `valid_right` of 300 FER+ valid faces (the same
    faces and labels in every run; the predictions vary with `seed`)."""
    faces = np.random.default_rng(100)
    labels, ckplus_labels = faces.integers(0, 8, 300), faces.integers(0, 7, 60)
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(300, 8))
    right = rng.random(300) < valid_right
    logits[right, labels[right]] += 100
    save_npz(
        folder / "emotion" / "predictions.npz",
        valid_logits=logits,
        valid_labels=labels,
        ckplus_logits=rng.normal(size=(60, 8)),
        ckplus_labels=ckplus_labels,
    )
    facts = {"train_seconds_per_epoch": 60.0, "trainable_parameters": 1_000_000}
    (folder / "emotion" / "metrics.json").write_text(json.dumps(facts))
    for fold, rows in enumerate(np.array_split(faces.permutation(60), 2)):
        save_npz(
            folder / "au" / f"fold-{fold}" / "predictions.npz",
            test_rows=rows,
            au_probs=rng.random((len(rows), 12)),
            au_labels=rng.integers(0, 2, (len(rows), 12)),
            thresholds=np.full(12, 0.5),
        )
    peak = np.flatnonzero(ckplus_labels != NEUTRAL)
    save_npz(
        folder / "emotion_head" / "cv_predictions.npz",
        rows=peak,
        logits=rng.normal(size=(len(peak), 8)),
        labels=ckplus_labels[peak],
    )


def test_the_table_scores_every_finished_row_against_full(tmp_path):
    for seed in (0, 1):
        write_run(tmp_path / "full" / f"seed-{seed}", 0.5, seed)
        write_run(tmp_path / "without-au-vl" / f"seed-{seed}", 0.2, seed)  # the same faces, right far less often
    text, rows = report(tmp_path, rounds=200)
    names = {row.slug: row.name for row in ROWS}
    assert set(rows) == {names["full"], names["without-au-vl"]}
    row = next(line for line in text.splitlines() if line.startswith(f"| {names['without-au-vl']} (2 seeds)"))
    assert "Δ -" in row and "not run" not in row  # every column scored, below "full"
    claims = text[text.index("The paper's claims") :]
    assert "| AU-VL helps (removing it costs) | −2.53 |" in claims and claims.count("| yes |") == 1
    assert "| DFN beats fine-tuning of what it keeps frozen | +0.92 | not run |" in claims
    plot(rows, tmp_path / "ablations.png", rounds=50)
    assert (tmp_path / "ablations.png").stat().st_size > 1000


def test_presets_set_the_recipe_settings_and_the_command_line_overrides_them():
    args, settings = ablation_arguments(["--data", "d", "--preset", "smoke", "--emotion_epochs", "3"])
    assert args.preset == "smoke" and settings.max_ckplus == 24 and settings.emotion_epochs == 3.0
    args, settings = ablation_arguments(["--data", "d", "--preset=smoke"])
    assert args.preset == "smoke" and settings.max_ckplus == 24
    args, settings = ablation_arguments(["--data", "d", "--seeds", "3", "4"])
    assert args.seeds == [3, 4] and settings.max_ferplus_train == 2000 and settings.cv_folds == 3


@pytest.mark.slow
def test_dfn_and_probe_rows_run_beside_a_recipe_run(smoke_run, tmp_path, data_dir):
    """The rows that are not the recipe's, over the smoke run as their "full" row: each writes the recipe's files,
    and the table reads them."""
    output, recipe = smoke_run
    link_stages(output, tmp_path / "full" / "seed-0", RECIPE_ROW_STAGES)
    (tmp_path / "cache").symlink_to(output / "cache", target_is_directory=True)
    args = MF2AblationArguments(data=str(data_dir), output_dir=str(tmp_path), seeds=[0], preset="smoke")
    for row in ROWS:
        if row.kind != "recipe":
            run_row(row, 0, args, recipe.settings)
    dfn = json.loads((tmp_path / "dfn" / "seed-0" / "emotion" / "metrics.json").read_text())
    full = json.loads((output / "emotion" / "metrics.json").read_text())
    assert dfn["trainable_parameters"] < full["trainable_parameters"] / 5
    assert dfn["ferplus_valid_rows"] == full["ferplus_valid_rows"]  # the same faces, so the differences pair
    assert json.loads((tmp_path / "dfn" / "seed-0" / "inference.json").read_text())["inference_ms_per_face"] > 0
    text, rows = report(tmp_path, rounds=50)
    assert len(rows) == 3
    probe = next(line for line in text.splitlines() if line.startswith("| linear probe"))
    assert "not run" not in probe  # its own CK+ folds: AU F1 and peak-frame emotion
    dfn_line = next(line for line in text.splitlines() if line.startswith("| DFN (frozen"))
    assert dfn_line.count("not run") == 2  # DFN replaces the emotion stage only
    assert "| DFN trains faster per epoch | 4.9× |" in text
