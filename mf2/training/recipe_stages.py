"""The recipe's stages over one output folder (`Recipe`): the `data`, `pretrain` and `export` stages, its bookkeeping
(resumable stages, timings) and the helpers its emotion and CK+ stages (`recipe_emotion`, `recipe_ckplus`) use. The
command, with the stages described, is `mf2.training.recipe`; `mf2 ablate` runs the same stages with one part removed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Subset
from transformers import AutoTokenizer, set_seed

from ..data.sources import content_fingerprint
from ..image_processing_mf2 import MF2ImageProcessor
from ..integration.encoders import text_encoder_path, vision_encoder_path
from ..local_files import LockHeldError, exclusive_lock, write_json, written_aside
from ..modeling_mf2 import MF2ForFacialStateRecognition, MF2ForPreTraining
from ..processing_mf2 import MF2Processor
from . import scoring
from .arguments import MF2TrainingArguments
from .collator import MF2DataCollator
from .preprocess import prepare_data
from .recipe_card import SHIPPED_VERSION, exported_name, training_data_record, write_card_inputs
from .recipe_ckplus import CKPlusStages
from .recipe_emotion import EmotionStage, emotion_metrics
from .recipe_progress import Progress
from .recipe_settings import RECIPE_STAGES, RecipeSettings
from .run_setup import last_complete_checkpoint
from .trainer import MF2Trainer, NonFiniteLossError
from .vision_cache import VisionTokenCache, VisionTokenCollator, VisionTokenDataset

logger = logging.getLogger("mf2.recipe")

DONE = "done.json"
LOCK_NAME = ".lock"  # held by the process running in the folder
SPEED_ONLY_SETTINGS = frozenset({"cache_batch_size"})  # a resumed run may change them (a smaller GPU, less memory)
DEVELOPMENT_FILES = ("ferplus/train.parquet", "ferplus/valid.parquet", "ckplus/dev.parquet")
PREPROCESSING_PROCESSES = min(os.cpu_count() or 1, 8)
"""Processes of the face pre-processing (`datasets.map`): dlib's shape predictor holds the GIL, so one process keeps
about one core busy however many threads its processor has (600 FER+ train images on the 2-core CPU: 9.9 s in two
processes, 12.5-13.6 s in one); on a GPU machine's many cores it is most of the data stage. The rows and their cache
files are the same whatever the count, and a resumed run with another count reads them."""


class RecipeSettingsError(ValueError):
    """A run folder was started with other settings: `differences` maps each setting to (the folder's, the given)."""

    def __init__(self, folder: Path, differences: dict[str, tuple[Any, Any]]):
        self.folder, self.differences = folder, differences
        changed = ", ".join(f"{name}={old!r} (now {new!r})" for name, (old, new) in differences.items())
        super().__init__(
            f"{folder} was started with {changed}; resume with those settings, or start another --output_dir (its "
            "caches can be shared: they are keyed by content)"
        )


# What stops a run, said in one line with exit status 2: a folder it cannot use, a training that diverged.
RUN_ERRORS = (LockHeldError, RecipeSettingsError, scoring.NonFinitePredictionsError, NonFiniteLossError)


def development_data_problem(data: str | None) -> str | None:
    """What is wrong with `--data` (given on the command line or in the `--config` file) as the folder of the
    development data the recipe reads, in one line; None when nothing is."""
    if data is None:
        return "--data is required: the folder of the development data (ferplus/, ckplus/)"
    missing = [name for name in DEVELOPMENT_FILES if not (Path(data) / name).is_file()]
    return f"{data} lacks {', '.join(missing)}; pass --data the development data folder" if missing else None


# Template captions are short; padding to the paper's 169 / 61 tokens would only cost time.
AU_CAPTION_LENGTH, EMOTION_CAPTION_LENGTH = 48, 64


def build_base_model(settings: RecipeSettings) -> MF2ForPreTraining:
    """The untrained MF² the recipe starts from: the offline encoders (`mf2 encoders`), the Q-Formers initialised from
    MiniLM's first `qformer_layers` layers; the only way the package builds an untrained model (for training)."""
    return MF2ForPreTraining.from_encoders(
        str(vision_encoder_path()),
        str(text_encoder_path()),
        qformer_config={"num_hidden_layers": settings.qformer_layers},
        num_query_tokens=settings.num_query_tokens,
        num_au_query_tokens=settings.num_au_query_tokens,
        vision_trainable_layers=settings.vision_trainable_layers,
        use_emotion_branch=settings.use_emotion_branch,
        use_au_branch=settings.use_au_branch,
        emotion_reads_au_features=False,
        au_caption_max_length=AU_CAPTION_LENGTH,
        emotion_caption_max_length=EMOTION_CAPTION_LENGTH,
    )


class Recipe(EmotionStage, CKPlusStages):
    """The stages above, over one output folder."""

    def __init__(self, data_dir: Path, output_dir: Path, export_dir: Path, settings: RecipeSettings, device: str):
        self.data_dir, self.output_dir, self.export_dir = data_dir, output_dir, export_dir
        self.settings, self.device = settings, device
        # Pre-processed rows and vision tokens, keyed by the data files' content and the processor's options: a run
        # pointing `cache_dir` at another run's folder shares its entries.
        self.cache_dir = output_dir / "cache"
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.timings: dict[str, float] = self._read("timings.json") or {}
        self._datasets: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------- bookkeeping
    def _read(self, name: str) -> Any:
        path = self.output_dir / name
        return json.loads(path.read_text()) if path.is_file() else None

    def _write(self, name: str, value: Any) -> None:
        write_json(self.output_dir / name, value)

    def stage_dir(self, stage: str) -> Path:
        return self.output_dir / stage

    def is_done(self, stage: str) -> bool:
        return (self.stage_dir(stage) / DONE).is_file()

    def mark_done(self, stage: str, seconds: float, **facts: Any) -> None:
        self.stage_dir(stage).mkdir(parents=True, exist_ok=True)
        self.timings[stage] = self.timings.get(stage, 0.0) + seconds
        self._write("timings.json", self.timings)
        write_json(self.stage_dir(stage) / DONE, {"seconds": seconds, **facts})  # whole or not at all: the mark

    def run(self, stages: tuple[str, ...] = RECIPE_STAGES) -> None:
        """Run `stages`, skipping the finished ones and resuming the interrupted one.

        Raises:
            LockHeldError: another process runs in this folder. RecipeSettingsError: the folder's run was started with
                other settings (resuming would mix them in one model)."""
        with exclusive_lock(self.output_dir / LOCK_NAME, wait=False):
            given = self.run_settings()
            self.check_settings(given)
            self._write("settings.json", given)
            self.run_stages(stages)

    def run_settings(self) -> dict[str, Any]:
        """The settings, and `data`: a hash of the development files' bytes (a run resumed on other data would pool
        folds of two datasets and read the features of one by the rows of the other)."""
        files = [self.data_dir / name for name in DEVELOPMENT_FILES]
        return {**asdict(self.settings), "data": content_fingerprint([f for f in files if f.is_file()])}

    def check_settings(self, given: dict[str, Any]) -> None:
        """Raise `RecipeSettingsError` where the settings (and data) differ from those the folder's run was started
        with (a setting the stored file lacks, added to mf2 since, is not compared)."""
        stored = self._read("settings.json") or {}
        differences = {
            name: (value, given[name])
            for name, value in stored.items()
            if name not in SPEED_ONLY_SETTINGS and given.get(name, value) != value
        }
        if differences:
            raise RecipeSettingsError(self.output_dir, differences)

    def run_stages(self, stages: tuple[str, ...]) -> None:
        for stage in stages:
            if self.is_done(stage):
                logger.info("stage %s: done already (%s)", stage, self.stage_dir(stage))
                continue
            logger.info("stage %s: starting", stage)
            start = time.perf_counter()
            facts = getattr(self, f"stage_{stage}")() or {}
            seconds = time.perf_counter() - start
            self.mark_done(stage, seconds, **facts)
            # A stage's Trainer checkpoints only serve to resume it; once its model is saved they are ~1 GB of waste.
            shutil.rmtree(self.stage_dir(stage) / "checkpoints", ignore_errors=True)
            logger.info("stage %s: finished in %.0f s", stage, seconds)
        logger.info("recipe finished; wall time per stage (s): %s", json.dumps(self.timings))

    # ------------------------------------------------------------------------------------------- data
    @property
    def processor(self) -> MF2Processor:
        if "processor" not in self._datasets:
            tokenizer = AutoTokenizer.from_pretrained(str(text_encoder_path()))
            image_processor = MF2ImageProcessor(size=self.settings.image_size)
            self._datasets["processor"] = MF2Processor(
                image_processor,
                tokenizer,
                emotion_caption_max_length=EMOTION_CAPTION_LENGTH,
                au_caption_max_length=AU_CAPTION_LENGTH,
            )
        return self._datasets["processor"]

    def dataset(self, name: str):
        """Pre-processed rows of `ferplus_train`, `ferplus_valid` or `ckplus` (cached Arrow files)."""
        if name not in self._datasets:
            limits = {
                "ferplus_train": self.settings.max_ferplus_train,
                "ferplus_valid": self.settings.max_ferplus_valid,
                "ckplus": self.settings.max_ckplus,
            }
            files = {
                "ferplus_train": "ferplus:{}/ferplus/train.parquet",
                "ferplus_valid": "ferplus:{}/ferplus/valid.parquet",
                "ckplus": "ckplus:{}/ckplus/dev.parquet",
            }
            spec = files[name].format(self.data_dir)
            if limits[name] is not None:
                spec += f",max_samples={limits[name]}"
            dataset, summary = prepare_data(
                [spec], self.processor.image_processor, self.cache_dir, num_proc=PREPROCESSING_PROCESSES
            )
            self._datasets[name] = dataset
            self._datasets[f"{name}_summary"] = summary
        return self._datasets[name]

    def tokens(self, model, name: str, flips: bool, rows=None, views: int | None = None):
        """The cached vision tokens of dataset `name` (or of `rows`, a selection of it) for `model`'s frozen vision
        part (built on first use), with `views` seeded augmented views (default: training sets, `flips` and all rows,
        get `augmented_views`)."""
        if views is None:
            views = self.settings.augmented_views if flips and rows is None else 0
        cache = VisionTokenCache(model, self.cache_dir / "vision-tokens", flips=flips, augmented_views=views)
        collator = MF2DataCollator(self.processor, with_captions=False)
        rows = self.dataset(name) if rows is None else rows
        fingerprint = f"{rows._fingerprint}|{collator.fingerprint()}"
        return cache.build(
            rows,
            collate_fn=collator,
            batch_size=self.settings.cache_batch_size,
            fingerprint=fingerprint,
            label_names=("au_labels", "emotion_labels", "au_boxes", "example_ids"),
            progress=Progress(f"vision tokens of {name}"),
        )

    def stage_data(self) -> None:
        base = self.stage_dir("data") / "base"
        if not (base / "config.json").is_file():
            set_seed(self.settings.seed)
            model = build_base_model(self.settings)
            with written_aside(base) as staging:
                model.save_pretrained(staging)
                self.processor.save_pretrained(staging)
        model = MF2ForPreTraining.from_pretrained(str(base))
        summary = {}
        for name, flips in (("ferplus_train", True), ("ckplus", True), ("ferplus_valid", False)):
            self.tokens(model, name, flips)
            summary[name] = self._datasets[f"{name}_summary"]
        return {"datasets": summary}

    # ------------------------------------------------------------------------------------------- training helpers
    def training_arguments(
        self, output_dir: Path, epochs: float, batch_size: int, learning_rate: float, steps_per_epoch: int
    ) -> MF2TrainingArguments:
        total = max(1, math.ceil(epochs * steps_per_epoch))
        return MF2TrainingArguments(
            output_dir=str(output_dir),
            num_train_epochs=epochs,
            per_device_train_batch_size=batch_size,
            learning_rate=learning_rate,
            weight_decay=0.05,
            warmup_steps=max(1, total // 20),
            lr_scheduler_type="cosine",
            logging_steps=max(1, min(50, total // 20)),
            save_steps=max(10, min(200, total // 8)),
            save_total_limit=1,
            save_strategy="steps",
            report_to=[],
            seed=self.settings.seed,
            dataloader_num_workers=0,
            remove_unused_columns=False,
            use_cpu=self.device == "cpu",
            disable_tqdm=False,
            bf16=self.device == "cuda",
            max_grad_norm=1.0,
            optim="adamw_torch_fused",  # `TrainingArguments`' default, which made the shipped 2.0
        )

    def trainer(self, model, dataset, collator, args: MF2TrainingArguments, **options) -> MF2Trainer:
        """The stage's `MF2Trainer` (`options`: `optimizers`, `compute_loss_func`, `callbacks`)."""
        return MF2Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator, **options)

    def train(
        self,
        model,
        dataset,
        collator,
        args: MF2TrainingArguments,
        optimizer=None,
        compute_loss_func=None,
        callbacks=None,
    ) -> None:
        """Train `model` on `dataset`, resuming from the stage's last complete checkpoint."""
        optimizers = (optimizer, None) if optimizer is not None else (None, None)
        options = dict(optimizers=optimizers, compute_loss_func=compute_loss_func, callbacks=callbacks)
        self.resume_training(self.trainer(model, dataset, collator, args, **options))

    @staticmethod
    def resume_training(trainer: MF2Trainer) -> None:
        """`trainer.train()`, resuming from the last complete checkpoint in its output folder where there is one."""
        checkpoint = last_complete_checkpoint(trainer.args.output_dir)
        if checkpoint:
            logger.info("resuming from %s", checkpoint)
        trainer.train(resume_from_checkpoint=checkpoint)

    @staticmethod
    def save_final(model, directory: Path) -> None:
        with written_aside(directory) as staging:
            model.save_pretrained(staging)

    def predictor(self, model, collator=None) -> MF2Trainer:
        """An `MF2Trainer` that only predicts (`mf2.training.scoring.predict`), batching with `collator` (default: the
        vision-token cache's)."""
        args = MF2TrainingArguments(
            output_dir=str(self.output_dir),  # predicting writes nothing there
            per_device_eval_batch_size=64,
            dataloader_num_workers=0,
            use_cpu=self.device == "cpu",
            report_to=[],
        )
        return MF2Trainer(model=model, args=args, data_collator=collator or VisionTokenCollator())

    def predict(self, model, cached, view: str = "tokens") -> dict[str, np.ndarray]:
        """AU probabilities and emotion logits of every cached example (its original `view`, or `"flipped_tokens"`),
        with its labels, predicted as `mf2 evaluate` predicts (`mf2.training.scoring.predict`)."""
        parts, _ = scoring.predict(self.predictor(model), VisionTokenDataset(cached, augment=False, view=view))
        return {name: value for name, value in parts.items() if value is not None}

    def stage_pretrain(self) -> None:
        directory = self.stage_dir("pretrain")
        model = MF2ForPreTraining.from_pretrained(str(self.stage_dir("data") / "base"))
        if not self.settings.mf2_pretraining:  # Table IV's "w/o MF² pretraining": the next stages start from the base
            self.save_final(model, directory / "model")
            return
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
        args = self.training_arguments(
            directory / "checkpoints",
            settings.pretrain_epochs,
            settings.pretrain_batch_size,
            settings.pretrain_learning_rate,
            math.ceil(len(dataset) / settings.pretrain_batch_size),
        )
        self.train(model, dataset, collator, args)
        self.save_final(model, directory / "model")

    # ------------------------------------------------------------------------------------------- export
    def stage_export(self) -> None:
        model = MF2ForFacialStateRecognition.from_pretrained(str(self.stage_dir("emotion_head") / "model"))
        emotion = emotion_metrics(self.emotion_predictions(model, transfer=False), model.config)
        cv = self._read("au/cv_results.json") or {}
        head = self._read("emotion_head/metrics.json") or {}
        if "ckplus_cv_mean_emotion_accuracy_peak" in head:  # the shipped emotion recogniser's, not the stage-3 one's
            cv = {**cv, "mean_emotion_accuracy_peak": head["ckplus_cv_mean_emotion_accuracy_peak"]}
        config = model.config
        config.trained = True
        config.model_name, config.model_version = exported_name(self.settings), SHIPPED_VERSION
        record = training_data_record(
            {name: len(self.dataset(name)) for name in ("ferplus_train", "ckplus", "ferplus_valid")}
        )
        config.training_data = [f"{part['name']} ({part['rows']} rows)" for part in record["train"]]
        config.vision_trainable_layers = 0
        with written_aside(self.export_dir) as staging:
            model.to(torch.float16).save_pretrained(staging)
            # The weights are stored in half precision; the config asks for float32 so that `from_pretrained` (dtype
            # "auto") gives a CPU-friendly model unless the caller picks another dtype.
            stored = json.loads((staging / "config.json").read_text())
            stored["dtype"] = "float32"
            _drop_machine_paths(stored)
            # The shipped copy is read by the installed package, so it carries no modeling code (never
            # trust_remote_code); publishing to the Hub (`mf2 push`) adds the code and its `auto_map`.
            stored.pop("auto_map", None)
            (staging / "config.json").write_text(json.dumps(stored, indent=2, sort_keys=True) + "\n")
            self.processor.save_pretrained(staging)
            for code in staging.glob("*.py"):
                code.unlink()
        timings = {stage: self.timings[stage] for stage in RECIPE_STAGES if stage in self.timings}
        # In place: the card names its results by the folder.
        transfer = self._read("emotion/metrics.json")
        write_card_inputs(self.export_dir, record, emotion, cv, self.settings, timings, self.card_counts(), transfer)
        logger.info("exported %s to %s", config.model_name, self.export_dir)

    def card_counts(self) -> dict[str, int]:
        """What the run read, for the model card (`write_card_inputs`)."""
        return {
            "ferplus_valid": len(self.dataset("ferplus_valid")),
            "ckplus_subjects": len(set(self.dataset("ckplus")["group"])),
            "pretrain_ferplus": min(self.settings.pretrain_ferplus_samples, len(self.dataset("ferplus_train"))),
            "head_ferplus": len(self.head_ferplus_rows()),
        }


def _drop_machine_paths(config: dict) -> None:
    """Remove `_name_or_path` from a saved config and every sub-config in it: each holds the folder it was loaded from
    on the training machine (the encoders' cache, the stage's output), which means nothing where the model is read."""
    config.pop("_name_or_path", None)
    for value in config.values():
        if isinstance(value, dict):
            _drop_machine_paths(value)


__all__ = [
    "AU_CAPTION_LENGTH",
    "DONE",
    "EMOTION_CAPTION_LENGTH",
    "LOCK_NAME",
    "RUN_ERRORS",
    "Recipe",
    "RecipeSettingsError",
    "build_base_model",
    "development_data_problem",
]
