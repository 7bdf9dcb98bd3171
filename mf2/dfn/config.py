"""Configuration of DFN, MF²'s Decoupled Fine-tuning Network (paper §III-B, Fig. 2(c), Table VI)."""

from __future__ import annotations

from dataclasses import dataclass, field

from peft.config import PeftConfig

DFN_PEFT_TYPE = "DFN"
"""The `peft_type` string DFN registers in PEFT's mapping dicts and writes to `adapter_config.json`."""

DFN_PREFIX = "dfn_"
"""PEFT's per-method prefix (`DFNTuner.prefix`, registered with PEFT): it appears in every DFN adapter key
(`base_model.dfn_side....`) and in no MF² key."""

BRANCHES: tuple[str, ...] = ("emotion", "au")
"""MF²'s two Q-Former branches: Emo-VL (`"emotion"`, whole face) and AU-VL (`"au"`, Action Unit regions)."""

MODALITIES: tuple[str, ...] = ("image", "text")
"""The two modality paths of each branch: the image queries and the caption (training-time only)."""


@dataclass
class DFNConfig(PeftConfig):
    r"""
    Configuration of a DFN adapter: side networks that run beside each modality path of MF²'s Emo-VL and AU-VL
    branches, read the frozen backbone's Q-Former hidden states and feed a gated correction into the task
    representation. Only the side networks and `modules_to_save` (the recognition heads by default) train.

    One side network per (branch, modality) holds `num_layers` cells, so a model with both branches and both modalities
    has `4 * num_layers` cells (the paper's 4N). Cells of different modalities never share weights: that is the
    "decoupled" of the paper, as opposed to the Q-Former, whose self-attention is shared by queries and text.

    Args:
        num_layers (`int`, defaults to 7):
            Cells per side network, N (Table VI: 7). Each reads one Q-Former layer's output.
        layer_indices (`list[int]`, *optional*):
            Which Q-Former layers the cells read, as indices into the Q-Former's `hidden_states` tuple (0 is the
            embedding output, `L` the last layer). Defaults to `num_layers` layers evenly spaced over `1..L`, always
            ending at the last layer (for `L=12, N=7`: 2, 4, 6, 7, 9, 11, 12). Filled in when the adapter is attached.
        bottleneck_size (`int`, defaults to 384):
            Width of each cell's down-projection, r. A cell has `2 * H * r + r + H` weights. With MF²'s hidden size 768,
            28 cells of r=384 are 16.5M weights, 4.6% of what full fine-tuning trains.
        activation (`str`, defaults to `"relu"`):
            Non-linearity between a cell's down- and up-projection, any name of `transformers.activations.ACT2FN`
            (Table VI: ReLU).
        gate_activation (`str`, defaults to `"sigmoid"`):
            Squashes the learned per-channel gate (Table VI: Sigmoid).
        gate_scaling (`float`, defaults to 0.1):
            The side output enters the task representation as `feature + gate_scaling * act(gate) * side`
            (Table VI: gate scaling factor 0.1).
        gate_init (`float`, defaults to 0.0):
            Initial gate logit (0.0 gives sigmoid 0.5).
        branches (`list[str]`, *optional*):
            Branches that get side networks, from `("emotion", "au")`. Defaults to every branch the base model has.
        modalities (`list[str]`, *optional*):
            Modalities that get side networks, from `("image", "text")`. Defaults to both for `MF2ForPreTraining`
            (whose captions can train the text cells through ITC) and to `["image"]` for
            `MF2ForFacialStateRecognition`, which has no text side: a text cell there would never get a gradient.
        modules_to_save (`list[str]`, *optional*, defaults to `["heads"]`):
            Modules of the base model trained besides the side networks, by attribute name. They are trained as copies
            (PEFT's `ModulesToSaveWrapper`), so disabling the adapter restores the original module.
        init_weights (`bool`, defaults to `True`):
            Zero-initialise the cells' up-projections so that the adapted model starts out equal to the base model.
            `False` gives random up-projections (useful to test that an adapter changes the outputs).
        base_model_fingerprint (`str`, *optional*):
            Set by `get_dfn_model`: a hash of the base model's image path (vision encoder, queries, cross-attention) in
            float16, which `load_adapter` compares with the model it is given.
        backbone_eval_mode (`bool`, defaults to `True`):
            Keep the frozen backbone in eval mode while the model trains (no dropout in the ViT and Q-Formers). A frozen
            backbone is a fixed feature extractor; dropout there adds only noise, and the feature cache needs the
            backbone to be deterministic.
    """

    num_layers: int = field(default=7, metadata={"help": "Cells per side network, N (paper: 7)."})
    layer_indices: list[int] | None = field(
        default=None,
        metadata={
            "help": "Indices into the Q-Former `hidden_states` tuple that the cells read (0 = embeddings). Defaults to "
            "`num_layers` layers evenly spaced over 1..L and ending at the last layer."
        },
    )
    bottleneck_size: int = field(default=384, metadata={"help": "Width of a cell's down-projection, r."})
    activation: str = field(default="relu", metadata={"help": "Activation inside a cell (paper: ReLU)."})
    gate_activation: str = field(
        default="sigmoid", metadata={"help": "Activation of the learned gate (paper: Sigmoid)."}
    )
    gate_scaling: float = field(
        default=0.1, metadata={"help": "Scale of the gated side output added to the task representation (paper: 0.1)."}
    )
    gate_init: float = field(default=0.0, metadata={"help": "Initial value of the gate logits."})
    branches: list[str] | None = field(
        default=None,
        metadata={"help": "Branches with side networks, from ('emotion', 'au'); default: all the base model has."},
    )
    modalities: list[str] | None = field(
        default=None,
        metadata={
            "help": "Modalities with side networks, from ('image', 'text'); default: both for MF2ForPreTraining, "
            "['image'] for MF2ForFacialStateRecognition."
        },
    )
    modules_to_save: list[str] | None = field(
        default_factory=lambda: ["heads"],
        metadata={
            "help": "Base-model modules trained (as copies) besides the side networks; default: the recognition heads."
        },
    )
    init_weights: bool = field(
        default=True, metadata={"help": "Zero-init the up-projections, so that the adapter starts as the identity."}
    )
    backbone_eval_mode: bool = field(
        default=True, metadata={"help": "Keep the frozen backbone in eval mode (no dropout) while training."}
    )
    base_model_fingerprint: str | None = field(
        default=None,
        metadata={"help": "Set by `get_dfn_model`: the base model's image path as trained on (`base_fingerprint`)."},
    )
    au_thresholds: list[float] | None = field(
        default=None,
        metadata={
            "help": "The adapter's own per-AU decision thresholds (`load_adapter` takes them from thresholds.json); "
            "they are the model's while the adapter is active, the base model's come back when it is not."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = DFN_PEFT_TYPE
        if self.num_layers < 1:
            raise ValueError(f"DFNConfig: `num_layers` must be >= 1, got {self.num_layers}.")
        if self.bottleneck_size < 1:
            raise ValueError(f"DFNConfig: `bottleneck_size` must be >= 1, got {self.bottleneck_size}.")
        if self.layer_indices is not None:
            self.layer_indices = [int(index) for index in self.layer_indices]
            if len(self.layer_indices) != self.num_layers:
                raise ValueError(
                    f"DFNConfig: {len(self.layer_indices)} `layer_indices` for num_layers={self.num_layers}; "
                    "give one Q-Former layer per cell."
                )
        for name, allowed in (("branches", BRANCHES), ("modalities", MODALITIES)):
            value = getattr(self, name)
            if value is None:
                continue
            value = list(value)
            unknown = sorted(set(value) - set(allowed))
            if unknown or not value or len(set(value)) != len(value):
                raise ValueError(
                    f"DFNConfig: `{name}` must be a non-empty list of distinct items of {allowed}, got {value}."
                )
            setattr(self, name, [item for item in allowed if item in value])  # canonical order
        if self.modules_to_save is not None:
            self.modules_to_save = list(self.modules_to_save)
        if self.gate_scaling < 0:
            raise ValueError(f"DFNConfig: `gate_scaling` must be >= 0, got {self.gate_scaling}.")


__all__ = ["BRANCHES", "DFN_PEFT_TYPE", "DFN_PREFIX", "MODALITIES", "DFNConfig"]
