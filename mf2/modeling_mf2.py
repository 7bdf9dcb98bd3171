"""PyTorch MF²: a vision encoder, the Emo-VL and AU-VL Q-Former branches, and the AU / emotion recognisers."""

import inspect
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, Blip2QFormerModel, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.models.auto.modeling_auto import MODEL_MAPPING
from transformers.models.blip_2.modeling_blip_2 import Blip2TextEmbeddings
from transformers.utils import ModelOutput, can_return_tuple, is_torchdynamo_compiling, logging

from .au_regions import check_au_names, default_au_boxes
from .configuration_mf2 import MF2Config

logger = logging.get_logger(__name__)


# --------------------------------------------------------------------------------------------------- losses
# BLIP-2's ITC / ITM / ITG pieces and the masked recognition losses, as pure functions on tensors (each checked on its
# own against a hand computation in tests/test_modeling_losses.py), beside the models that use them, as transformers'
# modeling files keep their loss helpers.

TEMPERATURE_RANGE = (0.001, 0.5)
"""Bounds of the learnable ITC temperature: below, the softmax saturates in half precision; above, ITC cannot sharpen."""


def clamp_temperature(temperature: torch.Tensor) -> torch.Tensor:
    """The learnable ITC temperature as every ITC term uses it, clamped to `TEMPERATURE_RANGE`."""
    return temperature.clamp(*TEMPERATURE_RANGE)


def weighted_loss(losses: Mapping[str, torch.Tensor], config) -> torch.Tensor | None:
    """`sum(config.loss_weight(name) * term)` over the loss terms present, None when there are none: the one place
    where MF²'s and DFN's totals are formed (weights from `MF2Config.loss_weights`)."""
    if not losses:
        return None
    return sum(config.loss_weight(name) * value for name, value in losses.items())


def caption_positive_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """`(M, M)` bool: pair (i, j) is positive when captions i and j are the same token sequence.

    Template captions repeat across a batch (two happy faces share one emotion caption); treating an identical
    caption as a negative would push apart what should be aligned, so identical captions count as positives.
    """
    tokens = input_ids.masked_fill(attention_mask == 0, -1)
    return (tokens[:, None, :] == tokens[None, :, :]).all(dim=-1)


def itc_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    temperature: torch.Tensor,
    positive_mask: torch.Tensor,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """In-batch image-text contrastive loss (paper eq. 3), image→text and text→image averaged.

    Args:
        image_features: `(M, Q, E)` L2-normalised query features; a pair's similarity is the best query's (BLIP-2).
        text_features: `(M, E)` L2-normalised caption features.
        temperature: scalar.
        positive_mask: `(M, M)` bool; every row holds at least its diagonal. Positives share the target mass.
        label_smoothing: as in `torch.nn.functional.cross_entropy`.

    Returns:
        The loss and the `(M, M)` image→text similarity matrix (before dividing by the temperature).
    """
    similarity = torch.einsum("iqe,te->itq", image_features, text_features).amax(dim=-1)  # (images, texts)
    targets = positive_mask.float() / positive_mask.float().sum(dim=1, keepdim=True)
    logits = similarity / temperature
    image_to_text = F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    text_to_image = F.cross_entropy(logits.t(), targets.t(), label_smoothing=label_smoothing)
    return (image_to_text + text_to_image) / 2, similarity


def sample_hard_negatives(
    similarity: torch.Tensor,
    positive_mask: torch.Tensor,
    generator: torch.Generator | None = None,
    hardest: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """BLIP-2's hard-negative mining for ITM: negatives drawn with probability softmax(similarity), positives excluded.

    Args:
        similarity: `(M, M)` image→text similarity (no gradient needed).
        positive_mask: `(M, M)` bool.
        hardest: take the most similar negative instead of drawing one: what the models do in eval mode, so that an
            evaluation loss does not depend on the random state (training keeps BLIP-2's draw).

    Returns:
        `negative_text` `(M,)`: for each image, a text index; `negative_image` `(M,)`: for each text, an image index;
        and two `(M,)` bool masks telling which rows had any negative to draw (a batch of identical captions has none).
    """
    similarity = similarity.detach().float()
    allowed = ~positive_mask

    def draw(scores: torch.Tensor, allowed_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = (F.softmax(scores, dim=1) + 1e-4) * allowed_rows
        has_negative = allowed_rows.any(dim=1)
        weights = torch.where(has_negative[:, None], weights, torch.ones_like(weights))
        if hardest:
            return weights.argmax(dim=1), has_negative
        return torch.multinomial(weights, 1, generator=generator).squeeze(1), has_negative

    negative_text, text_valid = draw(similarity, allowed)
    negative_image, image_valid = draw(similarity.t(), allowed.t())
    return negative_text, negative_image, text_valid, image_valid


def multimodal_causal_mask(num_queries: int, text_attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """BLIP-2's ITG mask, additive `(M, 1, Q+L, Q+L)`: queries see queries only; text sees all queries and earlier text.

    Padding text positions are never attended to.
    """
    batch, length = text_attention_mask.shape
    device = text_attention_mask.device
    total = num_queries + length
    allowed = torch.zeros(batch, total, total, dtype=torch.bool, device=device)
    allowed[:, :num_queries, :num_queries] = True
    allowed[:, num_queries:, :num_queries] = True
    causal = torch.tril(torch.ones(length, length, dtype=torch.bool, device=device))
    allowed[:, num_queries:, num_queries:] = causal[None] & text_attention_mask[:, None, :].bool()
    mask = torch.zeros(batch, 1, total, total, dtype=dtype, device=device)
    return mask.masked_fill(~allowed[:, None], torch.finfo(dtype).min)


def itg_loss(
    hidden_states: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    label_smoothing: float,
    lm_head=None,
) -> torch.Tensor:
    """Next-token cross-entropy of the caption given the image queries (paper eq. 5); padding is ignored.

    Args:
        hidden_states: `(M, L, H)` states at each caption position (position t predicts token t+1), or `(M, L, V)`
            logits when `lm_head` is None.
        lm_head: maps states to vocabulary logits. It runs only on the positions that predict a real token:
            vocabulary-wide logits at padding positions (most of a padded batch) would be computed and thrown away.
    """
    keep = attention_mask[:, 1:].bool()
    selected = hidden_states[:, :-1][keep]
    logits = selected if lm_head is None else lm_head(selected)
    return F.cross_entropy(logits.float(), input_ids[:, 1:][keep], label_smoothing=label_smoothing)


def masked_au_loss(logits: torch.Tensor, labels: torch.Tensor, pos_weight: torch.Tensor | None = None):
    """Binary cross-entropy over the known AU labels (label -1 = unknown, left out of the mean). Without a branch on
    the data, so that `torch.compile(fullgraph=True)` takes it; with no known label it is 0, its graph connected
    (data-parallel training needs every head in every step)."""
    known = (labels >= 0).to(torch.float32)
    each = F.binary_cross_entropy_with_logits(
        logits.float(), labels.clamp(min=0).float(), pos_weight=pos_weight, reduction="none"
    )
    return (each * known).sum() / known.sum().clamp(min=1.0)


def masked_emotion_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the known emotion labels (label -1 = unknown), as `masked_au_loss`: 0 with none known."""
    known = (labels >= 0).to(torch.float32)
    each = F.cross_entropy(logits.float(), labels.clamp(min=0), reduction="none")
    return (each * known).sum() / known.sum().clamp(min=1.0)


# The Q-Former's text FFN (`encoder.layer.N.intermediate/output`, not `attention.output` nor `*_query`).
_TEXT_FFN_PATTERN = r"qformer\.encoder\.layer\.\d+\.(intermediate|output)\."
_REMOTE_AUTO_MAP = {
    "AutoConfig": "configuration_mf2.MF2Config",
    "AutoModel": "modeling_mf2.MF2Model",
    "AutoModelForPreTraining": "modeling_mf2.MF2ForPreTraining",
    "AutoModelForImageClassification": "modeling_mf2.MF2ForFacialStateRecognition",
}
# What `MF2ImageProcessor` returns beside the model inputs (the face geometry the pipeline and `visualize` read).
# The models accept and ignore these, so `model(**processor(images))` works; any other unknown keyword is an error.
PROCESSOR_ONLY_FIELDS: tuple[str, ...] = (
    "landmarks",
    "face_boxes",
    "image_index",
    "alignment",
    "landmark_backend",
    "detection_scale",
)


def check_extra_inputs(model_name: str, kwargs: dict) -> None:
    """Reject keywords a model does not take (a misspelt option must not be silently dropped); processor outputs
    that are not model inputs (`PROCESSOR_ONLY_FIELDS`) pass."""
    unknown = sorted(set(kwargs) - set(PROCESSOR_ONLY_FIELDS))
    if unknown:
        raise TypeError(f"{model_name}.forward() got unexpected keyword argument(s) {unknown}.")


# --------------------------------------------------------------------------------------------------- outputs
# Shapes name the config's sizes: `hidden_size` is the Q-Formers' (`config.qformer_config.hidden_size`),
# `vision_hidden_size` the vision encoder's, `num_tokens` its tokens (class token, registers, patches), `k` the boxes
# per AU and `num_labels` the emotions (`config.id2label`).
#
# Every MF² output ends with the same per-layer fields, defined once in `MF2LayerOutputs`. A dataclass puts its bases'
# fields before its own, so each output takes its leading fields from a private base listed after `MF2LayerOutputs`:
# the fields, and so the `return_dict=False` tuple, keep their order (loss and logits first, per-layer fields last).
@dataclass
class MF2LayerOutputs(ModelOutput):
    """The per-layer outputs that every MF² output carries last, each None unless asked for
    (`output_hidden_states=True`, `output_attentions=True`, or the config's flags).

    Args:
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, with `output_hidden_states=True`):
            The vision encoder's embeddings and the output of each of its layers, each of shape
            `(batch_size, num_tokens, vision_hidden_size)`.
        emotion_qformer_hidden_states (`tuple(torch.FloatTensor)`, *optional*, with `output_hidden_states=True`):
            Emo-VL's Q-Former input and the output of each of its layers, each of shape
            `(batch_size, num_query_tokens, hidden_size)`.
        au_qformer_hidden_states (`tuple(torch.FloatTensor)`, *optional*, with `output_hidden_states=True`):
            AU-VL's Q-Former input and the output of each of its layers, one row per (image, AU) pair, each of shape
            `(batch_size * num_aus, num_au_query_tokens, hidden_size)`.
        attentions (`tuple(torch.FloatTensor)`, *optional*, with `output_attentions=True`):
            The vision encoder's self-attention weights, one per layer, each of shape
            `(batch_size, num_heads, num_tokens, num_tokens)`; attention weights need `attn_implementation="eager"`.
        emotion_qformer_attentions (`tuple(torch.FloatTensor)`, *optional*, with `output_attentions=True`):
            Emo-VL's Q-Former self-attention weights, one per layer, each of shape
            `(batch_size, num_heads, num_query_tokens, num_query_tokens)`.
        au_qformer_attentions (`tuple(torch.FloatTensor)`, *optional*, with `output_attentions=True`):
            AU-VL's Q-Former self-attention weights, one per layer, each of shape
            `(batch_size * num_aus, num_heads, num_au_query_tokens, num_au_query_tokens)`.
        emotion_qformer_cross_attentions (`tuple(torch.FloatTensor)`, *optional*, with `output_attentions=True`):
            Emo-VL's attention from the queries to the vision tokens, one per cross-attention layer, each of shape
            `(batch_size, num_heads, num_query_tokens, num_tokens)`.
        au_qformer_cross_attentions (`tuple(torch.FloatTensor)`, *optional*, with `output_attentions=True`):
            AU-VL's attention from the queries to the AU region tokens, one per cross-attention layer, each of shape
            `(batch_size * num_aus, num_heads, num_au_query_tokens, k * au_roi_size**2)`.
    """

    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    emotion_qformer_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    au_qformer_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    emotion_qformer_attentions: tuple[torch.FloatTensor, ...] | None = None
    au_qformer_attentions: tuple[torch.FloatTensor, ...] | None = None
    emotion_qformer_cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    au_qformer_cross_attentions: tuple[torch.FloatTensor, ...] | None = None

    def per_layer_outputs(self) -> dict:
        """The per-layer fields (`PER_LAYER_FIELDS`), which the heads' outputs pass on."""
        return {name: getattr(self, name) for name in PER_LAYER_FIELDS}


PER_LAYER_FIELDS: tuple[str, ...] = tuple(field.name for field in fields(MF2LayerOutputs))
"""The fields every MF² output carries on request (`output_hidden_states`, `output_attentions`)."""


@dataclass
class _MF2ModelFields(ModelOutput):
    """`MF2ModelOutput`'s leading fields (documented there)."""

    emotion_embeds: torch.FloatTensor | None = None
    au_embeds: torch.FloatTensor | None = None
    emotion_query_output: torch.FloatTensor | None = None
    au_query_output: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    au_region_embeds: torch.FloatTensor | None = None


@dataclass
class MF2ModelOutput(MF2LayerOutputs, _MF2ModelFields):
    """Image features of MF² (`MF2Model`); a branch not built, or skipped (`branches=`), leaves its fields None.

    Args:
        emotion_embeds (`torch.FloatTensor` of shape `(batch_size, hidden_size)`, *optional*):
            The global face feature: Emo-VL's query outputs averaged.
        au_embeds (`torch.FloatTensor` of shape `(batch_size, num_aus, hidden_size)`, *optional*):
            One local feature per AU: its AU-VL query outputs averaged.
        emotion_query_output (`torch.FloatTensor` of shape `(batch_size, num_query_tokens, hidden_size)`, *optional*):
            Emo-VL's query outputs.
        au_query_output (`torch.FloatTensor` of shape `(batch_size, num_aus, num_au_query_tokens, hidden_size)`):
            AU-VL's query outputs, per AU (*optional*).
        image_embeds (`torch.FloatTensor` of shape `(batch_size, num_tokens, vision_hidden_size)`):
            The vision encoder's last hidden state.
        au_region_embeds (`torch.FloatTensor` of shape `(batch_size, num_aus, k * au_roi_size**2, vision_hidden_size)`):
            The patch tokens pooled inside each AU's boxes, which AU-VL reads (*optional*).

    The per-layer fields of `MF2LayerOutputs` follow, documented there.
    """

    @property
    def vision_hidden_states(self) -> tuple[torch.FloatTensor, ...] | None:
        """The former name of `hidden_states` (the vision encoder's per-layer states)."""
        return self.hidden_states


@dataclass
class _MF2RecognitionFields(ModelOutput):
    """`MF2RecognitionOutput`'s leading fields (documented there)."""

    loss: torch.FloatTensor | None = None
    au_loss: torch.FloatTensor | None = None
    emotion_loss: torch.FloatTensor | None = None
    au_logits: torch.FloatTensor | None = None
    emotion_logits: torch.FloatTensor | None = None
    emotion_embeds: torch.FloatTensor | None = None
    au_embeds: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None


@dataclass
class MF2RecognitionOutput(MF2LayerOutputs, _MF2RecognitionFields):
    """Output of `MF2ForFacialStateRecognition`.

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `au_labels` or `emotion_labels` is given):
            `au_loss` and `emotion_loss` weighted by `config.loss_weights`.
        au_loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `au_labels` is given):
            Binary cross-entropy over the known AU labels.
        emotion_loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `emotion_labels` is given):
            Cross-entropy over the known emotion labels.
        au_logits (`torch.FloatTensor` of shape `(batch_size, num_aus)`):
            AU presence logits (a sigmoid gives probabilities).
        emotion_logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
            Emotion logits.
        emotion_embeds (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            The global face feature the recognisers read (`MF2ModelOutput.emotion_embeds`).
        au_embeds (`torch.FloatTensor` of shape `(batch_size, num_aus, hidden_size)`):
            The per-AU features the recognisers read (`MF2ModelOutput.au_embeds`).
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
            `emotion_logits` under the name image classifiers use. The model's single-label classes are the emotions
            (`config.id2label`), so `AutoModelForImageClassification` users and the `image-classification` pipeline
            read them here; the AU recogniser is a second, multi-label head.

    The per-layer fields of `MF2LayerOutputs` follow, documented there.
    """


@dataclass
class _MF2PreTrainingFields(ModelOutput):
    """`MF2PreTrainingOutput`'s leading fields (documented there)."""

    loss: torch.FloatTensor | None = None
    emo_itc: torch.FloatTensor | None = None
    emo_itm: torch.FloatTensor | None = None
    emo_itg: torch.FloatTensor | None = None
    au_itc: torch.FloatTensor | None = None
    au_itm: torch.FloatTensor | None = None
    au_itg: torch.FloatTensor | None = None
    au_loss: torch.FloatTensor | None = None
    emotion_loss: torch.FloatTensor | None = None
    au_logits: torch.FloatTensor | None = None
    emotion_logits: torch.FloatTensor | None = None
    emotion_embeds: torch.FloatTensor | None = None
    au_embeds: torch.FloatTensor | None = None


@dataclass
class MF2PreTrainingOutput(MF2LayerOutputs, _MF2PreTrainingFields):
    """Output of `MF2ForPreTraining`: the weighted total and every term on its own.

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when labels or captions are given):
            The terms present, weighted by `config.loss_weights`.
        emo_itc (`torch.FloatTensor` of shape `()`, *optional*, returned when emotion captions are given):
            Emo-VL's image-text contrastive loss.
        emo_itm (`torch.FloatTensor` of shape `()`, *optional*, returned when emotion captions are given):
            Emo-VL's image-text matching loss.
        emo_itg (`torch.FloatTensor` of shape `()`, *optional*, returned when emotion captions are given):
            Emo-VL's image-grounded caption generation loss.
        au_itc (`torch.FloatTensor` of shape `()`, *optional*, returned when AU captions are given):
            AU-VL's image-text contrastive loss over the (image, AU) pairs that have a caption.
        au_itm (`torch.FloatTensor` of shape `()`, *optional*, returned when AU captions are given):
            AU-VL's image-text matching loss over those pairs.
        au_itg (`torch.FloatTensor` of shape `()`, *optional*, returned when AU captions are given):
            AU-VL's caption generation loss over those pairs.
        au_loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `au_labels` is given):
            Binary cross-entropy over the known AU labels.
        emotion_loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `emotion_labels` is given):
            Cross-entropy over the known emotion labels.
        au_logits (`torch.FloatTensor` of shape `(batch_size, num_aus)`):
            AU presence logits.
        emotion_logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
            Emotion logits.
        emotion_embeds (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            The global face feature (`MF2ModelOutput.emotion_embeds`).
        au_embeds (`torch.FloatTensor` of shape `(batch_size, num_aus, hidden_size)`):
            The per-AU features (`MF2ModelOutput.au_embeds`).

    The per-layer fields of `MF2LayerOutputs` follow (of the image path; the caption passes are not returned),
    documented there.
    """


# --------------------------------------------------------------------------------------------------- building blocks
def roi_align_tokens(feature_map: torch.Tensor, boxes: torch.Tensor, output_size: int, sampling_ratio: int = 2):
    """RoIAlign in plain torch: pool a feature map inside normalised boxes.

    Args:
        feature_map: `(B, D, H, W)` patch-token grid.
        boxes: `(B, A, K, 4)` normalised `xyxy` in the image frame that the grid covers.
        output_size: bins per side; each bin averages `sampling_ratio^2` bilinear samples.

    Returns:
        `(B, A, K * output_size^2, D)` pooled tokens, box by box, bins row-major.
    """
    batch, channels = feature_map.shape[:2]
    _, num_aus, per_au, _ = boxes.shape
    samples = output_size * sampling_ratio
    steps = (torch.arange(samples, device=boxes.device, dtype=boxes.dtype) + 0.5) / samples
    x1, y1, x2, y2 = boxes.unbind(-1)
    xs = x1[..., None] + (x2 - x1)[..., None] * steps  # (B, A, K, S)
    ys = y1[..., None] + (y2 - y1)[..., None] * steps
    grid = torch.stack(
        [
            xs[..., None, :].expand(*xs.shape[:-1], samples, samples),
            ys[..., :, None].expand(*ys.shape[:-1], samples, samples),
        ],
        dim=-1,
    )  # (B, A, K, S, S, 2) with x varying along the last spatial axis
    grid = (grid * 2 - 1).reshape(batch, num_aus * per_au * samples, samples, 2).float()
    # Sampled in float32: torch's CPU grid_sample returns NaNs for bfloat16 / float16 inputs that hold none.
    sampled = F.grid_sample(feature_map.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    sampled = sampled.to(feature_map.dtype)
    sampled = sampled.view(batch, channels, num_aus * per_au, output_size, sampling_ratio, output_size, sampling_ratio)
    pooled = sampled.mean(dim=(4, 6))  # (B, D, A*K, r, r)
    pooled = pooled.view(batch, channels, num_aus, per_au * output_size * output_size)
    return pooled.permute(0, 2, 3, 1)


@contextmanager
def _qformer_text_ffn(qformer_config, enabled: bool):
    """While a Q-Former is built from the shared `config.qformer_config`, say whether it gets the text FFN.

    Every Q-Former of MF² holds `config.qformer_config` itself, as transformers' composite models hold their sub-configs
    (a later change of the config reaches them). `use_qformer_text_input` is read by `Blip2QFormerLayer.__init__` and
    nowhere else, so the image-only models build without the text FFN while the config keeps saying `True`.
    """
    saved = qformer_config.use_qformer_text_input
    qformer_config.use_qformer_text_input = enabled
    try:
        yield qformer_config
    finally:
        qformer_config.use_qformer_text_input = saved


def au_caption_rows(au_input_ids, au_attention_mask, au_caption_mask, batch: int, num_aus: int):
    """Validate per-AU captions; returns the attention mask (all ones when None) and the `(batch, num_aus)` bool of
    (image, AU) pairs that carry a caption: an all-padding row, or `au_caption_mask` 0, means no caption."""
    if au_input_ids.ndim != 3 or tuple(au_input_ids.shape[:2]) != (batch, num_aus):
        raise ValueError(
            f"au_input_ids must be (batch={batch}, num_aus={num_aus}, length), got {tuple(au_input_ids.shape)}."
        )
    if au_attention_mask is None:
        au_attention_mask = torch.ones_like(au_input_ids)
    present = au_attention_mask.sum(dim=-1) > 0
    if au_caption_mask is not None:
        if tuple(au_caption_mask.shape) != (batch, num_aus):
            raise ValueError(f"au_caption_mask must be ({batch}, {num_aus}), got {tuple(au_caption_mask.shape)}.")
        present = present & au_caption_mask.bool()
    return au_attention_mask, present


class MF2QFormerBranch(nn.Module):
    """Learned queries and a BLIP-2 Q-Former (transformers' `Blip2QFormerModel`) that reads vision tokens.

    The queries are used inside `forward`, so a device map that offloads the branch (it is one of
    `_no_split_modules`) brings them in with the Q-Former.
    """

    def __init__(self, config: MF2Config, num_query_tokens: int, with_text_ffn: bool):
        super().__init__()
        self.query_tokens = nn.Parameter(torch.zeros(1, num_query_tokens, config.qformer_config.hidden_size))
        with _qformer_text_ffn(config.qformer_config, with_text_ffn) as qformer_config:
            self.qformer = Blip2QFormerModel(qformer_config)

    @property
    def num_query_tokens(self) -> int:
        return self.query_tokens.shape[1]

    def encode(
        self,
        queries: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        output_hidden_states: bool | list[int] = False,
        output_attentions: bool = False,
    ):
        """Run `queries` `(N, Q, H)` against `encoder_hidden_states` `(N, T, D)`; returns the Q-Former output."""
        output = self.qformer(
            query_embeds=queries,
            encoder_hidden_states=encoder_hidden_states,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        if output.attentions is not None and output.cross_attentions:
            # transformers' Blip2QFormerModel records the cross-attention weights among `attentions` too (its
            # ".attention" recorder also matches ".crossattention.attention"): keep the self-attention ones, one per layer.
            cross = output.cross_attentions
            output.attentions = tuple(weights for weights in output.attentions if not any(weights is c for c in cross))
        return output

    def forward(
        self,
        encoder_hidden_states: torch.Tensor,
        output_hidden_states: bool | list[int] = False,
        output_attentions: bool = False,
    ):
        """The learned queries against `encoder_hidden_states` `(B, T, D)`; returns the Q-Former output."""
        queries = self.query_tokens.expand(encoder_hidden_states.shape[0], -1, -1)
        return self.encode(queries, encoder_hidden_states, output_hidden_states, output_attentions)


class MF2AUBranch(MF2QFormerBranch):
    """AU-VL's image side: patch tokens pooled inside each AU's boxes, read by one Q-Former shared by all AUs.

    A learned per-AU offset on the shared queries tells the Q-Former which AU it is looking at, and a learned position
    embedding tells it where in the box each pooled token lies.
    """

    def __init__(self, config: MF2Config, with_text_ffn: bool):
        super().__init__(config, config.num_au_query_tokens, with_text_ffn)
        hidden = config.qformer_config.hidden_size
        self.roi_size = config.au_roi_size
        self.au_query_embeddings = nn.Parameter(torch.zeros(config.num_aus, 1, hidden))
        self.roi_position_embeddings = nn.Parameter(
            torch.zeros(1, config.au_roi_size**2, config.vision_config.hidden_size)
        )

    def queries_for_aus(self, au_indices: torch.Tensor) -> torch.Tensor:
        """The queries of the given AUs, `(N, Q, H)` for `au_indices` `(N,)`."""
        return self.query_tokens + self.au_query_embeddings[au_indices]

    def pool_regions(self, patch_grid: torch.Tensor, au_boxes: torch.Tensor) -> torch.Tensor:
        """`(B, A, K * roi^2, D)` region tokens from the `(B, D, H, W)` grid and `(B, A, K, 4)` boxes."""
        tokens = roi_align_tokens(patch_grid, au_boxes, self.roi_size)
        boxes_per_au = au_boxes.shape[2]
        return tokens + self.roi_position_embeddings.repeat(1, boxes_per_au, 1)[:, None]

    def forward(
        self,
        patch_grid: torch.Tensor,
        au_boxes: torch.Tensor,
        output_hidden_states: bool | list[int] = False,
        output_attentions: bool = False,
    ):
        """Pool the AU regions of the `(B, D, H, W)` grid inside the `(B, A, K, 4)` boxes and read them with each AU's
        queries. Returns the region tokens `(B, A, K * roi^2, D)`, the query output `(B, A, Q, H)` and the Q-Former
        output (rows are (image, AU) pairs)."""
        region_tokens = self.pool_regions(patch_grid, au_boxes)
        batch, num_aus = region_tokens.shape[:2]
        au_indices = torch.arange(num_aus, device=region_tokens.device).repeat(batch)
        output = self.encode(
            self.queries_for_aus(au_indices), region_tokens.flatten(0, 1), output_hidden_states, output_attentions
        )
        query_output = output.last_hidden_state.view(batch, num_aus, self.num_query_tokens, -1)
        return region_tokens, query_output, output


class MF2RecognitionHeads(nn.Module):
    """The AU recogniser (multi-label, one logit per AU) and the emotion recogniser.

    Each reads the features of every branch present: an AU reads its own local feature and the global face feature;
    the emotion reads the global feature and (with `config.emotion_reads_au_features`) the mean local feature, then
    (with `config.emotion_reads_au_probabilities`) the AU recogniser's probabilities. Without one branch they read the
    other alone.
    """

    def __init__(self, config: MF2Config):
        super().__init__()
        hidden = config.qformer_config.hidden_size
        self.use_emotion_branch, self.use_au_branch = config.use_emotion_branch, config.use_au_branch
        self.reads_au_features = config.emotion_reads_au_features
        width = hidden * (int(config.use_emotion_branch) + int(config.use_au_branch))
        emotion_width = hidden if config.use_emotion_branch and not config.emotion_reads_au_features else width
        self.reads_au_probabilities = config.emotion_reads_au_probabilities
        emotion_width += config.num_aus if config.emotion_reads_au_probabilities else 0
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.au_norm = nn.LayerNorm(width)
        self.au_weight = nn.Parameter(torch.zeros(config.num_aus, width))
        self.au_bias = nn.Parameter(torch.zeros(config.num_aus))
        self.emotion_norm = nn.LayerNorm(emotion_width)
        self.emotion_classifier = nn.Linear(emotion_width, len(config.id2label))

    def forward(self, emotion_embeds: torch.Tensor | None, au_embeds: torch.Tensor | None):
        """`(au_logits (B, A), emotion_logits (B, C))`; a recogniser whose inputs were not computed (a branch skipped
        with `MF2Model.forward(branches=...)`) gives None."""
        au_logits = self.au_logits(emotion_embeds, au_embeds)
        return au_logits, self.emotion_logits(emotion_embeds, au_embeds, au_logits)

    def au_logits(self, emotion_embeds: torch.Tensor | None, au_embeds: torch.Tensor | None) -> torch.Tensor | None:
        if au_embeds is None and self.use_au_branch or emotion_embeds is None and self.use_emotion_branch:
            return None
        parts = [] if au_embeds is None else [au_embeds]
        if emotion_embeds is not None:
            parts.append(emotion_embeds[:, None, :].expand(-1, self.au_weight.shape[0], -1))
        au_input = self.dropout(self.au_norm(torch.cat(parts, dim=-1)))
        return (au_input * self.au_weight).sum(dim=-1) + self.au_bias

    def emotion_logits(
        self,
        emotion_embeds: torch.Tensor | None,
        au_embeds: torch.Tensor | None,
        au_logits: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """The emotion logits `(B, C)`; `au_logits` `(B, A)` are the AU recogniser's, computed here when not given
        and the recogniser reads them."""
        reads_au = self.use_au_branch and (self.reads_au_features or not self.use_emotion_branch)
        if emotion_embeds is None and self.use_emotion_branch or au_embeds is None and reads_au:
            return None
        parts = [] if emotion_embeds is None else [emotion_embeds]
        if reads_au:
            parts.append(au_embeds.mean(dim=1))
        if self.reads_au_probabilities:
            if au_logits is None:
                au_logits = self.au_logits(emotion_embeds, au_embeds)
            # Evidence, not a path for the emotion loss to train the AU recogniser by.
            parts.append(torch.sigmoid(au_logits.detach()).to(parts[0].dtype))
        return self.emotion_classifier(self.dropout(self.emotion_norm(torch.cat(parts, dim=-1))))


class MF2LMHead(nn.Module):
    """BERT-style caption prediction head for ITG; `decoder.weight` is tied to the word embeddings."""

    def __init__(self, config: MF2Config):
        super().__init__()
        qformer = config.qformer_config
        self.dense = nn.Linear(qformer.hidden_size, qformer.hidden_size)
        self.activation = ACT2FN[qformer.hidden_act]
        self.LayerNorm = nn.LayerNorm(qformer.hidden_size, eps=qformer.layer_norm_eps)
        self.decoder = nn.Linear(qformer.hidden_size, qformer.vocab_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.LayerNorm(self.activation(self.dense(hidden_states))))


class MF2TextAlignment(nn.Module):
    """The text side of one branch, used in pretraining only: caption embeddings, ITC projections and temperature,
    the ITM head and the ITG head. Captions run through the branch's own Q-Former (its text FFN)."""

    def __init__(self, config: MF2Config):
        super().__init__()
        hidden = config.qformer_config.hidden_size
        self.embeddings = Blip2TextEmbeddings(config.qformer_config)
        self.vision_proj = nn.Linear(hidden, config.image_text_hidden_size)
        self.text_proj = nn.Linear(hidden, config.image_text_hidden_size)
        self.itm_head = nn.Linear(hidden, 2)
        self.lm_head = MF2LMHead(config)
        self.temperature = nn.Parameter(torch.tensor(config.temperature))

    @property
    def clamped_temperature(self) -> torch.Tensor:
        """The ITC temperature as used (MF²'s ITC and DFN's): clamped to `TEMPERATURE_RANGE`."""
        return clamp_temperature(self.temperature)

    def losses(
        self,
        branch: MF2QFormerBranch,
        queries: torch.Tensor,
        query_output: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        itc_label_smoothing: float,
        itg_label_smoothing: float,
    ) -> dict[str, torch.Tensor]:
        """ITC, ITM and ITG over M aligned (image, caption) pairs.

        Args:
            branch: the Q-Former branch the pairs belong to.
            queries: `(M, Q, H)` the queries that produced `query_output` (needed again for the joint passes).
            query_output: `(M, Q, H)` image-side query outputs.
            encoder_hidden_states: `(M, T, D)` what the queries cross-attend to.
            input_ids, attention_mask: `(M, L)` tokenised captions.
        """
        num_queries = queries.shape[1]
        # Pairs were picked out of a batch padded to its longest caption: the columns padded in every pair go.
        length = int(attention_mask.sum(dim=1).max())
        input_ids, attention_mask = input_ids[:, :length], attention_mask[:, :length]
        text_embeds = self.embeddings(input_ids=input_ids)
        text_features = self.text_features(branch, input_ids, attention_mask)
        image_features = F.normalize(self.vision_proj(query_output), dim=-1)
        positives = caption_positive_mask(input_ids, attention_mask)
        itc, similarity = itc_loss(
            image_features, text_features, self.clamped_temperature, positives, itc_label_smoothing
        )

        itm = self.itm_loss(branch, queries, encoder_hidden_states, text_embeds, attention_mask, similarity, positives)

        joint = torch.cat([queries, text_embeds.to(queries.dtype)], dim=1)
        generation_mask = multimodal_causal_mask(num_queries, attention_mask, joint.dtype)
        generated = branch.qformer(
            query_embeds=joint,
            query_length=num_queries,
            attention_mask=generation_mask,
            encoder_hidden_states=encoder_hidden_states,
        )
        itg = itg_loss(
            generated.last_hidden_state[:, num_queries:], input_ids, attention_mask, itg_label_smoothing, self.lm_head
        )
        return {"itc": itc, "itm": itm, "itg": itg}

    def text_features(self, branch: MF2QFormerBranch, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """`(M, E)` normalised ITC features of the captions, from the text-only pass of the Q-Former.

        Template captions repeat across a batch (AU-VL's 12 captions take 24 distinct values), so the pass runs once
        per distinct caption and the result is shared."""
        tokens = input_ids.masked_fill(attention_mask == 0, -1)
        unique, inverse = torch.unique(tokens, dim=0, return_inverse=True)
        first = torch.full((unique.shape[0],), tokens.shape[0], dtype=torch.long, device=tokens.device)
        first = first.scatter_reduce(0, inverse, torch.arange(tokens.shape[0], device=tokens.device), reduce="amin")
        ids, mask = input_ids[first], attention_mask[first]
        length = int(mask.sum(dim=1).max())  # drop the columns that are padding in every distinct caption
        output = branch.qformer(
            query_embeds=self.embeddings(input_ids=ids[:, :length]), query_length=0, attention_mask=mask[:, :length]
        )
        return F.normalize(self.text_proj(output.last_hidden_state[:, 0]), dim=-1)[inverse]

    def itm_logits(self, branch, queries, encoder_hidden_states, text_embeds, attention_mask) -> torch.Tensor:
        """Match / no-match logits `(N, 2)` for N (image, caption) pairs, queries and caption attending jointly."""
        num_queries = queries.shape[1]
        joint = torch.cat([queries, text_embeds.to(queries.dtype)], dim=1)
        mask = torch.cat([attention_mask.new_ones(attention_mask.shape[0], num_queries), attention_mask], dim=1)
        output = branch.qformer(
            query_embeds=joint,
            query_length=num_queries,
            attention_mask=mask,
            encoder_hidden_states=encoder_hidden_states,
        )
        return self.itm_head(output.last_hidden_state[:, :num_queries]).mean(dim=1)

    def itm_loss(self, branch, queries, encoder_hidden_states, text_embeds, attention_mask, similarity, positives):
        """Paper eq. 4 with BLIP-2's batch: every positive pair, plus one hard negative caption per image and one hard
        negative image per caption: drawn in training, the hardest one in eval mode (so evaluation is deterministic)."""
        negative_text, negative_image, text_valid, image_valid = sample_hard_negatives(
            similarity, positives, hardest=not self.training
        )
        logits = self.itm_logits(
            branch,
            torch.cat([queries, queries[negative_image], queries]),
            torch.cat([encoder_hidden_states, encoder_hidden_states[negative_image], encoder_hidden_states]),
            torch.cat([text_embeds, text_embeds, text_embeds[negative_text]]),
            torch.cat([attention_mask, attention_mask, attention_mask[negative_text]]),
        )
        count = queries.shape[0]
        labels = torch.cat([torch.ones(count), torch.zeros(2 * count)]).long().to(logits.device)
        keep = torch.cat([torch.ones_like(image_valid), image_valid, text_valid])
        return F.cross_entropy(logits[keep].float(), labels[keep])


# --------------------------------------------------------------------------------------------------- models
class MF2PreTrainedModel(PreTrainedModel):
    """Base class of the MF² models: weight initialisation, loading and the config class."""

    config: MF2Config
    config_class = MF2Config
    base_model_prefix = "mf2"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    # A branch holds bare parameters (its queries, AU-VL's RoI position embeddings) used in its forward: it must stay
    # whole on one device, so that an offloading device map loads them with the branch (likewise the heads).
    _no_split_modules = [
        "MF2QFormerBranch",
        "MF2AUBranch",
        "MF2RecognitionHeads",
        "Blip2QFormerLayer",
        "Blip2TextEmbeddings",
    ]
    # Trainer must not pass `num_items_in_batch` nor skip dividing the loss by the accumulation steps.
    accepts_loss_kwargs = False

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, with the vision encoder frozen as the config says
        (`freeze_vision_encoder`, `vision_trainable_layers`): transformers rebuilds every loaded weight as trainable,
        so a model trained from a loaded checkpoint would otherwise update the blocks its config keeps frozen."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # `output_loading_info=True`: (model, info)
        core = getattr(model, model.base_model_prefix, model)
        if isinstance(core, MF2Model):
            core.apply_vision_freezing()
        return loaded

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, MF2QFormerBranch):
            init.normal_(module.query_tokens, mean=0.0, std=std)
        if isinstance(module, MF2AUBranch):
            init.normal_(module.au_query_embeddings, mean=0.0, std=std)
            init.normal_(module.roi_position_embeddings, mean=0.0, std=std)
        elif isinstance(module, MF2TextAlignment):
            init.constant_(module.temperature, self.config.temperature)
        elif isinstance(module, MF2RecognitionHeads):
            init.normal_(module.au_weight, mean=0.0, std=std)
            init.zeros_(module.au_bias)
        elif isinstance(module, Blip2TextEmbeddings):
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save as usual; a checkpoint carrying remote code advertises every MF² head in its `auto_map`, so it loads
        remotely as `AutoModel`, `AutoModelForPreTraining` or `AutoModelForImageClassification`, whichever was saved."""
        if self._auto_class is not None:
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **_REMOTE_AUTO_MAP}
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _check_labels(self, au_labels, emotion_labels, batch_size: int) -> None:
        num_aus, num_emotions = self.config.num_aus, len(self.config.id2label)
        if au_labels is not None:
            if tuple(au_labels.shape) != (batch_size, num_aus):
                raise ValueError(f"au_labels must have shape ({batch_size}, {num_aus}), got {tuple(au_labels.shape)}.")
            # Value checks read the data: skipped while compiling (a graph break), as transformers' models do.
            if not is_torchdynamo_compiling() and not torch.isin(au_labels, au_labels.new_tensor([-1, 0, 1])).all():
                raise ValueError("au_labels must hold 0 (absent), 1 (present) or -1 (unknown).")
        if emotion_labels is not None:
            if tuple(emotion_labels.shape) != (batch_size,):
                raise ValueError(f"emotion_labels must have shape ({batch_size},), got {tuple(emotion_labels.shape)}.")
            if not is_torchdynamo_compiling() and ((emotion_labels < -1) | (emotion_labels >= num_emotions)).any():
                raise ValueError(f"emotion_labels must lie in 0..{num_emotions - 1}, or be -1 (unknown).")


class MF2Model(MF2PreTrainedModel):
    """MF²'s image path: vision encoder → Emo-VL queries over the whole face and AU-VL queries over each AU's regions.

    This is what `AutoModel` loads. It never builds the Q-Formers' text side (`MF2ForPreTraining` does), so inference
    never touches text weights.
    """

    _keys_to_ignore_on_load_unexpected = [_TEXT_FFN_PATTERN, r"alignment\.", r"^heads\."]

    def __init__(self, config: MF2Config, with_text_ffn: bool = False):
        super().__init__(config)
        check_au_names(config.au_names)
        vision_class = MODEL_MAPPING[type(config.vision_config)]
        vision_kwargs = (
            {"add_pooling_layer": False} if "add_pooling_layer" in inspect.signature(vision_class).parameters else {}
        )
        self.vision_model = AutoModel.from_config(config.vision_config, **vision_kwargs)
        self._vision_takes_interpolate = (
            "interpolate_pos_encoding" in inspect.signature(self.vision_model.forward).parameters
        )
        self.emotion_branch = (
            MF2QFormerBranch(config, config.num_query_tokens, with_text_ffn) if config.use_emotion_branch else None
        )
        self.au_branch = MF2AUBranch(config, with_text_ffn) if config.use_au_branch else None
        self.register_buffer(
            "default_au_boxes", torch.tensor(default_au_boxes(config.au_names), dtype=torch.float32), persistent=False
        )
        self.post_init()
        self.apply_vision_freezing()

    def get_input_embeddings(self) -> nn.Module:
        """The vision encoder's patch embedding: MF² reads images, so that is where its input is embedded (as in
        transformers' vision models; the captions of pretraining are embedded by each branch's text side)."""
        return self.vision_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.vision_model.set_input_embeddings(value)

    def apply_vision_freezing(self) -> None:
        """Freeze the vision encoder as the config says: all of it, or all but its top `vision_trainable_layers`
        blocks and its final norm."""
        if not self.config.freeze_vision_encoder:
            return
        self.vision_model.requires_grad_(False)
        top = self.config.vision_trainable_layers
        if top:
            for block in self.vision_blocks[-top:]:
                block.requires_grad_(True)
            self.vision_model.layernorm.requires_grad_(True)

    @property
    def vision_blocks(self) -> nn.ModuleList:
        """The vision encoder's transformer blocks (`layers` in ViT, `encoder.layer` in DINOv2)."""
        blocks = getattr(self.vision_model, "layers", None)
        return blocks if isinstance(blocks, nn.ModuleList) else self.vision_model.encoder.layer

    @property
    def vision_cache_layer(self) -> int:
        """Index of the first trainable vision block: the tokens entering it are what a vision-token cache stores
        (`num_hidden_layers` means the encoder's normalised output)."""
        return self.config.vision_config.num_hidden_layers - self.config.vision_trainable_layers

    def frozen_vision_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`(B, T, D)` tokens of the frozen part of the vision encoder (embeddings and blocks below
        `vision_cache_layer`; the normalised output when every block is frozen). Never builds a graph."""
        self._check_pixel_values(pixel_values)
        with torch.no_grad():
            if self.vision_cache_layer == self.config.vision_config.num_hidden_layers:
                return self.encode_image(pixel_values).last_hidden_state
            kwargs = {"interpolate_pos_encoding": True} if self._vision_takes_interpolate else {}
            hidden = self.vision_model.embeddings(pixel_values, **kwargs)
            for block in self.vision_blocks[: self.vision_cache_layer]:
                hidden = block(hidden)
            return hidden

    def trainable_vision_tokens(self, vision_tokens: torch.Tensor) -> torch.Tensor:
        """The encoder's output `(B, T, D)` from `frozen_vision_tokens`' output: the top blocks and the final norm."""
        if self.vision_cache_layer == self.config.vision_config.num_hidden_layers:
            return vision_tokens
        hidden = vision_tokens
        for block in self.vision_blocks[self.vision_cache_layer :]:
            hidden = block(hidden)
        return self.vision_model.layernorm(hidden)

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:
            init.copy_(self.default_au_boxes, torch.tensor(default_au_boxes(self.config.au_names)))

    @property
    def patch_size(self) -> int:
        patch = self.config.vision_config.patch_size
        return patch[0] if isinstance(patch, (list, tuple)) else patch

    def _check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.config.vision_config.num_channels:
            raise ValueError(
                f"pixel_values must be (batch, {self.config.vision_config.num_channels}, height, width), "
                f"got {tuple(pixel_values.shape)}."
            )
        if pixel_values.shape[2] < self.patch_size or pixel_values.shape[3] < self.patch_size:
            raise ValueError(
                f"Images of {tuple(pixel_values.shape[2:])} px are smaller than one {self.patch_size}-px patch."
            )

    def _resolve_boxes(self, au_boxes: torch.Tensor | None, batch_size: int, device, dtype) -> torch.Tensor:
        num_aus = self.config.num_aus
        if au_boxes is None:
            return self.default_au_boxes.to(device=device, dtype=dtype).expand(batch_size, -1, -1, -1)
        if (
            au_boxes.ndim != 4
            or au_boxes.shape[0] != batch_size
            or au_boxes.shape[1] != num_aus
            or au_boxes.shape[3] != 4
        ):
            raise ValueError(
                f"au_boxes must be (batch={batch_size}, num_aus={num_aus}, k, 4) normalised xyxy, got {tuple(au_boxes.shape)}."
            )
        # A value check reads the data: skipped while compiling (it would break the graph), as transformers' do.
        if not is_torchdynamo_compiling() and not torch.isfinite(au_boxes).all():
            raise ValueError("au_boxes contain NaN or infinite values.")
        return au_boxes.to(device=device, dtype=dtype)

    def encode_image(
        self, pixel_values: torch.Tensor, output_hidden_states: bool = False, output_attentions: bool = False
    ):
        """Vision encoder output (frozen encoders run without building a graph)."""
        kwargs = {"interpolate_pos_encoding": True} if self._vision_takes_interpolate else {}
        frozen = not any(p.requires_grad for p in self.vision_model.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            return self.vision_model(
                pixel_values=pixel_values,
                output_hidden_states=output_hidden_states,
                output_attentions=output_attentions,
                **kwargs,
            )

    def patch_grid(
        self, image_embeds: torch.Tensor, height: int | None = None, width: int | None = None
    ) -> torch.Tensor:
        """`(B, D, H/patch, W/patch)` patch grid from the encoder's tokens (prefix tokens such as CLS dropped).

        Without the image size (cached tokens) the grid is taken as square, as every MF² crop is."""
        if height is None or width is None:
            rows = cols = int((image_embeds.shape[1] - self.num_prefix_tokens) ** 0.5)
        else:
            rows, cols = height // self.patch_size, width // self.patch_size
        patches = image_embeds[:, image_embeds.shape[1] - rows * cols :]
        return patches.transpose(1, 2).reshape(image_embeds.shape[0], -1, rows, cols)

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patch grid (CLS, registers)."""
        return 1 + int(getattr(self.config.vision_config, "num_register_tokens", 0) or 0)

    def _resolve_output_flags(self, output_hidden_states, output_attentions) -> tuple[bool | list[int], bool]:
        """The per-layer outputs asked for: the arguments, else `config.output_hidden_states` / `output_attentions`.
        `output_hidden_states` may also list the indices of the states to keep, as transformers' models take it."""
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        if not isinstance(output_hidden_states, (list, tuple)):
            output_hidden_states = bool(output_hidden_states)
        return output_hidden_states, bool(output_attentions)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        au_boxes: torch.FloatTensor | None = None,
        output_hidden_states: bool | None = None,
        vision_tokens: torch.FloatTensor | None = None,
        branches: tuple[str, ...] = ("emotion", "au"),
        output_attentions: bool | None = None,
        **kwargs,
    ) -> MF2ModelOutput | tuple[torch.Tensor, ...]:
        r"""
        pixel_values (`(batch, 3, height, width)`): face crops, normalised for the vision encoder.
        au_boxes (`(batch, num_aus, k, 4)`, *optional*): AU boxes as normalised `xyxy` in the `pixel_values` frame,
            AU order of `config.au_names`. Without them, the canonical boxes of an aligned face crop are used
            (`mf2.au_regions.default_au_boxes`), which fit only crops aligned like `MF2ImageProcessor`'s.
        output_hidden_states, output_attentions (`bool`, *optional*): return the per-layer states / attention weights
            of the vision encoder (`hidden_states`, `attentions`) and of both Q-Formers (`MF2ModelOutput`); default
            to `config.output_hidden_states` / `config.output_attentions`. Attention weights need
            `attn_implementation="eager"`.
        vision_tokens (`(batch, tokens, vision_hidden)`, *optional*): instead of `pixel_values`, the output of
            `frozen_vision_tokens` (read from a `VisionTokenCache`); only the trainable top blocks then run, and the
            vision encoder's per-layer outputs are not available (requesting them raises).
        branches: which branches to run; a training stage that has no AU targets skips AU-VL's cost with
            `("emotion",)` (its outputs are then None).
        return_dict (`bool`, *optional*): `False` returns the output's `to_tuple()` (the fields that are not None),
            as transformers models do; defaults to `config.return_dict`. Likewise for every MF² model.
        kwargs: only the processor's face-geometry outputs (`PROCESSOR_ONLY_FIELDS`), so `model(**processor(images))`
            works; any other keyword raises a `TypeError`. Likewise for every MF² model.
        """
        check_extra_inputs(type(self).__name__, kwargs)
        requested = output_hidden_states, output_attentions
        output_hidden_states, output_attentions = self._resolve_output_flags(output_hidden_states, output_attentions)
        image_embeds, hidden_states, attentions, size = self._embed_image(
            pixel_values, vision_tokens, requested, output_hidden_states, output_attentions
        )
        return MF2ModelOutput(
            image_embeds=image_embeds,
            hidden_states=hidden_states if output_hidden_states else None,
            attentions=attentions if output_attentions else None,
            **self._branch_outputs(image_embeds, au_boxes, size, branches, output_hidden_states, output_attentions),
        )

    def _embed_image(self, pixel_values, vision_tokens, requested, output_hidden_states, output_attentions):
        """The vision encoder's output tokens of `pixel_values` with its per-layer states and attentions, or those of
        cached `vision_tokens` (only the trainable top blocks run, no per-layer outputs), and the pixel size."""
        if (pixel_values is None) == (vision_tokens is None):
            raise ValueError("MF2Model needs exactly one of pixel_values and vision_tokens.")
        if vision_tokens is not None:
            if any(requested):
                raise ValueError("The vision encoder's per-layer outputs are not available from cached vision_tokens.")
            return self.trainable_vision_tokens(vision_tokens), None, None, (None, None)
        self._check_pixel_values(pixel_values)
        vision = self.encode_image(pixel_values, output_hidden_states, output_attentions)
        size = (pixel_values.shape[2], pixel_values.shape[3])
        return vision.last_hidden_state, vision.hidden_states, vision.attentions, size

    def _branch_outputs(self, image_embeds, au_boxes, size, branches, output_hidden_states, output_attentions) -> dict:
        """The `MF2ModelOutput` fields of the Q-Former branches: those of a branch that does not run are None."""
        fields = dict.fromkeys(
            ("emotion_embeds", "au_embeds", "emotion_query_output", "au_query_output", "au_region_embeds")
        )
        emotion = au = None
        if self.emotion_branch is not None and "emotion" in branches:
            emotion = self.emotion_branch(image_embeds, output_hidden_states, output_attentions)
            fields["emotion_query_output"] = emotion.last_hidden_state
            fields["emotion_embeds"] = emotion.last_hidden_state.mean(dim=1)
        if self.au_branch is not None and "au" in branches:
            boxes = self._resolve_boxes(au_boxes, image_embeds.shape[0], image_embeds.device, image_embeds.dtype)
            grid = self.patch_grid(image_embeds, *size)
            region_embeds, query_output, au = self.au_branch(grid, boxes, output_hidden_states, output_attentions)
            fields.update(
                au_region_embeds=region_embeds, au_query_output=query_output, au_embeds=query_output.mean(dim=2)
            )
        for name, output in (("emotion", emotion), ("au", au)):
            for part in ("hidden_states", "attentions", "cross_attentions"):
                fields[f"{name}_qformer_{part}"] = getattr(output, part, None)
        return fields


def _copy_text_encoder_into_branch(text_state: dict, branch: MF2QFormerBranch, alignment=None) -> None:
    """Initialise a Q-Former from a BERT state dict as BLIP-2 does: self-attention and FFN from BERT layer i, the
    query FFN as a copy of the text FFN, cross-attention left freshly initialised; embeddings to the text side."""
    qformer = branch.qformer
    with torch.no_grad():
        qformer.layernorm.load_state_dict(
            {"weight": text_state["embeddings.LayerNorm.weight"], "bias": text_state["embeddings.LayerNorm.bias"]}
        )
        for index, layer in enumerate(qformer.encoder.layer):
            source = f"encoder.layer.{index}."
            pieces = {
                "attention.attention.query": "attention.self.query",
                "attention.attention.key": "attention.self.key",
                "attention.attention.value": "attention.self.value",
                "attention.output.dense": "attention.output.dense",
                "attention.output.LayerNorm": "attention.output.LayerNorm",
                "intermediate_query.dense": "intermediate.dense",
                "output_query.dense": "output.dense",
                "output_query.LayerNorm": "output.LayerNorm",
            }
            if hasattr(layer, "intermediate"):
                pieces.update(
                    {
                        "intermediate.dense": "intermediate.dense",
                        "output.dense": "output.dense",
                        "output.LayerNorm": "output.LayerNorm",
                    }
                )
            for target, origin in pieces.items():
                module = layer.get_submodule(target)
                module.load_state_dict(
                    {"weight": text_state[f"{source}{origin}.weight"], "bias": text_state[f"{source}{origin}.bias"]}
                )
        if alignment is not None:
            embeddings = alignment.embeddings
            embeddings.word_embeddings.weight.copy_(text_state["embeddings.word_embeddings.weight"])
            positions = text_state["embeddings.position_embeddings.weight"]
            embeddings.position_embeddings.weight.copy_(positions[: embeddings.position_embeddings.weight.shape[0]])


class MF2RecognitionPreTrainedModel(MF2PreTrainedModel):
    """What `MF2ForFacialStateRecognition` and `MF2ForPreTraining` share: the MF² core (`mf2`, an `MF2Model`), the AU
    and emotion recognisers (`heads`), the steps from images to features, logits and recogniser losses, and
    `from_encoders`. Each subclass says whether the Q-Formers get their text FFN, adds its own parts and then calls
    `post_init()`; this class is not a model of its own (no Auto class loads it)."""

    def __init__(self, config: MF2Config, with_text_ffn: bool):
        super().__init__(config)
        self.mf2 = MF2Model(config, with_text_ffn=with_text_ffn)
        self.heads = MF2RecognitionHeads(config)

    def text_alignment(self, branch: str) -> MF2TextAlignment | None:
        """The text side of `branch` (`"emotion"` or `"au"`): None in an image-only model; `MF2ForPreTraining` has one
        per branch it builds."""
        return None

    @classmethod
    def from_encoders(cls, vision_model_name_or_path: str, text_model_name_or_path: str, **config_overrides):
        """Build MF² from a pretrained vision encoder and a pretrained BERT-family text encoder (hub ids or folders).

        The vision encoder's weights are copied in; each Q-Former is initialised from the text encoder as BLIP-2 does
        (its layers must match the text encoder's, so the Q-Former size defaults to the text encoder's). Any
        `MF2Config` field can be overridden, `qformer_config` as a dict merged over those defaults.
        """
        vision = AutoModel.from_pretrained(vision_model_name_or_path)
        text = AutoModel.from_pretrained(text_model_name_or_path)
        text_config = text.config
        qformer = {
            "hidden_size": text_config.hidden_size,
            "num_hidden_layers": text_config.num_hidden_layers,
            "num_attention_heads": text_config.num_attention_heads,
            "intermediate_size": text_config.intermediate_size,
            "hidden_act": text_config.hidden_act,
            "layer_norm_eps": text_config.layer_norm_eps,
            "max_position_embeddings": text_config.max_position_embeddings,
        }
        qformer.update(config_overrides.pop("qformer_config", None) or {})
        mismatched = [key for key in ("hidden_size", "intermediate_size") if qformer[key] != getattr(text_config, key)]
        if mismatched or qformer["num_hidden_layers"] > text_config.num_hidden_layers:
            raise ValueError(
                f"The Q-Former is initialised from {text_model_name_or_path}: its {mismatched or 'num_hidden_layers'} "
                "must match the text encoder's (and it cannot have more layers)."
            )
        config = cls.config_class(
            vision_config=vision.config.to_dict(),
            text_config=text_config.to_dict(),
            qformer_config=qformer,
            **config_overrides,
        )
        model = cls(config)
        missing, unexpected = model.mf2.vision_model.load_state_dict(vision.state_dict(), strict=False)
        missing = [key for key in missing if key != "embeddings.mask_token"]
        unexpected = [key for key in unexpected if not key.startswith("pooler.")]
        if missing or unexpected:
            raise ValueError(f"Vision weights do not fit: missing {missing}, unexpected {unexpected}.")
        text_state = text.state_dict()
        for name in ("emotion", "au"):
            branch = getattr(model.mf2, f"{name}_branch")
            if branch is not None:
                _copy_text_encoder_into_branch(text_state, branch, model.text_alignment(name))
        model.mf2.apply_vision_freezing()
        model.config._name_or_path = ""
        return model

    def forward_features(
        self,
        pixel_values=None,
        au_boxes=None,
        output_hidden_states=None,
        vision_tokens=None,
        branches=("emotion", "au"),
        output_attentions=None,
    ) -> MF2ModelOutput:
        return self.mf2(
            pixel_values=pixel_values,
            au_boxes=au_boxes,
            output_hidden_states=output_hidden_states,
            vision_tokens=vision_tokens,
            branches=branches,
            output_attentions=output_attentions,
            return_dict=True,
        )

    def forward_head(self, features: MF2ModelOutput) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(features.emotion_embeds, features.au_embeds)

    def recognition_losses(self, au_logits, emotion_logits, au_labels, emotion_labels) -> dict[str, torch.Tensor]:
        """Recogniser losses for the labels given, each weighted as the config says. Known labels for a recogniser
        that did not run (`branches` skipped a branch it reads) are a `ValueError`, not a loss left out."""
        pairs = (("au_labels", au_labels, au_logits), ("emotion_labels", emotion_labels, emotion_logits))
        for name, labels, logits in pairs:
            if logits is None and labels is not None and not is_torchdynamo_compiling() and bool((labels >= 0).any()):
                raise ValueError(
                    f"{name} were given, but their recogniser did not run: `branches` skipped a branch it reads. Run "
                    f"both branches, or leave {name} out."
                )
        if au_logits is None and emotion_logits is None:
            return {}
        batch = (au_logits if au_logits is not None else emotion_logits).shape[0]
        self._check_labels(au_labels, emotion_labels, batch)
        losses = {}
        if au_labels is not None and au_logits is not None:
            losses["au_loss"] = masked_au_loss(au_logits, au_labels)
        if emotion_labels is not None and emotion_logits is not None:
            losses["emotion_loss"] = masked_emotion_loss(emotion_logits, emotion_labels)
        return losses


class MF2ForFacialStateRecognition(MF2RecognitionPreTrainedModel):
    """MF² for inference and fine-tuning from images alone: AU presence logits and emotion logits.

    Loads the image path and the recognisers of an `MF2ForPreTraining` checkpoint; the text side is left out.
    """

    _keys_to_ignore_on_load_unexpected = [_TEXT_FFN_PATTERN, r"alignment\."]

    def __init__(self, config: MF2Config):
        super().__init__(config, with_text_ffn=False)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        au_boxes: torch.FloatTensor | None = None,
        au_labels: torch.LongTensor | None = None,
        emotion_labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        vision_tokens: torch.FloatTensor | None = None,
        branches: tuple[str, ...] = ("emotion", "au"),
        output_attentions: bool | None = None,
        **kwargs,
    ) -> MF2RecognitionOutput | tuple[torch.Tensor, ...]:
        r"""
        pixel_values (`(batch, 3, height, width)`), au_boxes (`(batch, num_aus, k, 4)`, *optional*): as in `MF2Model`.
        au_labels (`(batch, num_aus)`, *optional*): 1 present, 0 absent, -1 unknown.
        emotion_labels (`(batch,)`, *optional*): class index, -1 unknown.
        output_hidden_states, output_attentions, vision_tokens, branches: as in `MF2Model` (cached training;
            skipping a branch leaves its logits None).
        """
        check_extra_inputs(type(self).__name__, kwargs)
        features = self.forward_features(
            pixel_values, au_boxes, output_hidden_states, vision_tokens, branches, output_attentions
        )
        au_logits, emotion_logits = self.forward_head(features)
        losses = self.recognition_losses(au_logits, emotion_logits, au_labels, emotion_labels)
        loss = weighted_loss(losses, self.config)
        return MF2RecognitionOutput(
            loss=loss,
            au_loss=losses.get("au_loss"),
            emotion_loss=losses.get("emotion_loss"),
            au_logits=au_logits,
            emotion_logits=emotion_logits,
            emotion_embeds=features.emotion_embeds,
            au_embeds=features.au_embeds,
            logits=emotion_logits,
            **features.per_layer_outputs(),
        )


class MF2ForPreTraining(MF2RecognitionPreTrainedModel):
    """MF² pretraining: Emo-VL and AU-VL, each with ITC, ITM and ITG, plus the AU and emotion recognisers.

    Inputs that a batch lacks are skipped, not faked: no emotion caption (none given, or an all-padding row) → that
    image takes no part in Emo-VL alignment; an (image, AU)
    pair whose `au_caption_mask` is 0 takes no part in AU-VL alignment; labels of -1 are left out of the recognisers.
    """

    def __init__(self, config: MF2Config):
        super().__init__(config, with_text_ffn=True)
        self.emotion_alignment = MF2TextAlignment(config) if config.use_emotion_branch else None
        self.au_alignment = MF2TextAlignment(config) if config.use_au_branch else None
        self._tied_weights_keys = {
            f"{name}.lm_head.decoder.weight": f"{name}.embeddings.word_embeddings.weight"
            for name, enabled in (
                ("emotion_alignment", config.use_emotion_branch),
                ("au_alignment", config.use_au_branch),
            )
            if enabled
        }
        self.post_init()

    def resize_token_embeddings(self, *args, **kwargs):
        """Not supported: the captions' vocabulary is the text encoder's, in two tables tied to the ITG heads (Emo-VL,
        AU-VL), and the image side is what `get_input_embeddings` names (transformers would resize the patch
        embedding). Write captions in the text encoder's vocabulary (its tokenizer splits unknown words)."""
        raise NotImplementedError(
            "MF2ForPreTraining does not resize its caption vocabulary (the text encoder's, in two tables tied to the "
            "ITG heads); write captions in that vocabulary: its tokenizer splits new words into known pieces."
        )

    def text_alignment(self, branch: str) -> MF2TextAlignment | None:
        return self.emotion_alignment if branch == "emotion" else self.au_alignment

    def _au_pairs(self, features: MF2ModelOutput, au_input_ids, au_attention_mask, au_caption_mask):
        """Flatten the (image, AU) pairs that carry a caption into M aligned rows."""
        batch, num_aus = features.au_embeds.shape[:2]
        au_attention_mask, present = au_caption_rows(au_input_ids, au_attention_mask, au_caption_mask, batch, num_aus)
        au_indices = torch.arange(num_aus, device=present.device).expand(batch, -1)[present]
        return (
            self.mf2.au_branch.queries_for_aus(au_indices),
            features.au_query_output[present],
            features.au_region_embeds[present],
            au_input_ids[present],
            au_attention_mask[present],
        )

    def _emotion_alignment_losses(self, features, input_ids, attention_mask) -> dict[str, torch.Tensor]:
        """Emo-VL's ITC / ITM / ITG terms (`emo_*`) on the images that have an emotion caption."""
        if self.emotion_alignment is None or input_ids is None:
            return {}
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if tuple(attention_mask.shape) != tuple(input_ids.shape) or input_ids.ndim != 2:
            raise ValueError("emotion_input_ids and emotion_attention_mask must both be (batch, length).")
        captioned = attention_mask.sum(dim=-1) > 0  # an all-padding row = no caption for that image
        if not captioned.any():
            return {}
        queries = self.mf2.emotion_branch.query_tokens.expand(int(captioned.sum()), -1, -1)
        terms = self.emotion_alignment.losses(
            self.mf2.emotion_branch,
            queries,
            features.emotion_query_output[captioned],
            features.image_embeds[captioned],
            input_ids[captioned],
            attention_mask[captioned],
            self.config.itc_label_smoothing,
            self.config.itg_label_smoothing,
        )
        return {f"emo_{name}": value for name, value in terms.items()}

    def _au_alignment_losses(self, features, input_ids, attention_mask, caption_mask) -> dict[str, torch.Tensor]:
        """AU-VL's ITC / ITM / ITG terms (`au_*`) on the (image, AU) pairs that have a caption."""
        if self.au_alignment is None or input_ids is None:
            return {}
        queries, query_output, regions, ids, mask = self._au_pairs(features, input_ids, attention_mask, caption_mask)
        if ids.shape[0] == 0:
            return {}
        smoothing = (self.config.itc_label_smoothing, self.config.itg_label_smoothing)
        terms = self.au_alignment.losses(self.mf2.au_branch, queries, query_output, regions, ids, mask, *smoothing)
        return {f"au_{name}": value for name, value in terms.items()}

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        au_boxes: torch.FloatTensor | None = None,
        emotion_input_ids: torch.LongTensor | None = None,
        emotion_attention_mask: torch.LongTensor | None = None,
        au_input_ids: torch.LongTensor | None = None,
        au_attention_mask: torch.LongTensor | None = None,
        au_caption_mask: torch.LongTensor | None = None,
        au_labels: torch.LongTensor | None = None,
        emotion_labels: torch.LongTensor | None = None,
        vision_tokens: torch.FloatTensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> MF2PreTrainingOutput | tuple[torch.Tensor, ...]:
        r"""
        pixel_values, au_boxes: as in `MF2Model`.
        emotion_input_ids, emotion_attention_mask (`(batch, length)`, *optional*): tokenised emotion captions; a row
            whose attention mask is all zero has no caption and takes no part in Emo-VL alignment.
        au_input_ids, au_attention_mask (`(batch, num_aus, length)`, *optional*): one tokenised caption per AU.
        au_caption_mask (`(batch, num_aus)`, *optional*): 1 where the AU has a caption; rows with an all-zero
            attention mask count as missing too.
        au_labels (`(batch, num_aus)`), emotion_labels (`(batch,)`), *optional*: as in `MF2ForFacialStateRecognition`.
        vision_tokens (`(batch, tokens, vision_hidden)`, *optional*): cached tokens instead of `pixel_values`, as in
            `MF2Model`.
        output_hidden_states, output_attentions (`bool`, *optional*): per-layer outputs of the image path, as in
            `MF2Model` (the caption passes of the alignment losses are not returned).
        """
        check_extra_inputs(type(self).__name__, kwargs)
        features = self.forward_features(
            pixel_values, au_boxes, output_hidden_states, vision_tokens, output_attentions=output_attentions
        )
        au_logits, emotion_logits = self.forward_head(features)
        losses = self.recognition_losses(au_logits, emotion_logits, au_labels, emotion_labels)
        losses.update(self._emotion_alignment_losses(features, emotion_input_ids, emotion_attention_mask))
        losses.update(self._au_alignment_losses(features, au_input_ids, au_attention_mask, au_caption_mask))
        loss = weighted_loss(losses, self.config)
        return MF2PreTrainingOutput(
            loss=loss,
            **losses,
            au_logits=au_logits,
            emotion_logits=emotion_logits,
            emotion_embeds=features.emotion_embeds,
            au_embeds=features.au_embeds,
            **features.per_layer_outputs(),
        )


__all__ = [
    "MF2AUBranch",
    "MF2ForFacialStateRecognition",
    "MF2ForPreTraining",
    "MF2Model",
    "MF2ModelOutput",
    "MF2PreTrainedModel",
    "MF2PreTrainingOutput",
    "MF2LayerOutputs",
    "MF2QFormerBranch",
    "MF2RecognitionHeads",
    "MF2RecognitionOutput",
    "MF2RecognitionPreTrainedModel",
    "MF2TextAlignment",
    "PER_LAYER_FIELDS",
    "PROCESSOR_ONLY_FIELDS",
    "check_extra_inputs",
    "au_caption_rows",
    "roi_align_tokens",
]
