"""DFN's PEFT tuner (`DFNTuner`, the `BaseTuner` PEFT's mappings point at for `peft_type="DFN"`), as PEFT's
`tuners/lora/model.py` holds `LoraModel`: it owns the side networks of every adapter, freezes the base model, and
computes the adapted forward pass on the backbone's features (`mf2.dfn.features`). The user-facing `PeftModel`
(`DFNModel`) is `mf2.dfn.peft_model`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, _delete_auxiliary_adapter
from peft.tuners.tuners_utils import set_adapter as _peft_set_adapter
from peft.utils.other import AuxiliaryTrainingWrapper, set_additional_trainable_modules
from torch import nn

from ..modeling_mf2 import MF2ModelOutput, MF2RecognitionOutput, MF2RecognitionPreTrainedModel, itc_loss, weighted_loss
from .base_model import base_fingerprint, check_modules_to_save, resolve_dfn_config
from .config import BRANCHES, DFN_PREFIX, DFNConfig
from .features import DFNFeatures, backbone_modules, extract_features, image_features
from .layer import DFNSideNetwork

# Short loss-name prefixes used by MF2's LOSS_NAMES.
_LOSS_PREFIX = {"emotion": "emo", "au": "au"}


@dataclass
class DFNOutput(MF2RecognitionOutput):
    """Output of a DFN-adapted MF²: the fields of `MF2RecognitionOutput`, then the ITC terms that train the text cells.

    Args:
        emo_itc (`torch.FloatTensor` of shape `()`, *optional*, returned with Emo-VL text cells and emotion captions):
            Emo-VL's image-text contrastive loss on the adapted features.
        au_itc (`torch.FloatTensor` of shape `()`, *optional*, returned with AU-VL text cells and AU captions):
            AU-VL's image-text contrastive loss on the adapted features, over the (image, AU) pairs with a caption.
    """

    emo_itc: torch.FloatTensor | None = None
    au_itc: torch.FloatTensor | None = None


def side_networks(config: DFNConfig, hidden_size: int) -> nn.ModuleDict:
    """One adapter's side networks, `<branch>_<modality>` each, initialised as `config` says."""
    side = nn.ModuleDict()
    for branch in config.branches:
        for modality in config.modalities:
            network = DFNSideNetwork(
                hidden_size,
                config.num_layers,
                config.bottleneck_size,
                config.activation,
                config.gate_activation,
                config.gate_scaling,
                config.gate_init,
            )
            network.reset_parameters(config.init_weights)
            side[f"{branch}_{modality}"] = network
    return side


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

    prefix: str = DFN_PREFIX
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
        if not isinstance(model, MF2RecognitionPreTrainedModel):
            raise TypeError(
                "DFN adapts MF² recognition models (MF2ForFacialStateRecognition or MF2ForPreTraining), "
                f"got {type(model).__name__}."
            )
        config = self.peft_config[adapter_name]
        if not isinstance(config, DFNConfig):
            raise TypeError(f"DFNTuner needs a DFNConfig, got {type(config).__name__}.")
        self._check_new_adapter_config(config)
        resolve_dfn_config(config, model)
        check_modules_to_save(config.modules_to_save, model)
        if config.base_model_fingerprint is None and not config.inference_mode:  # `get_peft_model` too, not only ours
            config.base_model_fingerprint = base_fingerprint(model)
        # PEFT's contract: adding an adapter leaves the trainability of the adapters already there as it was (the
        # first one freezes the base model below).
        first = "dfn_side" not in self._modules or not len(self.dfn_side)
        earlier = {} if first else {id(parameter): parameter.requires_grad for parameter in self.parameters()}
        if first:
            self._base_au_thresholds = model.config.au_thresholds

        side = side_networks(config, model.config.qformer_config.hidden_size)
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
        set_additional_trainable_modules(
            model=model,
            peft_config=config,
            model_config=BaseTuner.get_model_config(model),
            adapter_name=adapter_name,
            activate_adapter=adapter_name in self.active_adapters,
        )
        for parameter in self.parameters():
            if id(parameter) in earlier:
                parameter.requires_grad_(earlier[id(parameter)])
        side.requires_grad_(adapter_name in self.active_adapters and not config.inference_mode)

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
        self.apply_au_thresholds()
        _peft_set_adapter(self.model, names[0], inference_mode=inference_mode, layer_cls=self.tuner_layer_cls)

    def _enable_adapter_layers(self, enabled: bool = True) -> None:
        self._dfn_disabled = not enabled
        super()._enable_adapter_layers(enabled)  # the ModulesToSaveWrapper switch between copy and original
        self.apply_au_thresholds()

    def apply_au_thresholds(self) -> None:
        """The model's AU thresholds: the active adapter's own (`DFNConfig.au_thresholds`), else the base model's."""
        own = None if getattr(self, "_dfn_disabled", False) else self.active_config.au_thresholds
        self.model.config.au_thresholds = own if own is not None else self._base_au_thresholds

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name not in self.dfn_side:
            raise ValueError(f"Adapter {adapter_name!r} does not exist.")
        del self.peft_config[adapter_name]
        del self.dfn_side[adapter_name]
        remaining = list(self.dfn_side)
        new_active = remaining[:1] or None
        was_active = adapter_name in self.active_adapters
        _delete_auxiliary_adapter(self.model, adapter_name=adapter_name, new_active_adapters=new_active)
        self.active_adapter = new_active[0] if new_active else []
        if was_active and new_active:  # as PEFT's tuners: say so, and make the new one whole (side networks too)
            warnings.warn(
                f"Adapter {adapter_name!r} was active and is deleted; {new_active[0]!r} is active now.", stacklevel=2
            )
            self.set_adapter(new_active[0])

    def train(self, mode: bool = True):
        """Train mode for the adapter and heads; the frozen backbone stays in eval mode (`backbone_eval_mode`)."""
        super().train(mode)
        if mode and self._modules.get("dfn_side") and self.active_config.backbone_eval_mode:
            for module in backbone_modules(self.model):
                module.eval()
        return self

    # ------------------------------------------------------------------------------------------- forward
    def extract_features(self, *args, **kwargs) -> DFNFeatures:
        """Run the frozen backbone once and return what the active adapter's side networks and heads need, per
        example: `mf2.dfn.features.extract_features` with this tuner's model and active config, then the same
        arguments (`pixel_values`, `au_boxes`, the captions)."""
        return extract_features(self.model, self.active_config, *args, **kwargs)

    def image_corrections(self, features: DFNFeatures, side: nn.ModuleDict) -> dict[str, torch.Tensor]:
        """Gated corrections of the image paths present in `features`, keyed by side network (`"emotion_image"`,
        `"au_image"`)."""
        corrections = {}
        for branch in BRANCHES:
            name, states = f"{branch}_image", features.branch(branch, "image_states")
            if name in side and states is not None:
                corrections[name] = side[name](states)
        return corrections

    def forward_from_features(
        self,
        features: DFNFeatures | Mapping[str, torch.Tensor],
        au_labels: torch.Tensor | None = None,
        emotion_labels: torch.Tensor | None = None,
    ) -> DFNOutput:
        """Side networks, recognition heads and losses on backbone features (fresh from `extract_features` or cached,
        where a collated cache batch is a plain dict of the `DFNFeatures` fields)."""
        model = self.model
        features = DFNFeatures.from_mapping(features)
        side = self._active_side()
        corrections = self.image_corrections(features, side) if side is not None else {}
        emotion_embeds, au_embeds = features.emotion_embeds, features.au_embeds
        if "emotion_image" in corrections:
            emotion_embeds = emotion_embeds + corrections["emotion_image"].to(emotion_embeds.dtype)
        if "au_image" in corrections:
            au_embeds = au_embeds + corrections["au_image"].to(au_embeds.dtype)
        au_logits, emotion_logits = model.heads(emotion_embeds, au_embeds)
        losses = model.recognition_losses(au_logits, emotion_logits, au_labels, emotion_labels)

        used = set(corrections)
        for branch in BRANCHES:
            if features.branch(branch, "image_proj") is not None:
                term = self._itc(branch, features, corrections, side)
                if side is not None and f"{branch}_text" in side:
                    used.add(f"{branch}_text")
                if term is not None:
                    losses[f"{_LOSS_PREFIX[branch]}_itc"] = term

        loss = weighted_loss(losses, model.config)
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

    def _itc(self, branch: str, features: DFNFeatures, corrections, side) -> torch.Tensor | None:
        """ITC between the adapted image queries and the adapted caption of one branch (paper eq. 3)."""
        model = self.model
        alignment = model.text_alignment(branch)
        image = features.branch(branch, "image_proj")
        correction = corrections.get(f"{branch}_image")
        if correction is not None:
            # vision_proj(q + c) = vision_proj(q) + W c: the projection of the frozen queries can be cached.
            image = image + F.linear(correction.to(image.dtype), alignment.vision_proj.weight).unsqueeze(-2)
        text = features.branch(branch, "text_cls")
        if side is not None and f"{branch}_text" in side:
            text = text + side[f"{branch}_text"](features.branch(branch, "text_states")).to(text.dtype)
        tokens = features.branch(branch, "caption_tokens")
        present = (tokens >= 0).any(dim=-1)  # an all-padding row (padding is -1) has no caption
        if branch == "au":
            present = present & features.au_caption_present.bool()
        image, text, tokens = image[present], text[present], tokens[present]
        if tokens.shape[0] == 0:
            return None
        positives = (tokens[:, None, :] == tokens[None, :, :]).all(dim=-1)
        loss, _ = itc_loss(
            F.normalize(image, dim=-1),
            F.normalize(alignment.text_proj(text), dim=-1),
            alignment.clamped_temperature,
            positives,
            model.config.itc_label_smoothing,
        )
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
        cached_features: DFNFeatures | Mapping[str, torch.Tensor] | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> DFNOutput | tuple[torch.Tensor, ...]:
        r"""The adapted recognition forward pass (`DFNModel.forward` is this method).

        pixel_values, au_boxes: as in `MF2Model`; not needed with `cached_features`.
        emotion_input_ids, emotion_attention_mask, au_input_ids, au_attention_mask, au_caption_mask: captions as in
            `MF2ForPreTraining`; used only by text cells (ITC), ignored otherwise.
        au_labels (`(batch, num_aus)`), emotion_labels (`(batch,)`), *optional*: as in `MF2ForFacialStateRecognition`.
        cached_features (`DFNFeatures` or a dict of its fields, *optional*): backbone features from
            `extract_features` or a `DFNFeatureCache`, replacing the backbone pass.
        output_hidden_states: accepted for signature compatibility with the base model; the output never carries
            hidden states.
        return_dict (`bool`, *optional*): `False` returns `DFNOutput.to_tuple()` (the fields that are not None), as
            transformers models do; defaults to the base model's `config.return_dict`.

        Returns `DFNOutput`: `loss` (weighted recognition losses, plus ITC with text cells and captions), `au_loss`,
        `emotion_loss`, `au_logits`, `emotion_logits`, `emotion_embeds`, `au_embeds`, `emo_itc`, `au_itc`.
        """
        if cached_features is None:
            if pixel_values is None:
                raise ValueError("DFN forward needs `pixel_values` or `cached_features`.")
            cached_features = self.extract_features(
                pixel_values,
                au_boxes,
                emotion_input_ids,
                emotion_attention_mask,
                au_input_ids,
                au_attention_mask,
                au_caption_mask,
            )
        output = self.forward_from_features(cached_features, au_labels, emotion_labels)
        return output if (self.model.config.return_dict if return_dict is None else return_dict) else output.to_tuple()

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


__all__ = ["DFNOutput", "DFNTuner"]
