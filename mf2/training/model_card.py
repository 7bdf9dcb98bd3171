"""The model card of an MF² checkpoint (`mf2 push`, and the recipe's shipped model): its YAML front matter (training
data with their licences from `training_data.json`, a `model-index` from `eval_results.json` / `cv_results.json` and
any extra metrics file, `license: other`) and its text.

The code is Apache-2.0, but weights trained on FER+ / CK+ inherit those data's research-only terms, which the card
states per dataset.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..dfn.loading import ADAPTER_SUBFOLDER

if TYPE_CHECKING:
    from huggingface_hub import EvalResult, ModelCardData

ADAPTER_TAGS = ("peft", "dfn")  # the card's extra tags when the repository holds a DFN adapter
RESULT_FILES = ("eval_results.json", "cv_results.json", "all_results.json")

DATA_LICENCES: dict[str, dict[str, str]] = {
    "ferplus": {
        "name": "FER+ (FER2013 images with FER+ labels)",
        "license": "FER+ labels: MIT (Microsoft); FER2013 images: rights unresolved (web-scraped)",
        "citation": "Barsoum et al., ICMI 2016; Goodfellow et al., ICONIP 2013",
    },
    "ckplus": {
        "name": "Extended Cohn-Kanade (CK+)",
        "license": "non-commercial research only, no redistribution",
        "citation": "Lucey et al., CVPR Workshops 2010",
    },
    "affwild2": {
        "name": "Aff-Wild2",
        "license": "academic research only (EULA)",
        "citation": "Kollias & Zafeiriou, BMVC 2019",
    },
}
"""Licences of the datasets `mf2.data` can read, for the model card."""

UNKNOWN_LICENCE = {"license": "unknown: check the data's terms before using this model"}

_HEADLINE = (
    ("emotion_accuracy", "Emotion accuracy"),
    ("emotion_mean_class_accuracy", "Emotion mean per-class accuracy"),
    ("emotion_macro_f1", "Emotion macro-F1"),
    ("au_f1", "AU F1 (mean over AUs, thresholds 0.5 / config)"),
    ("au_f1_tuned", "AU F1 (thresholds tuned on this data)"),
    ("au_f1_train_tuned", "AU F1 (thresholds tuned on the training folds)"),
)


# --------------------------------------------------------------------------------------------------- model card
def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def collect_results(folders: Sequence[Path], extra_files: Sequence[Path] = ()) -> list[tuple[str, dict[str, float]]]:
    """`(label, flat metrics)` from the result files of the given folders (and extra JSON files). A label names the
    evaluation data (`ferplus:valid.parquet`, `ckplus:dev.parquet, 5-fold CV, mean of folds`), prefixed with the
    folder's name when several folders are read."""
    results = []
    for folder in folders:
        prefix = f"{folder.name}: " if len(folders) > 1 else ""
        for name in RESULT_FILES:
            data = _read_json(folder / name)
            if data is None:
                continue
            if name == "cv_results.json":
                cv = f"{data['dataset']}, " if data.get("dataset") else ""
                results.append((f"{prefix}{cv}{data.get('num_folds')}-fold CV, pooled", data.get("pooled", {})))
                results.append((f"{prefix}{cv}{data.get('num_folds')}-fold CV, mean of folds", data.get("mean", {})))
            elif name == "all_results.json" and (folder / "eval_results.json").is_file():
                continue
            else:
                names = [part.get("name") for part in (_read_json(folder / "training_data.json") or {}).get("eval", [])]
                results.append((f"{prefix}{', '.join(filter(None, names)) or name.removesuffix('.json')}", data))
    for path in extra_files:
        data = _read_json(Path(path))
        if data is None:
            raise FileNotFoundError(f"No metrics file {path}.")
        results.append((Path(path).stem, data.get("pooled", data) if isinstance(data, dict) else {}))
    return results


def _strip_prefix(key: str) -> str:
    for prefix in ("eval_", "test_", "pooled_"):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def _flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a metrics dict, keyed without their `eval_` / `test_` / `pooled_` prefix."""
    return {_strip_prefix(key): value for key, value in metrics.items() if isinstance(value, (int, float))}


def metrics_table(results: list[tuple[str, dict[str, Any]]]) -> str:
    """Markdown tables: headline metrics per result, then F1 per AU where available."""
    lines = ["| Evaluation | Metric | Value |", "|---|---|---|"]
    per_au: list[tuple[str, dict[str, float]]] = []
    for label, metrics in results:
        flat = _flat_metrics(metrics)
        for key, title in _HEADLINE:
            if key in flat:
                count = flat.get("emotion_count" if key.startswith("emotion") else "au_count")
                suffix = f" (n={int(count)})" if count else ""
                lines.append(f"| {label} | {title}{suffix} | {100 * flat[key]:.2f}% |")
        aus = {
            key[len("au_f1_") :]: value
            for key, value in flat.items()
            if key.startswith("au_f1_AU") and not key.endswith("tuned")
        }
        if aus:
            per_au.append((label, aus))
    if len(lines) == 2:
        lines.append("| - | no evaluation results found | - |")
    text = "\n".join(lines)
    for label, aus in per_au:
        names = sorted(aus, key=_au_order)
        text += f"\n\nF1 per AU, {label}:\n\n| " + " | ".join(names) + " |\n|" + "---|" * len(names) + "\n| "
        text += " | ".join(f"{100 * aus[name]:.1f}" for name in names) + " |"
    return text


def _au_order(name: str) -> tuple[int, str]:
    """AUs by number (AU1, AU2, ..., AU26), not alphabetically (AU1, AU10, ...)."""
    digits = name.removeprefix("AU")
    return (int(digits), name) if digits.isdigit() else (10**6, name)


def training_data_entries(folders: Sequence[Path]) -> list[dict[str, Any]]:
    """Training data of the run(s), with licences: from the folders' `training_data.json`."""
    entries, seen = [], set()
    for folder in folders:
        data = _read_json(folder / "training_data.json") or {}
        for part in data.get("train", []):
            key = (part.get("name"), folder.name)
            if key in seen:
                continue
            seen.add(key)
            info = DATA_LICENCES.get(part.get("source"), UNKNOWN_LICENCE)
            entries.append(
                {
                    "name": info.get("name", part.get("name")),
                    "file": part.get("name"),
                    "rows": part.get("rows"),
                    "used_for": data.get("stage", folder.name),
                    "license": info["license"],
                    **({"citation": info["citation"]} if "citation" in info else {}),
                }
            )
    return entries


_INDEXED = (
    ("emotion_accuracy", "accuracy", "Emotion accuracy"),
    ("au_f1", "f1", "Mean AU F1"),
    ("au_f1_train_tuned", "f1", "Mean AU F1 (thresholds tuned on the training folds)"),
)
"""The metrics a card's model-index lists: result key, metric type, metric name."""


def _dataset_of(label: str) -> tuple[str, str]:
    """`(name, type)` of the data a result label names: `ckplus:dev.parquet, 5-fold CV, mean of folds` is
    `("Extended Cohn-Kanade (CK+): dev.parquet, 5-fold CV, mean of folds", "ckplus")`."""
    source, separator, rest = label.rpartition(": ")[2].partition(":")
    info = DATA_LICENCES.get(source)
    if not separator or info is None:
        return label, "custom"
    return f"{info['name']}: {rest}", source


def _eval_results(results: list[tuple[str, dict[str, Any]]]) -> list[EvalResult]:
    """The headline metrics (emotion accuracy, AU F1) as `huggingface_hub.EvalResult`s, for the card's model-index:
    each named for its data (the dataset's own name and split, or the cross-validation it comes from)."""
    from huggingface_hub import EvalResult

    eval_results = []
    for label, metrics in results:
        flat = _flat_metrics(metrics)
        dataset_name, dataset_type = _dataset_of(label)
        for key, metric_type, metric_name in _INDEXED:
            if key in flat:
                eval_results.append(
                    EvalResult(
                        task_type="image-classification",
                        dataset_type=dataset_type,
                        dataset_name=dataset_name,
                        metric_type=metric_type,
                        metric_name=metric_name,
                        metric_value=round(100 * float(flat[key]), 2),
                    )
                )
    return eval_results


def _card_data(
    repo_id: str, with_adapter: bool, eval_results: list[EvalResult], training_data: list[dict[str, Any]]
) -> ModelCardData:
    """The card's YAML front matter (`huggingface_hub.ModelCardData`); `license: other`, as the data's terms bind."""
    from huggingface_hub import ModelCardData

    sources = sorted({entry["name"] for entry in training_data})
    return ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        license="other",
        license_name="research-only-training-data",
        tags=["mf2", "facial-action-units", "facial-expression-recognition", "emotion-recognition", "blip-2"]
        + (list(ADAPTER_TAGS) if with_adapter else []),
        metrics=["accuracy", "f1"],
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results or None,
        training_data=training_data,
        datasets=sources or None,
    )


def adapter_usage(repo_id: str) -> str:
    """The card's paragraph on loading the DFN adapter from its subfolder."""
    return f"""
The DFN adapter (decoupled fine-tuning network) lives in the `{ADAPTER_SUBFOLDER}/` folder, with the AU thresholds
tuned with it (`{ADAPTER_SUBFOLDER}/thresholds.json`), which loading the adapter applies. Give the repository as the
adapter, as well as the model (`mf2 analyze --model {repo_id} --adapter {repo_id}` on the command line):

```python
import mf2
from transformers import pipeline
pipe = pipeline("facial-state", model="{repo_id}", adapter="{repo_id}")
# or, for your own code: mf2.dfn.load_adapter(model, "{repo_id}")
```
"""


def licence_lines(training_data: list[dict[str, Any]]) -> str:
    """One Markdown bullet per training dataset with its licence (or `- not recorded`)."""
    return (
        "\n".join(
            f"- **{entry['name']}** ({entry['file']}, {entry['rows']} rows, {entry['used_for']}): {entry['license']}."
            for entry in training_data
        )
        or "- not recorded"
    )


def _card_markdown(
    front_matter: str, repo_id: str, usage_extra: str, licence_lines: str, metrics: str, limitations: Sequence[str]
) -> str:
    """The card's text: front matter, then description, use, training data, evaluation, intended use, limitations.

    `usage_extra` (adapter usage and extra sections) goes after the use section; `limitations` precede the general
    ones."""
    return f"""---
{front_matter}
---

# {repo_id.split("/")[-1]}

MF² (multimodal face foundation model): a vision encoder read by two BLIP-2 Q-Former branches, Emo-VL over the whole
face and AU-VL over landmark-located Action Unit regions, with an emotion recogniser (8 classes: neutral, anger,
disgust, fear, happiness, sadness, surprise, other) and a multi-label recogniser of 12 Action Units (AU1, AU2, AU4, AU6,
AU7, AU10, AU12, AU15, AU23, AU24, AU25, AU26). Trained with the `mf2` package.

## Use

```python
import mf2  # registers the MF² classes with transformers
from mf2 import MF2ForFacialStateRecognition
from mf2.processing_mf2 import MF2Processor

model = MF2ForFacialStateRecognition.from_pretrained("{repo_id}")
processor = MF2Processor.from_pretrained("{repo_id}")
inputs = processor(images=["face.jpg"], return_tensors="pt")
outputs = model(pixel_values=inputs["pixel_values"], au_boxes=inputs["au_boxes"])
```

Per-AU decision thresholds (`config.au_thresholds`) were tuned on validation data when the card says so.
{usage_extra}
## Training data and licences

{licence_lines}

**These weights are for research only.** They were trained on research datasets whose terms forbid commercial use
and redistribution (CK+) or whose image rights are unresolved (FER2013). The `mf2` code is Apache-2.0; that licence does
not extend to these weights.

## Evaluation

{metrics}

These are small-budget baselines (see the training data above), not the paper's figures.

## Intended use

Research on facial expression analysis: emotion and Action Unit recognition from face images, as a baseline or a
starting point for fine-tuning.

## Limitations

{"".join(f"- {line}" + chr(10) for line in limitations)}- Trained on few, mostly frontal, posed or web-cropped faces (FER+: 48x48 grayscale; CK+: posed, lab-lit); expect
  lower accuracy on other populations, poses, lighting and resolutions.
- Facial expressions are not reliable evidence of a person's inner emotional state.
- Not for decisions about people (hiring, policing, credit, health, education) nor for surveillance.
- AU labels of the training data are binary presence labels; rare AUs (e.g. AU10, AU26 in CK+) have few examples.
"""


def build_model_card(
    model_dir: str | Path,
    repo_id: str,
    adapter_dir: str | Path | None = None,
    metrics_files: Sequence[str | Path] = (),
    extra_sections: str = "",
    limitations: Sequence[str] = (),
):
    """The model card (`huggingface_hub.ModelCard`) of a model folder (and adapter folder): YAML front matter with the
    training data and their licences, the evaluation results, intended use and limitations.

    `extra_sections` (Markdown) goes after the usage section; `limitations` are listed before the general ones."""
    from huggingface_hub import ModelCard

    folders = [Path(model_dir)] + ([Path(adapter_dir)] if adapter_dir else [])
    results = collect_results(folders, [Path(p) for p in metrics_files])
    data = training_data_entries(folders)
    card_data = _card_data(repo_id, bool(adapter_dir), _eval_results(results), data)
    adapter_text = adapter_usage(repo_id) if adapter_dir else ""
    content = _card_markdown(
        front_matter=card_data.to_yaml(),
        repo_id=repo_id,
        usage_extra=adapter_text + extra_sections,
        licence_lines=licence_lines(data),
        metrics=metrics_table(results),
        limitations=limitations,
    )
    return ModelCard(content)


__all__ = [
    "ADAPTER_SUBFOLDER",
    "ADAPTER_TAGS",
    "DATA_LICENCES",
    "adapter_usage",
    "licence_lines",
    "build_model_card",
    "collect_results",
    "metrics_table",
]
