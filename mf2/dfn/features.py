"""What DFN's side networks read from the frozen backbone: one `DFNFeatures` per batch, computed once.

The adapted forward pass splits where the frozen backbone ends: `extract_features` (backbone, no graph) gives a
`DFNFeatures`; `DFNTuner.forward_from_features` (side networks, heads, losses) consumes it. `DFNFeatureCache` stores
the same object field by field (its safetensors keys are the field names), so the cached and uncached paths share
every operation after extraction, and the field list below is the cache's format.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from ..modeling_mf2 import MF2ModelOutput, MF2RecognitionPreTrainedModel, au_caption_rows
from .config import DFNConfig


@dataclass
class DFNFeatures(ModelOutput):
    """Per-example backbone features of a DFN-adapted MF² (first dimension = batch; A = AUs, N = cells, H = Q-Former
    width, Q = queries, E = ITC width, L = caption tokens). Fields a configuration does not need stay None.

    Args:
        emotion_embeds (`torch.FloatTensor` of shape `(B, H)`):
            The base emotion representation (`MF2ModelOutput.emotion_embeds`).
        au_embeds (`torch.FloatTensor` of shape `(B, A, H)`):
            The base per-AU representations (`MF2ModelOutput.au_embeds`).
        emotion_image_states (`torch.FloatTensor` of shape `(B, N, H)`):
            Emo-VL's query outputs at the read Q-Former layers, mean-pooled over the queries (the task representation
            is the query mean, so the correction is per example, not per query).
        au_image_states (`torch.FloatTensor` of shape `(B, A, N, H)`):
            AU-VL's query outputs at the read layers, mean-pooled over the queries (a correction per AU).
        emotion_image_proj (`torch.FloatTensor` of shape `(B, Q, E)`, *optional*):
            The frozen ITC projection of Emo-VL's query outputs (text cells only).
        emotion_text_cls (`torch.FloatTensor` of shape `(B, H)`, *optional*):
            The emotion caption's CLS state after the last layer (text cells only).
        emotion_text_states (`torch.FloatTensor` of shape `(B, N, H)`, *optional*):
            The emotion caption's CLS state at the read layers (text cells only).
        emotion_caption_tokens (`torch.LongTensor` of shape `(B, L)`, *optional*):
            The emotion caption's token ids with padding -1, right-padded to the configured maximum length (two
            captions are ITC positives when these are equal).
        au_image_proj (`torch.FloatTensor` of shape `(B, A, Q, E)`, *optional*):
            The frozen ITC projection of AU-VL's query outputs (text cells only).
        au_text_cls (`torch.FloatTensor` of shape `(B, A, H)`, *optional*):
            Each AU caption's CLS state after the last layer (text cells only).
        au_text_states (`torch.FloatTensor` of shape `(B, A, N, H)`, *optional*):
            Each AU caption's CLS state at the read layers (text cells only).
        au_caption_tokens (`torch.LongTensor` of shape `(B, A, L)`, *optional*):
            The AU captions' token ids, padded as `emotion_caption_tokens`.
        au_caption_present (`torch.BoolTensor` of shape `(B, A)`, *optional*):
            Which (image, AU) pairs carry a caption.
    """

    emotion_embeds: torch.FloatTensor | None = None
    au_embeds: torch.FloatTensor | None = None
    emotion_image_states: torch.FloatTensor | None = None
    au_image_states: torch.FloatTensor | None = None
    emotion_image_proj: torch.FloatTensor | None = None
    emotion_text_cls: torch.FloatTensor | None = None
    emotion_text_states: torch.FloatTensor | None = None
    emotion_caption_tokens: torch.LongTensor | None = None
    au_image_proj: torch.FloatTensor | None = None
    au_text_cls: torch.FloatTensor | None = None
    au_text_states: torch.FloatTensor | None = None
    au_caption_tokens: torch.LongTensor | None = None
    au_caption_present: torch.BoolTensor | None = None

    @classmethod
    def from_mapping(cls, features: DFNFeatures | Mapping[str, torch.Tensor]) -> DFNFeatures:
        """`features` as a `DFNFeatures` (a collated cache batch is a plain dict of the same fields)."""
        if isinstance(features, cls):
            return features
        unknown = sorted(set(features) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"DFN: unknown cached feature(s) {unknown}; rebuild the feature cache.")
        return cls(**features)

    def branch(self, branch: str, part: str) -> torch.Tensor | None:
        """The field `part` (`"embeds"`, `"image_states"`, `"image_proj"`, `"text_cls"`, ...) of `branch`."""
        return getattr(self, f"{branch}_{part}")


def pad_caption_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, width: int) -> torch.Tensor:
    """Token ids with padding set to -1, right-padded with -1 to `width`.

    Two captions are ITC positives when their token sequences are equal (`caption_positive_mask`); this form keeps
    that comparison exact while giving every example of a feature cache the same shape.
    """
    length = input_ids.shape[-1]
    if length > width:
        raise ValueError(f"DFN: captions of {length} tokens exceed the configured maximum of {width}.")
    tokens = input_ids.long().masked_fill(attention_mask == 0, -1)
    return F.pad(tokens, (0, width - length), value=-1)


def image_features(output: MF2ModelOutput, config: DFNConfig) -> DFNFeatures:
    """Base task representations and the pooled Q-Former states that the image cells read."""
    features = DFNFeatures(emotion_embeds=output.emotion_embeds, au_embeds=output.au_embeds)
    indices = config.layer_indices
    adapt = "image" in config.modalities
    if output.emotion_embeds is not None and adapt and "emotion" in config.branches:
        states = output.emotion_qformer_hidden_states
        features.emotion_image_states = torch.stack([states[i].mean(dim=1) for i in indices], dim=1)
    if output.au_embeds is not None and adapt and "au" in config.branches:
        batch, num_aus = output.au_embeds.shape[:2]
        states = output.au_qformer_hidden_states  # (B * A, Qa, H) per layer
        pooled = torch.stack([states[i].mean(dim=1) for i in indices], dim=1)
        features.au_image_states = pooled.view(batch, num_aus, len(indices), -1)
    return features


def caption_states(branch, alignment, input_ids, attention_mask, indices) -> tuple[torch.Tensor, torch.Tensor]:
    """The caption's CLS state after the last Q-Former layer `(M, H)` and at the read layers `(M, N, H)`, computed as
    MF²'s ITC does (text through the branch's Q-Former, `query_length=0`)."""
    text_embeds = alignment.embeddings(input_ids=input_ids)
    output = branch.qformer(
        query_embeds=text_embeds, query_length=0, attention_mask=attention_mask, output_hidden_states=True
    )
    states = torch.stack([output.hidden_states[i][:, 0] for i in indices], dim=1)
    return output.last_hidden_state[:, 0], states


def add_emotion_caption_features(features, model, output, input_ids, attention_mask, indices) -> None:
    """Emo-VL's text-cell inputs (`emotion_image_proj`, `emotion_text_*`, `emotion_caption_tokens`) into `features`."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    alignment = model.text_alignment("emotion")
    features.emotion_image_proj = alignment.vision_proj(output.emotion_query_output)
    features.emotion_text_cls, features.emotion_text_states = caption_states(
        model.mf2.emotion_branch, alignment, input_ids, attention_mask, indices
    )
    features.emotion_caption_tokens = pad_caption_tokens(
        input_ids, attention_mask, model.config.emotion_caption_max_length
    )


def add_au_caption_features(features, model, output, input_ids, attention_mask, caption_mask, indices) -> None:
    """AU-VL's text-cell inputs (`au_image_proj`, `au_text_*`, `au_caption_*`) into `features`; the text pass runs only
    for the (image, AU) pairs that carry a caption, the others stay zero."""
    batch, num_aus = output.au_embeds.shape[:2]
    attention_mask, present = au_caption_rows(input_ids, attention_mask, caption_mask, batch, num_aus)
    alignment = model.text_alignment("au")
    hidden = output.au_embeds.shape[-1]
    cls = output.au_embeds.new_zeros(batch, num_aus, hidden)
    states = output.au_embeds.new_zeros(batch, num_aus, len(indices), hidden)
    if present.any():
        pair_cls, pair_states = caption_states(
            model.mf2.au_branch, alignment, input_ids[present], attention_mask[present], indices
        )
        cls[present], states[present] = pair_cls.to(cls.dtype), pair_states.to(states.dtype)
    features.au_image_proj = alignment.vision_proj(output.au_query_output)
    features.au_text_cls, features.au_text_states = cls, states
    features.au_caption_tokens = pad_caption_tokens(input_ids, attention_mask, model.config.au_caption_max_length)
    features.au_caption_present = present


@torch.no_grad()
def extract_features(
    model: MF2RecognitionPreTrainedModel,
    config: DFNConfig,
    pixel_values: torch.Tensor,
    au_boxes: torch.Tensor | None = None,
    emotion_input_ids: torch.Tensor | None = None,
    emotion_attention_mask: torch.Tensor | None = None,
    au_input_ids: torch.Tensor | None = None,
    au_attention_mask: torch.Tensor | None = None,
    au_caption_mask: torch.Tensor | None = None,
) -> DFNFeatures:
    """Run the frozen backbone of `model` once and return what the side networks and heads of an adapter configured
    by `config` need, per example (see `DFNFeatures`; caption fields only with text cells and captions)."""
    output = model.mf2(pixel_values=pixel_values, au_boxes=au_boxes, output_hidden_states=True, return_dict=True)
    features = image_features(output, config)
    if "text" in config.modalities:
        if "emotion" in config.branches and emotion_input_ids is not None:
            add_emotion_caption_features(
                features, model, output, emotion_input_ids, emotion_attention_mask, config.layer_indices
            )
        if "au" in config.branches and au_input_ids is not None:
            add_au_caption_features(
                features, model, output, au_input_ids, au_attention_mask, au_caption_mask, config.layer_indices
            )
    return features


def backbone_modules(model: MF2RecognitionPreTrainedModel) -> list[nn.Module]:
    """The frozen modules that DFN's features come from: the image path and, for pretraining models, the caption path."""
    alignments = (model.text_alignment(branch) for branch in ("emotion", "au"))
    return [model.mf2, *(alignment for alignment in alignments if alignment is not None)]


__all__ = [
    "DFNFeatures",
    "backbone_modules",
    "caption_states",
    "extract_features",
    "image_features",
    "pad_caption_tokens",
]
