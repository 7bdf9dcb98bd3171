"""An exponential moving average of the trainable weights, as a `Trainer` callback that survives a resume.

The average is kept beside the model during training, written into every checkpoint (`ema.safetensors`) and read
back when `Trainer` resumes from one, and copied into the model when training ends, so the saved model is the
average. It is written as soon as `Trainer` decides to save, before the checkpoint's `trainer_state.json`: that file
makes a checkpoint complete for a resume, and `Trainer` deletes the previous checkpoint (the only other copy of the
average) right after writing it, before `on_save` runs. Late-training noise of a small-batch CPU schedule averages
out at no cost per step beyond one `lerp`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from ..local_files import written_aside

logger = logging.get_logger(__name__)

EMA_FILE = "ema.safetensors"


class EMACallback(TrainerCallback):
    """Keep `decay`-weighted averages of `model`'s trainable parameters (warmed up: `min(decay, (1+t)/(10+t))`)."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.998):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}.")
        self.decay = float(decay)
        self.parameters = {name: p for name, p in model.named_parameters() if p.requires_grad}
        self.average = {name: p.detach().clone().float() for name, p in self.parameters.items()}
        self._written_step: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        """Start the average from the weights training starts from: the checkpoint's average when `Trainer` resumes
        (`state.global_step` is then the checkpoint's step, its weights already loaded), else the weights themselves
        (the constructor's copy predates a resume's loading)."""
        step = state.global_step
        stored = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}" / EMA_FILE
        with torch.no_grad():
            self.average = {name: p.detach().clone().float() for name, p in self.parameters.items()}
        if step == 0:
            return
        if not stored.is_file():  # killed between the checkpoint and its average: the resumed weights start anew
            logger.warning("No %s beside the resumed checkpoint; the weight average starts from its weights.", EMA_FILE)
            return
        average = load_file(str(stored))
        self.average.update({name: average[name] for name in self.average if name in average})

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        weight = 1.0 - min(self.decay, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            for name, parameter in self.parameters.items():
                self.average[name].lerp_(parameter.detach().float(), weight)
        if control.should_save:  # set by `DefaultFlowCallback`, which runs first: the checkpoint comes next
            self._write(args, state)

    def on_epoch_end(self, args, state, control, **kwargs):
        if control.should_save:
            self._write(args, state)

    def on_save(self, args, state, control, **kwargs):
        # Saves decided elsewhere (a new best model) get their average here, after the checkpoint.
        if self._written_step != state.global_step:
            self._write(args, state)

    def _write(self, args, state) -> None:
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        folder.mkdir(parents=True, exist_ok=True)
        with written_aside(folder / EMA_FILE) as partial:  # a kill mid-write leaves no half file to resume from
            save_file({name: value.contiguous() for name, value in self.average.items()}, str(partial))
        self._written_step = state.global_step

    def on_train_end(self, args, state, control, **kwargs):
        with torch.no_grad():
            for name, parameter in self.parameters.items():
                parameter.copy_(self.average[name].to(parameter.dtype))


__all__ = ["EMA_FILE", "EMACallback"]
