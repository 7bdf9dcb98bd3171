"""What a DFN adapter needs to know of its base model: the defaults it fills in from it (`resolve_dfn_config`),
whether a checkpoint holds text weights, which `modules_to_save` can train, and a fingerprint of the image path it
was trained on."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from ..modeling_mf2 import MF2RecognitionPreTrainedModel
from .config import DFNConfig
from .features import backbone_modules
from .layer import default_layer_indices


def checkpoint_has_text_weights(name_or_path: str | os.PathLike | None) -> bool | None:
    """Whether the local checkpoint `name_or_path` holds weights of MF²'s text side (the `*_alignment` modules that
    `MF2ForPreTraining` adds): False for the shipped `mf2-base`, which keeps only the image path and the recognisers.
    None when it cannot tell (no local safetensors: a model built from a config, a Hub id)."""
    if not name_or_path:
        return None
    folder = Path(name_or_path)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
    elif (folder / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
            names = list(handle.keys())
    else:
        return None
    return any("alignment." in name for name in names)


def check_modules_to_save(names: list[str] | None, model: nn.Module) -> None:
    """Refuse a `modules_to_save` entry inside the frozen backbone: DFN computes the backbone's features without a
    graph (`extract_features` under `no_grad`, or cached), so a copy there would be reported trainable and never
    train, and an adapter would save it untrained."""
    frozen = {id(module) for part in backbone_modules(model) for module in part.modules()}
    inside = [name for name in names or () if id(_named_module(model, name)) in frozen]
    if inside:
        raise ValueError(
            f"DFN: modules_to_save {inside} lie in the frozen backbone, whose features DFN computes without gradients; "
            "only modules after it train (the default: ['heads'])."
        )


def _named_module(model: nn.Module, name: str) -> nn.Module | None:
    """The module `name` names (a full dotted path, or a suffix of one as PEFT matches them), or None."""
    for full, module in model.named_modules():
        if full == name or full.endswith("." + name):
            return module
    return None


def base_fingerprint(model: nn.Module) -> str | None:
    """SHA-256 of what a DFN adapter reads of its base model: the image path (vision encoder, query tokens,
    cross-attention, RoI positions), which a recognition model and a pretraining model of one checkpoint share, as
    float16 values (a model and its float16 copy, such as the shipped weights loaded in float32, agree). None for a
    model in another precision (bfloat16), whose values cannot be compared exactly."""
    digest, seen = hashlib.sha256(), False
    for name, tensor in sorted(model.state_dict().items()):
        image_path = name.startswith("mf2.vision_model.") or ".crossattention." in name
        if not (image_path or name.endswith(("query_tokens", "au_query_embeddings", "roi_position_embeddings"))):
            continue
        if tensor.dtype not in (torch.float32, torch.float16):
            return None
        values = tensor.detach().cpu().to(torch.float16).contiguous().reshape(-1)
        digest.update(name.encode() + values.view(torch.uint8).numpy().tobytes())
        seen = True
    return digest.hexdigest() if seen else None


def resolve_dfn_config(config: DFNConfig, model: MF2RecognitionPreTrainedModel) -> DFNConfig:
    """Fill in the model-dependent defaults of `config` (branches, modalities, layer indices) and check them."""
    present = [
        name
        for name, enabled in (("emotion", model.config.use_emotion_branch), ("au", model.config.use_au_branch))
        if enabled
    ]
    if config.branches is None:
        config.branches = present
    missing = sorted(set(config.branches) - set(present))
    if missing:
        raise ValueError(f"DFN: the base model has no {missing} branch; available: {present}.")
    has_text = all(model.text_alignment(branch) is not None for branch in config.branches)
    # A text side built but not loaded (MF2ForPreTraining on a checkpoint without text weights, as the shipped
    # mf2-base) is random: text cells trained by ITC against it would learn nothing, and recognition never reads them.
    text_loaded = has_text and checkpoint_has_text_weights(getattr(model, "name_or_path", None)) is not False
    if config.modalities is None:
        config.modalities = ["image", "text"] if text_loaded else ["image"]
    if "text" in config.modalities and not has_text and config.inference_mode:  # recognition never reads text cells
        config.modalities = [modality for modality in config.modalities if modality != "text"]
    if "text" in config.modalities and not has_text:
        raise ValueError(
            f"DFN: text cells need the captions' path of MF2ForPreTraining; {type(model).__name__} has no text side. "
            "Use modalities=['image']."
        )
    if "text" in config.modalities and not text_loaded and not config.inference_mode:
        raise ValueError(
            f"DFN: {model.name_or_path} holds no text weights (its text side would be random), so text cells cannot "
            "learn; use modalities=['image'], the default for it (or load it as MF2ForFacialStateRecognition)."
        )
    num_qformer_layers = model.config.qformer_config.num_hidden_layers
    if config.layer_indices is None:
        config.layer_indices = default_layer_indices(num_qformer_layers, config.num_layers)
    if not all(1 <= index <= num_qformer_layers for index in config.layer_indices):
        raise ValueError(f"DFN: layer_indices {config.layer_indices} must lie in 1..{num_qformer_layers}.")
    return config


__all__ = ["base_fingerprint", "check_modules_to_save", "checkpoint_has_text_weights", "resolve_dfn_config"]
