"""`MF2Trainer`: `transformers.Trainer` for MF²'s multi-loss outputs, and the reading of its predictions.

`Trainer` logs only the total `loss`. MF² optimises up to eight terms (`mf2.LOSS_NAMES`: Emo-VL and AU-VL ITC / ITM /
ITG, the AU and emotion recognisers), and a run is only readable with each of them on its own. `MF2Trainer` therefore:

- adds every loss part to the training logs, averaged over the micro-batches of the logging window (and over the
  processes in data-parallel runs), next to `loss`; a part enters the average only in the steps where it was computed
  (`au_loss` only when the batch had a known AU label, the alignment losses only when the batch had captions);
- adds `eval_<part>` to evaluation metrics the same way;
- passes `example_ids` (when the collator provides them) through evaluation as a third label, so that gathered
  predictions say which example each row is: distributed evaluation can be checked to score every example once.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, Trainer
from transformers.trainer_utils import EvalLoopOutput
from transformers.utils import SAFE_WEIGHTS_NAME

from ..configuration_mf2 import LOSS_NAMES
from .metrics import compute_mf2_metrics, sigmoid

logger = logging.getLogger(__name__)

ID_KEY = "example_ids"
TRAINER_STATE_NAME = "trainer_state.json"


class NonFiniteLossError(FloatingPointError):
    """A training loss that is NaN or infinite: the run stops there, before the diverged weights reach a checkpoint
    or a saved model (`Trainer` alone logs such a step as 0 and goes on).

    Attributes:
        step: the optimizer steps done before the batch (`state.global_step`).
        parts: each loss part of the batch (`mf2.LOSS_NAMES`), with its value, for the ones it computed.
    """

    def __init__(self, step: int, parts: dict[str, float]):
        self.step, self.parts = step, parts
        said = ", ".join(f"{name} {value:.4g}" for name, value in parts.items()) or "no parts"
        super().__init__(
            f"the training loss is not finite (NaN or infinite) after step {step} ({said}): the training diverged; "
            "resume from its last checkpoint with a lower learning rate, or train in float32"
        )


class CheckpointWeightsError(ValueError):
    """A checkpoint whose weights do not fit the model being trained, found when a run resumes from it.

    Attributes:
        checkpoint: the checkpoint folder.
        problems: `from_pretrained`'s loading info for it (`missing_keys`, `unexpected_keys`, `mismatched_keys`), for
            the kinds that were not empty.
    """

    def __init__(self, checkpoint: str, problems: dict[str, list]):
        self.checkpoint, self.problems = checkpoint, problems
        said = "; ".join(
            f"{len(keys)} {kind.replace('_', ' ')} (first: {list(keys)[0]})" for kind, keys in problems.items()
        )
        super().__init__(
            f"the checkpoint {checkpoint} does not fit the model being trained ({said}): it was written by another "
            "model or configuration; remove it to start the training afresh"
        )


class MF2Trainer(Trainer):
    """`Trainer` that logs each of MF²'s loss parts and carries example ids through evaluation.

    Use it exactly like `Trainer` (with `MF2TrainingArguments`, whose defaults already set `label_names`,
    `remove_unused_columns=False` and `ddp_find_unused_parameters=True`).
    """

    loss_part_names: tuple[str, ...] = LOSS_NAMES

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Row 0: sum of each part over the window; row 1: how many micro-batches computed it.
        self._part_sums = {mode: None for mode in ("train", "eval")}

    # ------------------------------------------------------------------ loss parts
    def _accumulate_parts(self, outputs: Any, inputs: dict[str, Any], mode: str) -> None:
        if not isinstance(outputs, dict):
            return
        values, counts = [], []
        for name in self.loss_part_names:
            value = outputs.get(name)
            computed = value is not None
            # The recognisers return 0 for a batch without a known label; that is "not computed", not a zero loss.
            if computed and name == "au_loss" and inputs.get("au_labels") is not None:
                computed = bool((inputs["au_labels"] >= 0).any())
            if computed and name == "emotion_loss" and inputs.get("emotion_labels") is not None:
                computed = bool((inputs["emotion_labels"] >= 0).any())
            values.append(value.detach().float().reshape(()) if computed else None)
            counts.append(1.0 if computed else 0.0)
        device = next((v.device for v in values if v is not None), None)
        if device is None:
            return
        sums = torch.stack([v if v is not None else torch.zeros((), device=device) for v in values])
        step = torch.stack([sums, torch.tensor(counts, device=device)])
        current = self._part_sums[mode]
        self._part_sums[mode] = step if current is None else current + step.to(current.device)

    def _drain_parts(self, mode: str, prefix: str = "") -> dict[str, float]:
        """Average of each part since the last drain, over all processes; resets the window."""
        current = self._part_sums[mode]
        if current is None:
            current = torch.zeros(2, len(self.loss_part_names), device=self.args.device)
        self._part_sums[mode] = None
        if self.accelerator.num_processes > 1:
            # Every process logs at the same steps, so this collective is reached by all of them.
            current = self.accelerator.reduce(current.to(self.args.device), reduction="sum")
        sums, counts = current.detach().cpu().tolist()
        return {
            f"{prefix}{name}": total / count for name, total, count in zip(self.loss_part_names, sums, counts) if count
        }

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        inputs.pop(ID_KEY, None)
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training and not torch.isfinite(loss.detach()).all():
            raise NonFiniteLossError(self.state.global_step, _loss_parts(outputs))
        self._accumulate_parts(outputs, inputs, "train" if model.training else "eval")
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Training logs are the ones with a "loss" entry; evaluation metrics get their parts in `evaluation_loop`.
        if "loss" in logs and not any(key.startswith(("eval_", "test_")) for key in logs):
            logs = {**logs, **self._drain_parts("train")}
        super().log(logs, start_time)

    # ------------------------------------------------------------------ checkpoints
    # `Trainer` reads its own checkpoints back with a bare `load_state_dict(strict=False)`, but `save_pretrained` writes
    # some sub-models under their original names (transformers' conversion mappings: DINOv2's `attention.q_proj` is
    # saved as `attention.attention.query`), so a resumed run silently kept those weights at their starting values
    # (huggingface/transformers#43701). `from_pretrained` maps the names back; a plain model is reloaded through it.
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = self.model if model is None else model
        if not self._reloads_through_from_pretrained(resume_from_checkpoint, model):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_checkpoint_weights(model, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        best = self.state.best_model_checkpoint
        if best is None or not self._reloads_through_from_pretrained(best, self.model):
            return super()._load_best_model()
        logger.info("loading the best model from %s (score: %s)", best, self.state.best_metric)
        load_checkpoint_weights(self.model, best)

    def _reloads_through_from_pretrained(self, checkpoint: str, model) -> bool:
        """Whether `checkpoint` holds one safetensors file of a plain `PreTrainedModel` (DeepSpeed, FSDP, sharded and
        adapter checkpoints keep `Trainer`'s own loading)."""
        sharded_engine = self.is_deepspeed_enabled or self.is_fsdp_enabled
        single_file = (Path(checkpoint) / SAFE_WEIGHTS_NAME).is_file()
        return isinstance(model, PreTrainedModel) and single_file and not sharded_engine

    # ------------------------------------------------------------------ evaluation
    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = dict(inputs)
        example_ids = inputs.pop(ID_KEY, None)
        loss, logits, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        if example_ids is not None and labels is not None:
            labels = (*labels, example_ids) if isinstance(labels, tuple) else (labels, example_ids)
        return loss, logits, labels

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ) -> EvalLoopOutput:
        self._part_sums["eval"] = None
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        output.metrics.update(self._drain_parts("eval", prefix=f"{metric_key_prefix}_"))
        return output


def load_checkpoint_weights(model: PreTrainedModel, checkpoint: str) -> None:
    """Copy the weights `save_pretrained` wrote in `checkpoint` into `model`, every one of them, under the names the
    model uses.

    Raises:
        CheckpointWeightsError: the checkpoint misses some of the model's weights, holds others, or shapes differ.
    """
    saved, info = type(model).from_pretrained(checkpoint, config=copy.deepcopy(model.config), output_loading_info=True)
    kinds = ("missing_keys", "unexpected_keys", "mismatched_keys")
    problems = {kind: list(info[kind]) for kind in kinds if info.get(kind)}
    if problems:
        raise CheckpointWeightsError(checkpoint, problems)
    model.load_state_dict(saved.state_dict(), strict=True)


# --------------------------------------------------------------------------------------------------- metrics
def _loss_parts(outputs: Any) -> dict[str, float]:
    """The loss parts an output holds, as floats (for an error message)."""
    if not isinstance(outputs, dict):
        return {}
    return {name: float(outputs[name].detach().float()) for name in LOSS_NAMES if outputs.get(name) is not None}


def split_predictions(predictions: Any, label_ids: Any) -> dict[str, np.ndarray | None]:
    """`Trainer` predictions `(au_logits, emotion_logits)` and labels `(au, emotion[, ids])` as named arrays."""
    predictions = predictions if isinstance(predictions, (tuple, list)) else (predictions,)
    label_ids = label_ids if isinstance(label_ids, (tuple, list)) else (label_ids,)
    au_logits = np.asarray(predictions[0]) if len(predictions) > 0 else None
    emotion_logits = np.asarray(predictions[1]) if len(predictions) > 1 else None
    return {
        "au_probs": None if au_logits is None else sigmoid(au_logits),
        "emotion_logits": emotion_logits,
        "au_labels": np.asarray(label_ids[0]) if len(label_ids) > 0 and label_ids[0] is not None else None,
        "emotion_labels": np.asarray(label_ids[1]) if len(label_ids) > 1 and label_ids[1] is not None else None,
        "example_ids": np.asarray(label_ids[2]) if len(label_ids) > 2 and label_ids[2] is not None else None,
    }


def make_compute_metrics(config) -> Callable:
    """`compute_metrics` for `Trainer`: the paper's metrics with the config's AU thresholds (0.5 when unset)."""

    def compute_metrics(eval_prediction) -> dict[str, float]:
        parts = split_predictions(eval_prediction.predictions, eval_prediction.label_ids)
        return compute_mf2_metrics(
            au_probs=parts["au_probs"],
            au_labels=parts["au_labels"],
            emotion_predictions=parts["emotion_logits"],
            emotion_labels=parts["emotion_labels"],
            au_thresholds=getattr(config, "au_thresholds", None),
            au_names=config.au_names,
            emotion_names=config.emotion_labels,
        )

    return compute_metrics


def prediction_records(parts: dict[str, np.ndarray | None], config) -> list[dict[str, Any]]:
    """One JSON-ready dict per evaluated example (id, labels, AU probabilities, emotion prediction and scores)."""
    count = next(len(value) for value in parts.values() if value is not None)
    records = []
    for row in range(count):
        record: dict[str, Any] = {}
        if parts["example_ids"] is not None:
            record["example_id"] = int(parts["example_ids"][row])
        if parts["au_probs"] is not None:
            record["au_probs"] = dict(zip(config.au_names, np.round(parts["au_probs"][row], 6).tolist()))
        if parts["au_labels"] is not None:
            record["au_labels"] = parts["au_labels"][row].astype(int).tolist()
        if parts["emotion_logits"] is not None:
            scores = parts["emotion_logits"][row]
            record["emotion"] = config.emotion_labels[int(scores.argmax())]
            record["emotion_logits"] = np.round(scores, 6).tolist()
        if parts["emotion_labels"] is not None:
            record["emotion_label"] = int(parts["emotion_labels"][row])
        records.append(record)
    return records


__all__ = [
    "TRAINER_STATE_NAME",
    "CheckpointWeightsError",
    "MF2Trainer",
    "NonFiniteLossError",
    "load_checkpoint_weights",
    "make_compute_metrics",
    "prediction_records",
    "split_predictions",
]
