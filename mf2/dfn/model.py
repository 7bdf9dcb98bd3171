"""DFN on MF²: the PEFT tuner that attaches the side networks, and the `DFNModel` users train.

Two classes, following PEFT's split:

- `DFNTuner` (a `peft.tuners.tuners_utils.BaseTuner`) owns the side networks of every adapter, freezes the base model,
  and computes the adapted forward pass. It is what PEFT's mapping dicts point at for `peft_type="DFN"`.
- `DFNModel` (a `peft.PeftModel`) is the user-facing wrapper: `save_pretrained` / `from_pretrained` of adapter-only
  checkpoints, `disable_adapter()`, `print_trainable_parameters()` come from PEFT; its `forward` has the recognition
  model's signature plus `cached_features=` (see `mf2.dfn.cache`).

The adapted forward pass is split at the point where the frozen backbone ends:
`extract_features` (backbone, no graph) -> a dict of per-example tensors -> `forward_from_features` (side networks,
heads, losses). The feature cache stores that dict, so the cached and uncached paths share every operation after it.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, _delete_auxiliary_adapter
from peft.tuners.tuners_utils import set_adapter as _peft_set_adapter
from peft.utils.other import AuxiliaryTrainingWrapper, set_additional_trainable_modules
from torch import nn

from ..losses_mf2 import itc_loss
from ..modeling_mf2 import MF2ForFacialStateRecognition, MF2ModelOutput, MF2RecognitionOutput, au_caption_rows
from .config import DFNConfig
from .layer import DFNSideNetwork, default_layer_indices

# Short loss-name prefixes used by MF2's LOSS_NAMES.
_LOSS_PREFIX = {"emotion": "emo", "au": "au"}


@dataclass
class DFNOutput(MF2RecognitionOutput):
    """Output of a DFN-adapted MF²: `MF2RecognitionOutput` plus the ITC terms that train the text cells.

    Args:
        emo_itc, au_itc: image-text contrastive losses on adapted features (only with text cells and captions).
    """

    emo_itc: torch.FloatTensor | None = None
    au_itc: torch.FloatTensor | None = None


def _pad_caption_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, width: int) -> torch.Tensor:
    """Token ids with padding set to -1, right-padded with -1 to `width`.

    Two captions are ITC positives when their token sequences are equal (`caption_positive_mask`); this form keeps
    that comparison exact while giving every example of a feature cache the same shape.
    """
    length = input_ids.shape[-1]
    if length > width:
        raise ValueError(f"DFN: captions of {length} tokens exceed the configured maximum of {width}.")
    tokens = input_ids.long().masked_fill(attention_mask == 0, -1)
    return F.pad(tokens, (0, width - length), value=-1)


class DFNTuner(BaseTuner):
    """PEFT tuner of DFN: side networks beside each (branch, modality) path of a frozen MF² model.

    Unlike LoRA-style tuners it replaces no module: the side networks are tuner-level containers (`dfn_side`, one
    `nn.ModuleDict` per adapter, keyed `"{branch}_{modality}"`), which PEFT's state-dict helpers treat as adapter state
    because they are children of the tuner. The base model gets only PEFT's `ModulesToSaveWrapper` around the
    `modules_to_save` (the recognition heads by default). Only one adapter can be active at a time.

    Forward paths:

    - `forward(...)` (used by `DFNModel`): backbone features under `torch.no_grad()`, then `forward_from_features`.
    - `PeftModel.forward` (used when the model was built by PEFT's own `get_peft_model` / `PeftModel.from_pretrained`)
      calls the base model directly; `_enable_peft_forward_hooks` then adds the image corrections to `MF2Model`'s output
      through forward hooks, which gives the same recognition outputs. Text cells and the feature cache need `DFNModel`.
    """

    prefix: str = "dfn_"
    tuner_layer_cls = BaseTunerLayer  # DFN has no per-module tuner layers; only auxiliary wrappers are visited.
    target_module_mapping: dict[str, list[str]] = {}
    # The side networks live on the tuner, not in the model: `inject_adapter_in_model` (which returns only the model)
    # cannot carry them, and PEFT refuses such tuners there.
    uses_shared_state: bool = True

    # ------------------------------------------------------------------------------------------- injection
    def inject_adapter(
        self,
        model: nn.Module,
        adapter_name: str,
        autocast_adapter_dtype: bool = True,
        low_cpu_mem_usage: bool = False,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Build the side networks of `adapter_name`, freeze the base model and wrap `modules_to_save`.

        Replaces `BaseTuner.inject_adapter`, which matches and replaces target modules; DFN has none.
        """
        if not isinstance(model, MF2ForFacialStateRecognition):
            raise TypeError(
                "DFN adapts MF² recognition models (MF2ForFacialStateRecognition or MF2ForPreTraining), "
                f"got {type(model).__name__}."
            )
        config = self.peft_config[adapter_name]
        if not isinstance(config, DFNConfig):
            raise TypeError(f"DFNTuner needs a DFNConfig, got {type(config).__name__}.")
        self._check_new_adapter_config(config)
        resolve_dfn_config(config, model)

        hidden_size = model.config.qformer_config.hidden_size
        side = nn.ModuleDict()
        for branch in config.branches:
            for modality in config.modalities:
                network = DFNSideNetwork(
                    hidden_size, config.num_layers, config.bottleneck_size, config.activation,
                    config.gate_activation, config.gate_scaling, config.gate_init,
                )  # fmt: skip
                network.reset_parameters(config.init_weights)
                side[f"{branch}_{modality}"] = network
        reference = next(model.mf2.parameters())
        if not any(parameter.is_meta for parameter in side.parameters()):  # meta under `low_cpu_mem_usage` loading
            side.to(device=reference.device)  # the side networks stay fp32 even on a half-precision backbone
        if "dfn_side" not in self._modules:
            self.dfn_side = nn.ModuleDict()
        self.dfn_side[adapter_name] = side

        # Freeze the whole base model except auxiliary wrappers of earlier adapters, which manage their own flags.
        wrapped = {name for name, module in model.named_modules() if isinstance(module, AuxiliaryTrainingWrapper)}
        for name, parameter in model.named_parameters():
            if not any(name == prefix or name.startswith(prefix + ".") for prefix in wrapped):
                parameter.requires_grad_(False)
        self._update_side_trainability(inference_mode=config.inference_mode)
        set_additional_trainable_modules(
            model=model,
            peft_config=config,
            model_config=BaseTuner.get_model_config(model),
            adapter_name=adapter_name,
            activate_adapter=adapter_name in self.active_adapters,
        )

    def _create_and_replace(self, *args, **kwargs):  # required by BaseTuner; DFN replaces no module
        raise NotImplementedError("DFN attaches side networks; it does not replace modules.")

    def _check_new_adapter_config(self, config: DFNConfig) -> None:
        for name, other in self.peft_config.items():
            if other is not config and other.peft_type != config.peft_type:
                raise ValueError(f"DFN cannot be combined with the {other.peft_type} adapter {name!r} in one model.")

    def _check_merge_allowed(self):
        raise ValueError("DFN cannot be merged: its side networks are non-linear and run beside the backbone.")

    def _replace_module(self, parent, child_name, new_module, child) -> None:
        # Only auxiliary wrappers are ever replaced (on `unload`); they are not Linear-like, so no weight copying.
        setattr(parent, child_name, new_module)

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        # `base_model.dfn_side.<adapter>.au_image.cells.0.up.weight` <-> `base_model.dfn_side.au_image.cells.0.up.weight`
        marker = f"dfn_side.{adapter_name}."
        if marker in key:
            return key.replace(marker, "dfn_side.", 1)
        return super()._remove_adapter_name_from_key(key, adapter_name)

    # ------------------------------------------------------------------------------------------- adapter state
    @property
    def active_config(self) -> DFNConfig:
        return self.peft_config[self._active_name()]

    def _active_name(self) -> str:
        active = self.active_adapters
        if len(active) != 1:
            raise ValueError(f"DFN runs one adapter at a time, got active adapters {active}.")
        return active[0]

    def _active_side(self) -> nn.ModuleDict | None:
        """The active adapter's side networks, or None while adapters are disabled."""
        if getattr(self, "_dfn_disabled", False):
            return None
        return self.dfn_side[self._active_name()]

    def _update_side_trainability(self, inference_mode: bool = False) -> None:
        active = set(self.active_adapters)
        for name, side in self.dfn_side.items():
            side.requires_grad_(name in active and not inference_mode)

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        if len(names) != 1:
            raise ValueError(f"DFN runs one adapter at a time, got {names}.")
        if names[0] not in self.dfn_side:
            raise ValueError(f"Unknown DFN adapter {names[0]!r}; available: {list(self.dfn_side)}.")
        self.active_adapter = names[0]
        self._update_side_trainability(inference_mode)
        _peft_set_adapter(self.model, names[0], inference_mode=inference_mode, layer_cls=self.tuner_layer_cls)

    def _enable_adapter_layers(self, enabled: bool = True) -> None:
        self._dfn_disabled = not enabled
        super()._enable_adapter_layers(enabled)  # the ModulesToSaveWrapper switch between copy and original

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name not in self.dfn_side:
            raise ValueError(f"Adapter {adapter_name!r} does not exist.")
        del self.peft_config[adapter_name]
        del self.dfn_side[adapter_name]
        remaining = list(self.dfn_side)
        new_active = remaining[:1] or None
        _delete_auxiliary_adapter(self.model, adapter_name=adapter_name, new_active_adapters=new_active)
        self.active_adapter = new_active[0] if new_active else []

    def train(self, mode: bool = True):
        """Train mode for the adapter and heads; the frozen backbone stays in eval mode (`backbone_eval_mode`)."""
        super().train(mode)
        if mode and self._modules.get("dfn_side") and self.active_config.backbone_eval_mode:
            for module in backbone_modules(self.model):
                module.eval()
        return self

    # ------------------------------------------------------------------------------------------- forward
    @torch.no_grad()
    def extract_features(
        self,
        pixel_values: torch.Tensor,
        au_boxes: torch.Tensor | None = None,
        emotion_input_ids: torch.Tensor | None = None,
        emotion_attention_mask: torch.Tensor | None = None,
        au_input_ids: torch.Tensor | None = None,
        au_attention_mask: torch.Tensor | None = None,
        au_caption_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Run the frozen backbone once and return what the side networks and heads need, per example.

        Keys (first dimension = batch; N = cells, H = Q-Former width, E = ITC width):

        - `emotion_embeds (B, H)`, `au_embeds (B, A, H)`: the base task representations.
        - `emotion_image_states (B, N, H)`, `au_image_states (B, A, N, H)`: query outputs of the read Q-Former layers,
          mean-pooled over the queries (the task representation is the query mean, so the correction is per example
          or per AU, not per query).
        - With text cells and captions: `{branch}_image_proj` (the frozen ITC projection of the query outputs),
          `{branch}_text_cls` and `{branch}_text_states` (the caption's CLS state, last layer and read layers),
          `{branch}_caption_tokens` (token ids, padding -1, for the positive-pair mask) and `au_caption_present`.
        """
        model = self.model
        config = self.active_config
        indices = config.layer_indices
        output = model.mf2(pixel_values=pixel_values, au_boxes=au_boxes, output_hidden_states=True)
        features = image_features(output, config)

        if "text" in config.modalities:
            if "emotion" in config.branches and emotion_input_ids is not None:
                if emotion_attention_mask is None:
                    emotion_attention_mask = torch.ones_like(emotion_input_ids)
                alignment = model.emotion_alignment
                features["emotion_image_proj"] = alignment.vision_proj(output.emotion_query_output)
                cls, states = caption_states(model.mf2.emotion_branch, alignment, emotion_input_ids,
                                             emotion_attention_mask, indices)  # fmt: skip
                features["emotion_text_cls"], features["emotion_text_states"] = cls, states
                features["emotion_caption_tokens"] = _pad_caption_tokens(
                    emotion_input_ids, emotion_attention_mask, model.config.emotion_caption_max_length
                )
            if "au" in config.branches and au_input_ids is not None:
                features.update(self._au_caption_features(output, au_input_ids, au_attention_mask, au_caption_mask))
        return features

    def _au_caption_features(self, output: MF2ModelOutput, input_ids, attention_mask, caption_mask):
        model = self.model
        batch, num_aus = output.au_embeds.shape[:2]
        attention_mask, present = au_caption_rows(input_ids, attention_mask, caption_mask, batch, num_aus)
        alignment = model.au_alignment
        hidden = output.au_embeds.shape[-1]
        num_cells = len(self.active_config.layer_indices)
        cls = output.au_embeds.new_zeros(batch, num_aus, hidden)
        states = output.au_embeds.new_zeros(batch, num_aus, num_cells, hidden)
        if present.any():
            pair_cls, pair_states = caption_states(
                model.mf2.au_branch, alignment, input_ids[present], attention_mask[present],
                self.active_config.layer_indices,
            )  # fmt: skip
            cls[present], states[present] = pair_cls.to(cls.dtype), pair_states.to(states.dtype)
        return {
            "au_image_proj": alignment.vision_proj(output.au_query_output),
            "au_text_cls": cls,
            "au_text_states": states,
            "au_caption_tokens": _pad_caption_tokens(input_ids, attention_mask, model.config.au_caption_max_length),
            "au_caption_present": present,
        }

    def image_corrections(self, features: dict[str, torch.Tensor], side: nn.ModuleDict) -> dict[str, torch.Tensor]:
        """Gated corrections of the image paths present in `features`, keyed `"emotion_image"` / `"au_image"`."""
        corrections = {}
        for branch in ("emotion", "au"):
            name = f"{branch}_image"
            if name in side and f"{name}_states" in features:
                corrections[name] = side[name](features[f"{name}_states"])
        return corrections

    def forward_from_features(
        self,
        features: dict[str, torch.Tensor],
        au_labels: torch.Tensor | None = None,
        emotion_labels: torch.Tensor | None = None,
    ) -> DFNOutput:
        """Side networks, recognition heads and losses on backbone features (fresh from `extract_features` or cached)."""
        model = self.model
        side = self._active_side()
        corrections = self.image_corrections(features, side) if side is not None else {}
        emotion_embeds, au_embeds = features.get("emotion_embeds"), features.get("au_embeds")
        if "emotion_image" in corrections:
            emotion_embeds = emotion_embeds + corrections["emotion_image"].to(emotion_embeds.dtype)
        if "au_image" in corrections:
            au_embeds = au_embeds + corrections["au_image"].to(au_embeds.dtype)
        au_logits, emotion_logits = model.heads(emotion_embeds, au_embeds)
        losses = model.recognition_losses(au_logits, emotion_logits, au_labels, emotion_labels)

        used = set(corrections)
        for branch in ("emotion", "au"):
            if f"{branch}_image_proj" in features:
                term = self._itc(branch, features, corrections, side)
                if side is not None and f"{branch}_text" in side:
                    used.add(f"{branch}_text")
                if term is not None:
                    losses[f"{_LOSS_PREFIX[branch]}_itc"] = term

        loss = sum(model.config.loss_weight(name) * value for name, value in losses.items()) if losses else None
        if loss is not None and side is not None and torch.is_grad_enabled():
            # A side network this batch did not use (text cells without captions) still joins the graph with weight 0,
            # so that data-parallel training does not need `find_unused_parameters`.
            unused = [
                parameter for name, network in side.items() if name not in used for parameter in network.parameters()
            ]
            if unused:
                loss = loss + 0.0 * sum(parameter.sum() for parameter in unused)
        return DFNOutput(
            loss=loss,
            au_loss=losses.get("au_loss"),
            emotion_loss=losses.get("emotion_loss"),
            au_logits=au_logits,
            emotion_logits=emotion_logits,
            emotion_embeds=emotion_embeds,
            au_embeds=au_embeds,
            emo_itc=losses.get("emo_itc"),
            au_itc=losses.get("au_itc"),
        )

    def _itc(self, branch: str, features, corrections, side) -> torch.Tensor | None:
        """ITC between the adapted image queries and the adapted caption of one branch (paper eq. 3)."""
        model = self.model
        alignment = model.emotion_alignment if branch == "emotion" else model.au_alignment
        image = features[f"{branch}_image_proj"]
        correction = corrections.get(f"{branch}_image")
        if correction is not None:
            # vision_proj(q + c) = vision_proj(q) + W c: the projection of the frozen queries can be cached.
            image = image + F.linear(correction.to(image.dtype), alignment.vision_proj.weight).unsqueeze(-2)
        text = features[f"{branch}_text_cls"]
        if side is not None and f"{branch}_text" in side:
            text = text + side[f"{branch}_text"](features[f"{branch}_text_states"]).to(text.dtype)
        tokens = features[f"{branch}_caption_tokens"]
        present = (tokens >= 0).any(dim=-1)  # an all-padding row (padding is -1) has no caption
        if branch == "au":
            present = present & features["au_caption_present"].bool()
        image, text, tokens = image[present], text[present], tokens[present]
        if tokens.shape[0] == 0:
            return None
        positives = (tokens[:, None, :] == tokens[None, :, :]).all(dim=-1)
        temperature = alignment.temperature.clamp(0.001, 0.5)
        loss, _ = itc_loss(
            F.normalize(image, dim=-1), F.normalize(alignment.text_proj(text), dim=-1), temperature, positives,
            model.config.itc_label_smoothing,
        )  # fmt: skip
        return loss

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
        cached_features: dict[str, torch.Tensor] | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> DFNOutput:
        """The adapted recognition forward pass; see `DFNModel.forward`."""
        if cached_features is None:
            if pixel_values is None:
                raise ValueError("DFN forward needs `pixel_values` or `cached_features`.")
            cached_features = self.extract_features(
                pixel_values, au_boxes, emotion_input_ids, emotion_attention_mask, au_input_ids, au_attention_mask,
                au_caption_mask,
            )  # fmt: skip
        return self.forward_from_features(cached_features, au_labels, emotion_labels)

    # ------------------------------------------------------------------------------------------- PeftModel.forward
    @contextmanager
    def _enable_peft_forward_hooks(self, *args, **kwargs):
        """Adapt `MF2Model`'s output while `PeftModel.forward` runs the base model (PEFT's own entry points)."""
        side = self._active_side() if self._modules.get("dfn_side") else None
        if side is None or not any(name.endswith("_image") for name in side):
            yield
            return
        mf2 = self.model.mf2
        handles = [
            mf2.register_forward_pre_hook(_request_hidden_states, with_kwargs=True),
            mf2.register_forward_hook(self._adapt_model_output),
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _adapt_model_output(self, module: nn.Module, args, output: MF2ModelOutput) -> MF2ModelOutput:
        side = self._active_side()
        corrections = self.image_corrections(image_features(output, self.active_config), side)
        adapted = dict(output)
        if "emotion_image" in corrections:
            correction = corrections["emotion_image"].to(output.emotion_embeds.dtype)
            adapted["emotion_embeds"] = output.emotion_embeds + correction
            adapted["emotion_query_output"] = output.emotion_query_output + correction[:, None]
        if "au_image" in corrections:
            correction = corrections["au_image"].to(output.au_embeds.dtype)
            adapted["au_embeds"] = output.au_embeds + correction
            adapted["au_query_output"] = output.au_query_output + correction[:, :, None]
        return MF2ModelOutput(**adapted)


def _request_hidden_states(module: nn.Module, args: tuple, kwargs: dict):
    """Forward pre-hook: the side networks read the Q-Former's per-layer states."""
    if len(args) > 2:
        args = (*args[:2], True, *args[3:])
    else:
        kwargs["output_hidden_states"] = True
    return args, kwargs


def resolve_dfn_config(config: DFNConfig, model: MF2ForFacialStateRecognition) -> DFNConfig:
    """Fill in the model-dependent defaults of `config` (branches, modalities, layer indices) and check them."""
    present = [name for name, enabled in (("emotion", model.config.use_emotion_branch),
                                          ("au", model.config.use_au_branch)) if enabled]  # fmt: skip
    if config.branches is None:
        config.branches = present
    missing = sorted(set(config.branches) - set(present))
    if missing:
        raise ValueError(f"DFN: the base model has no {missing} branch; available: {present}.")
    has_text = all(getattr(model, f"{branch}_alignment", None) is not None for branch in config.branches)
    if config.modalities is None:
        config.modalities = ["image", "text"] if has_text else ["image"]
    if "text" in config.modalities and not has_text:
        raise ValueError(
            f"DFN: text cells need the captions' path of MF2ForPreTraining; {type(model).__name__} has no text side. "
            "Use modalities=['image']."
        )
    num_qformer_layers = model.config.qformer_config.num_hidden_layers
    if config.layer_indices is None:
        config.layer_indices = default_layer_indices(num_qformer_layers, config.num_layers)
    if not all(1 <= index <= num_qformer_layers for index in config.layer_indices):
        raise ValueError(f"DFN: layer_indices {config.layer_indices} must lie in 1..{num_qformer_layers}.")
    return config


def backbone_modules(model: MF2ForFacialStateRecognition) -> list[nn.Module]:
    """The frozen modules that DFN's features come from: the image path and, for pretraining models, the caption path."""
    modules = [model.mf2]
    for name in ("emotion_alignment", "au_alignment"):
        if getattr(model, name, None) is not None:
            modules.append(getattr(model, name))
    return modules


def image_features(output: MF2ModelOutput, config: DFNConfig) -> dict[str, torch.Tensor]:
    """Base task representations and the pooled Q-Former states that the image cells read."""
    features = {}
    indices = config.layer_indices
    adapt = "image" in config.modalities
    if output.emotion_embeds is not None:
        features["emotion_embeds"] = output.emotion_embeds
        if adapt and "emotion" in config.branches:
            states = output.emotion_qformer_hidden_states
            features["emotion_image_states"] = torch.stack([states[i].mean(dim=1) for i in indices], dim=1)
    if output.au_embeds is not None:
        features["au_embeds"] = output.au_embeds
        if adapt and "au" in config.branches:
            batch, num_aus = output.au_embeds.shape[:2]
            states = output.au_qformer_hidden_states  # (B * A, Qa, H) per layer
            pooled = torch.stack([states[i].mean(dim=1) for i in indices], dim=1)
            features["au_image_states"] = pooled.view(batch, num_aus, len(indices), -1)
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


class DFNModel(PeftModel):
    """A DFN-adapted MF² model: the frozen base model plus the active adapter's side networks and head copies.

    Everything of `peft.PeftModel` applies: `save_pretrained(dir)` writes only `adapter_config.json` and
    `adapter_model.safetensors`; `DFNModel.from_pretrained(base_model, dir)` loads them onto a base model;
    `disable_adapter()` is a context manager giving the base model's outputs; `print_trainable_parameters()`.
    `forward` runs the backbone without a graph and accepts `cached_features` from `mf2.dfn.DFNFeatureCache`.

    Example:

    ```python
    >>> from mf2 import MF2ForFacialStateRecognition
    >>> from mf2.dfn import DFNConfig, get_dfn_model
    >>> model = get_dfn_model(MF2ForFacialStateRecognition.from_pretrained(path), DFNConfig())
    >>> model.print_trainable_parameters()
    >>> model(pixel_values=..., au_labels=..., emotion_labels=...).loss.backward()
    >>> model.save_pretrained("dfn-adapter")
    ```
    """

    def __init__(self, model: nn.Module, peft_config: DFNConfig, adapter_name: str = "default", **kwargs):
        from .peft_integration import register_dfn_with_peft

        register_dfn_with_peft()
        super().__init__(model, peft_config, adapter_name, **kwargs)

    @property
    def dfn_config(self) -> DFNConfig:
        """The active adapter's configuration."""
        return self.base_model.active_config

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
        cached_features: dict[str, torch.Tensor] | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> DFNOutput:
        r"""
        pixel_values, au_boxes: as in `MF2Model`; not needed with `cached_features`.
        emotion_input_ids, emotion_attention_mask, au_input_ids, au_attention_mask, au_caption_mask: captions as in
            `MF2ForPreTraining`; used only by text cells (ITC), ignored otherwise.
        au_labels (`(batch, num_aus)`), emotion_labels (`(batch,)`), *optional*: as in `MF2ForFacialStateRecognition`.
        cached_features (`dict[str, Tensor]`, *optional*): backbone features from `extract_features` or a
            `DFNFeatureCache`, replacing the backbone pass.
        output_hidden_states, return_dict: accepted for signature compatibility with the base model; the output is
            always a `DFNOutput` without hidden states.

        Returns `DFNOutput`: `loss` (weighted recognition losses, plus ITC with text cells and captions), `au_loss`,
        `emotion_loss`, `au_logits`, `emotion_logits`, `emotion_embeds`, `au_embeds`, `emo_itc`, `au_itc`.
        """
        return self.base_model(
            pixel_values=pixel_values, au_boxes=au_boxes, emotion_input_ids=emotion_input_ids,
            emotion_attention_mask=emotion_attention_mask, au_input_ids=au_input_ids,
            au_attention_mask=au_attention_mask, au_caption_mask=au_caption_mask, au_labels=au_labels,
            emotion_labels=emotion_labels, cached_features=cached_features,
        )  # fmt: skip

    def extract_features(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """Frozen-backbone features of a batch; see `DFNTuner.extract_features`."""
        return self.base_model.extract_features(*args, **kwargs)

    def enable_adapters(self) -> None:
        """Use the adapter (side networks and head copies) in the forward pass."""
        self.base_model.enable_adapter_layers()
        self._adapters_disabled = False

    def disable_adapters(self) -> None:
        """Run as the base model (original heads, no side networks) until `enable_adapters()`."""
        self.base_model.disable_adapter_layers()
        self._adapters_disabled = True

    def create_or_update_model_card(self, output_dir: str) -> None:
        """No model card: an adapter directory holds exactly `adapter_config.json` and `adapter_model.safetensors`.
        Write the card when publishing (e.g. `huggingface_hub.ModelCard`)."""


def get_dfn_model(model: nn.Module, config: DFNConfig | None = None, adapter_name: str = "default") -> DFNModel:
    """Wrap an MF² recognition or pretraining model with a new DFN adapter (frozen backbone, trainable side networks
    and head copies)."""
    if isinstance(model, PeftModel):
        raise ValueError(
            "The model already carries PEFT adapters; add another one with `model.add_adapter(name, config)`."
        )
    if getattr(model, "is_activation_checkpointing", False):
        warnings.warn(
            "Gradient checkpointing is useless under DFN (the backbone builds no graph); disabling it.", stacklevel=2
        )
        model.gradient_checkpointing_disable()
    return DFNModel(model, config if config is not None else DFNConfig(), adapter_name=adapter_name)


__all__ = [
    "DFNModel",
    "DFNOutput",
    "DFNTuner",
    "backbone_modules",
    "caption_states",
    "get_dfn_model",
    "image_features",
    "resolve_dfn_config",
]
