"""`mf2 ablate`'s table: each row's figures read from its runs' prediction files, the difference from "full" with a
paired bootstrap interval, the paper's claims beside ours, as Markdown and a plot.

A row's figure is the mean over its seeds. Its difference from "full" is resampled over faces: each bootstrap round
draws the same faces for every run of both rows (the seeds' runs predict the same faces), so the interval holds the
uncertainty of the dev sets; the seeds' spread is printed beside it. CK+ figures pool the held-out predictions of the
subject folds (each fold's AU thresholds tuned on its training subjects) and score them once.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .ablation_rows import PAPER_DFN_SPEEDUP, ROWS, AblationRow
from .metrics import AU_NAMES, EMOTION_LABELS, compute_mf2_metrics, emotion_scores

NEUTRAL = EMOTION_LABELS.index("neutral")

INTRO = """# The paper's Table IV on open data (`mf2 ablate`)

The paper's ablation (Table IV, emotion accuracy on its MFA data) claims: removing DFN costs 0.92 points and makes an
epoch 4.9x slower (373.4M instead of 52.9M trainable parameters); removing AU-VL costs 2.53 points; removing Emo-VL
costs 1.98 points. `mf2 ablate` runs the recipe (`mf2 recipe`) with one part removed per row, on the development data
(FER+ train / valid, CK+ dev), the same seeds and budget, and compares each row with "full" on the same faces.

Rows. **full**: MF² pretraining (ITC, ITM, ITG on both branches), then the emotion stage fine-tunes the top vision
blocks, Emo-VL and the recogniser (as the shipped model is made: the paper's "w/o DFN"), the AU stage and the emotion
recogniser's refit. **DFN**: the same pretrained model frozen whole, DFN's side cells and head copies trained in its
place (the paper's full model; its emotion stage only). **w/o AU-VL**, **w/o Emo-VL**: the model built, pretrained and
trained without that branch (the recognisers read the branch that is left). **w/o MF² pretraining**: the stages after
pretraining start from the encoders with fresh Q-Formers. **linear probe**: linear recognisers on the frozen DINOv2
encoder's class and mean patch tokens, no MF² at all (the floor).

Columns. FER+ valid accuracy and macro-F1 and the transfer figure (CK+ dev peak frames) are those of the emotion
stage's model, trained on FER+ alone; "CK+ CV" figures pool the held-out predictions of the subject-wise folds (AU F1
with each fold's thresholds tuned on its training subjects; peak-frame emotion after the recogniser's refit). Each
figure is the mean over seeds, with the seeds' range; "Δ" is the difference from "full" in points with a paired
bootstrap 95% interval over the faces (every round draws the same faces for every run of both rows). Training time
per epoch is the emotion stage's (DFN: on its cached backbone features; the probe: one full-batch step); inference is
the recogniser on a batch of 32 CK+ faces, pixels in.

"""


@dataclass
class RunPredictions:
    """What one (row, seed) run predicted of the dev faces."""

    valid: tuple[np.ndarray, np.ndarray]  # FER+ valid: emotion logits, labels
    transfer: tuple[np.ndarray, np.ndarray]  # CK+ dev peak frames, FER+-only model
    au: tuple[np.ndarray, np.ndarray] | None  # CK+ CV: active AUs by the fold thresholds, labels (row order)
    ckplus_emotion: tuple[np.ndarray, np.ndarray] | None  # CK+ CV peak frames: logits, labels (row order)
    facts: dict


def load_run(folder: Path) -> RunPredictions:
    emotion = np.load(folder / "emotion" / "predictions.npz")
    peak = emotion["ckplus_labels"] != NEUTRAL  # CK+ says neutral only on onset frames
    facts = json.loads((folder / "emotion" / "metrics.json").read_text())
    if (folder / "inference.json").is_file():
        facts.update(json.loads((folder / "inference.json").read_text()))
    au = ckplus_emotion = None
    folds = sorted((folder / "au").glob("fold-*/predictions.npz"))
    if folds:
        parts = [np.load(path) for path in folds]
        order = np.argsort(np.concatenate([part["test_rows"] for part in parts]))
        active = np.concatenate([part["au_probs"] >= part["thresholds"] for part in parts])[order]
        au = active.astype(float), np.concatenate([part["au_labels"] for part in parts])[order]
    if (folder / "emotion_head" / "cv_predictions.npz").is_file():
        cv = np.load(folder / "emotion_head" / "cv_predictions.npz")
        order = np.argsort(cv["rows"])
        ckplus_emotion = cv["logits"][order], cv["labels"][order]
    transfer = emotion["ckplus_logits"][peak], emotion["ckplus_labels"][peak]
    return RunPredictions((emotion["valid_logits"], emotion["valid_labels"]), transfer, au, ckplus_emotion, facts)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(-1) == labels).mean())


def macro_f1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(emotion_scores(logits, labels, logits.shape[1])["macro_f1"])


def au_f1(active: np.ndarray, labels: np.ndarray) -> float:
    return float(compute_mf2_metrics(au_probs=active, au_labels=labels, au_thresholds=0.5, au_names=AU_NAMES)["au_f1"])


# column -> (the RunPredictions field it scores, its metric)
COLUMNS: dict[str, tuple[str, Callable[[np.ndarray, np.ndarray], float]]] = {
    "FER+ valid accuracy": ("valid", accuracy),
    "FER+ valid macro-F1": ("valid", macro_f1),
    "CK+ peak, FER+-only model (transfer)": ("transfer", accuracy),
    "CK+ CV AU F1": ("au", au_f1),
    "CK+ CV peak emotion": ("ckplus_emotion", accuracy),
}


def paired_interval(metric, a: list[tuple], b: list[tuple], rounds: int, seed: int = 0) -> tuple[float, float, float]:
    """`mean metric(b) - mean metric(a)` over the runs of each (the same faces, in the same order), with a paired
    bootstrap 95% interval: every round resamples the faces once, for all runs of both."""
    rng = np.random.default_rng(seed)

    def difference(index=None) -> float:
        def mean(runs):
            return float(np.mean([metric(*(x if index is None else x[index] for x in run)) for run in runs]))

        return mean(b) - mean(a)

    count = len(a[0][1])
    if any(len(run[1]) != count for run in (*a, *b)):
        raise ValueError(f"paired_interval: the runs predicted different faces ({[len(r[1]) for r in (*a, *b)]}).")
    draws = [difference(rng.integers(0, count, count)) for _ in range(rounds)]
    low, high = np.percentile(draws, [2.5, 97.5])
    return difference(), float(low), float(high)


def row_cells(runs: list[RunPredictions], full: list[RunPredictions] | None, rounds: int) -> list[str]:
    cells = []
    for field_name, metric in COLUMNS.values():
        sets = [getattr(run, field_name) for run in runs]
        if any(part is None for part in sets):
            cells.append("not run")
            continue
        values = [metric(*part) for part in sets]
        cell = f"{np.mean(values):.3f}" + (f" (seeds {min(values):.3f}–{max(values):.3f})" if len(values) > 1 else "")
        if full is not None:
            delta, low, high = paired_interval(metric, [getattr(run, field_name) for run in full], sets, rounds)
            cell += f"<br>Δ {100 * delta:+.2f} pt [{100 * low:+.2f}, {100 * high:+.2f}]"
        cells.append(cell)
    facts = [run.facts for run in runs]
    cells.append(f"{np.mean([f['train_seconds_per_epoch'] for f in facts]) / 60:.2f}")
    cells.append(f"{np.mean([f.get('inference_ms_per_face', float('nan')) for f in facts]):.1f}")
    cells.append(f"{facts[0]['trainable_parameters'] / 1e6:.2f} M")
    return cells


def per_class_table(rows: dict[str, list[RunPredictions]]) -> list[str]:
    names = list(EMOTION_LABELS)
    lines = ["| row | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for name, runs in rows.items():
        with warnings.catch_warnings():  # a class no face of the set has: NaN, printed as such
            warnings.simplefilter("ignore", RuntimeWarning)
            scores = [emotion_scores(*run.valid, len(names))["per_class_accuracy"] for run in runs]
            per_class = np.nanmean(scores, axis=0)
        lines.append(f"| {name} | " + " | ".join(f"{value:.2f}" for value in per_class) + " |")
    return lines


def claims(rows: dict[str, list[RunPredictions]], by_slug: dict[str, AblationRow], rounds: int) -> list[str]:
    """The paper's four claims, and whether MF² pretraining helps, each against our measured effect."""
    full = rows.get(by_slug["full"].name)
    lines = [
        "| claim | paper (Table IV, MFA) | ours: FER+ valid accuracy, Δ [95% CI] | Δ per seed | holds on open data? |",
        "|---|---|---|---|---|",
    ]
    tests = [
        ("DFN beats fine-tuning of what it keeps frozen", "dfn", "+0.92", 1),
        ("AU-VL helps (removing it costs)", "without-au-vl", "−2.53", -1),
        ("Emo-VL helps (removing it costs)", "without-emo-vl", "−1.98", -1),
        ("MF² pretraining helps (removing it costs)", "without-pretraining", "not in Table IV", -1),
    ]
    for claim, slug, paper, sign in tests:
        runs = rows.get(by_slug[slug].name)
        if full is None or runs is None:
            lines.append(f"| {claim} | {paper} | not run | — | — |")
            continue
        delta, low, high = paired_interval(accuracy, [r.valid for r in full], [r.valid for r in runs], rounds)
        verdict = verdict_of(*sorted((sign * low, sign * high)))  # signed: > 0 where the claim holds
        # The interval holds the faces' uncertainty only; the seeds' own differences show the training's.
        per_seed = [accuracy(*run.valid) - accuracy(*base.valid) for run, base in zip(runs, full)]
        if verdict == "yes" and any(sign * value <= 0 for value in per_seed):
            verdict = "not shown (the seeds disagree)"
        seeds = ", ".join(f"{100 * value:+.2f}" for value in per_seed)
        interval = f"{100 * delta:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]"
        lines.append(f"| {claim} | {paper} | {interval} | {seeds} | {verdict} |")
    if full is not None and by_slug["dfn"].name in rows:
        full_epoch = np.mean([run.facts["train_seconds_per_epoch"] for run in full])
        dfn_epoch = np.mean([run.facts["train_seconds_per_epoch"] for run in rows[by_slug["dfn"].name]])
        speed = full_epoch / dfn_epoch
        verdict = "yes" if speed >= PAPER_DFN_SPEEDUP else ("partly (faster, less so)" if speed > 1 else "no")
        lines.append(
            f"| DFN trains faster per epoch | {PAPER_DFN_SPEEDUP}× | {speed:.1f}× ({full_epoch:.1f} s against "
            f"{dfn_epoch:.2f} s per epoch; DFN on its cached backbone features) | — | {verdict} |"
        )
    return lines


def verdict_of(low: float, high: float) -> str:
    """Whether an effect signed so that "the claim holds" is positive is above zero, below it or undecided."""
    if low > 0:
        return "yes"
    if high < 0:
        return "no: the opposite"
    return "not shown (the interval holds 0)"


def report(output: Path, rounds: int) -> tuple[str, dict[str, list[RunPredictions]]]:
    """The Markdown tables of every row with finished runs under `output` (`<slug>/seed-<n>/`)."""
    rows: dict[str, list[RunPredictions]] = {}
    for row in ROWS:
        runs = [
            load_run(folder)
            for folder in sorted((output / row.slug).glob("seed-*"))
            if (folder / "emotion" / "metrics.json").is_file()
        ]
        if runs:
            rows[row.name] = runs
    by_slug = {row.slug: row for row in ROWS}
    full = rows.get(by_slug["full"].name)
    header = ["row", *COLUMNS, "train min / epoch", "inference ms / face", "trainable"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name, runs in rows.items():
        reference = None if runs is full else full
        lines.append(f"| {name} ({len(runs)} seeds) | " + " | ".join(row_cells(runs, reference, rounds)) + " |")
    text = (
        "\n".join(lines) + "\n\nFER+ valid accuracy per class (mean over seeds):\n\n" + "\n".join(per_class_table(rows))
    )
    text += "\n\nThe paper's claims against ours:\n\n" + "\n".join(claims(rows, by_slug, rounds))
    return text, rows


def plot(rows: dict[str, list[RunPredictions]], path: Path, rounds: int) -> None:
    """A bar per row: its FER+ valid accuracy difference from "full" with the 95% interval, the paper's beside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full_name = ROWS[0].name
    names = [name for name in rows if name != full_name]
    deltas = [
        paired_interval(accuracy, [r.valid for r in rows[full_name]], [r.valid for r in rows[n]], rounds) for n in names
    ]
    paper = {row.name: row.paper for row in ROWS}
    figure, axis = plt.subplots(figsize=(8, 0.6 * len(names) + 1.5))
    positions = np.arange(len(names))
    values = np.array([100 * d[0] for d in deltas])
    errors = np.array([[100 * (d[0] - d[1]) for d in deltas], [100 * (d[2] - d[0]) for d in deltas]])
    axis.barh(positions, values, xerr=errors, color="tab:blue", label="ours (FER+ valid, 95% CI)")
    marked = [(i, paper[n]) for i, n in enumerate(names) if paper[n] is not None]
    if marked:
        axis.scatter([p for _, p in marked], [i for i, _ in marked], color="tab:red", zorder=3, label="paper (MFA)")
    axis.axvline(0, color="black", linewidth=0.8)
    axis.set_yticks(positions, names)
    axis.set_xlabel('emotion accuracy, points against "full"')
    axis.legend(loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


__all__ = ["COLUMNS", "INTRO", "RunPredictions", "load_run", "paired_interval", "plot", "report"]
