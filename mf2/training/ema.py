"""An exponential moving average of the trainable weights, as a `Trainer` callback that survives a resume.

The average is kept beside the model during training, written into every checkpoint (`ema.safetensors`) and read
back when `Trainer` resumes from one, and copied into the model when training ends, so the saved model is the
average. Late-training noise of a small-batch CPU schedule averages out at no cost per step beyond one `lerp`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

EMA_FILE = "ema.safetensors"


class EMACallback(TrainerCallback):
    """Keep `decay`-weighted averages of `model`'s trainable parameters (warmed up: `min(decay, (1+t)/(10+t))`)."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.998):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}.")
        self.decay = float(decay)
        self.parameters = {name: p for name, p in model.named_parameters() if p.requires_grad}
        self.average = {name: p.detach().clone().float() for name, p in self.parameters.items()}

    def on_train_begin(self, args, state, control, **kwargs):
        checkpoint = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
        if checkpoint and (Path(checkpoint) / EMA_FILE).is_file():
            stored = load_file(str(Path(checkpoint) / EMA_FILE))
            self.average.update({name: stored[name] for name in self.average if name in stored})

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        weight = 1.0 - min(self.decay, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            for name, parameter in self.parameters.items():
                self.average[name].lerp_(parameter.detach().float(), weight)

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if folder.is_dir():
            save_file({name: value.contiguous() for name, value in self.average.items()}, str(folder / EMA_FILE))

    def on_train_end(self, args, state, control, **kwargs):
        with torch.no_grad():
            for name, parameter in self.parameters.items():
                parameter.copy_(self.average[name].to(parameter.dtype))


__all__ = ["EMA_FILE", "EMACallback"]
