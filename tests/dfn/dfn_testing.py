"""Helpers of the DFN tests: tiny random MF² models (2 Q-Former layers, so DFN uses 2 cells per side network)."""

import torch
from tiny import tiny_batch, tiny_config

from mf2.dfn import DFNConfig

IMAGE_KEYS = ("pixel_values", "au_boxes", "au_labels", "emotion_labels")
CAPTION_KEYS = ("emotion_input_ids", "emotion_attention_mask", "au_input_ids", "au_attention_mask")


def dfn_config(**overrides) -> DFNConfig:
    """A DFN config that fits the tiny model (2 Q-Former layers)."""
    return DFNConfig(**{"num_layers": 2, "bottleneck_size": 8, **overrides})


def build(model_class, seed: int = 0):
    torch.manual_seed(seed)
    return model_class(tiny_config())


def state_copy(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def image_batch(config, batch_size: int = 4, seed: int = 0) -> dict:
    batch = tiny_batch(config, batch_size=batch_size, seed=seed)
    return {key: batch[key] for key in IMAGE_KEYS}


def caption_batch(config, batch_size: int = 4, seed: int = 0) -> dict:
    batch = tiny_batch(config, batch_size=batch_size, seed=seed)
    return {key: batch[key] for key in IMAGE_KEYS + CAPTION_KEYS}
