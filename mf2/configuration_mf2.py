"""Configuration of MF², the Multilevel Multimodal Face Foundation model."""

from typing import Any, ClassVar

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, Blip2QFormerConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

AU_NAMES: tuple[str, ...] = (
    "AU1",
    "AU2",
    "AU4",
    "AU6",
    "AU7",
    "AU10",
    "AU12",
    "AU15",
    "AU23",
    "AU24",
    "AU25",
    "AU26",
)
"""The 12 Action Units of Aff-Wild2 / MFA, in the order every tensor of the package uses."""

EMOTION_LABELS: tuple[str, ...] = (
    "neutral",
    "anger",
    "disgust",
    "fear",
    "happiness",
    "sadness",
    "surprise",
    "other",
)
"""The 8 emotion classes of MFA, in class-index order."""

LOSS_NAMES: tuple[str, ...] = (
    "emo_itc",
    "emo_itm",
    "emo_itg",
    "au_itc",
    "au_itm",
    "au_itg",
    "au_loss",
    "emotion_loss",
)
"""Every loss term of `MF2ForPreTraining`; `MF2Config.loss_weights` is keyed by these names."""

DEFAULT_AU_THRESHOLD = 0.5
"""Decision threshold of an AU probability when the config stores no tuned `au_thresholds`."""

# Vision encoders from transformers whose output is `[prefix tokens; patch grid]`, which the AU pooling needs.
SUPPORTED_VISION_MODEL_TYPES: tuple[str, ...] = ("vit", "dinov2", "dinov2_with_registers", "deit")


@strict
class MF2Config(PreTrainedConfig):
    r"""
    Configuration of an MF² model: a vision encoder, two BLIP-2 Q-Former branches (Emo-VL over the whole face and
    AU-VL over landmark-located Action Unit regions) whose text side follows a BERT-family text encoder, and the AU
    and emotion recognisers. The defaults give the paper's size: ViT-B/16 at 224 px, BERT-base, and BERT-base-sized
    Q-Formers.

    vision_config (`dict` or `PreTrainedConfig`, *optional*):
        Any transformers vision encoder that yields patch tokens (`vit` by default, `dinov2` works too).
    text_config (`dict` or `PreTrainedConfig`, *optional*):
        BERT-family text encoder. Its vocabulary is the Q-Formers' vocabulary, and `MF2ForPreTraining.from_encoders`
        initialises the Q-Formers from its weights, as BLIP-2 does.
    qformer_config (`dict` or `Blip2QFormerConfig`, *optional*):
        Configuration shared by both Q-Formers. `encoder_hidden_size`, `vocab_size` and `pad_token_id` are taken from
        the vision and text configs; `use_qformer_text_input` is always on (MF² aligns captions through it).
    num_query_tokens (`int`, *optional*, defaults to 32):
        Learned queries of the Emo-VL Q-Former.
    num_au_query_tokens (`int`, *optional*, defaults to 8):
        Learned queries of the AU-VL Q-Former, shared by all AUs and offset by a learned per-AU embedding.
    au_roi_size (`int`, *optional*, defaults to 3):
        Each AU box is pooled from the patch-token grid into `au_roi_size x au_roi_size` tokens (RoIAlign).
    image_text_hidden_size (`int`, *optional*, defaults to 256):
        Size of the ITC projection space.
    temperature (`float`, *optional*, defaults to 0.07):
        Initial value of each branch's learnable ITC temperature.
    au_names (`list[str]`, *optional*):
        Names of the recognised AUs, defaults to the 12 MFA AUs.
    au_thresholds (`list[float]`, *optional*):
        Per-AU decision thresholds on probabilities (tuned on validation data); 0.5 each when unset.
    au_caption_max_length (`int`, *optional*, defaults to 169):
        Maximum tokens of an AU caption.
    emotion_caption_max_length (`int`, *optional*, defaults to 61):
        Maximum tokens of an emotion caption.
    use_emotion_branch (`bool`, *optional*, defaults to `True`):
        Build Emo-VL. Switch off for the paper's "w/o Emo-VL" ablation.
    use_au_branch (`bool`, *optional*, defaults to `True`):
        Build AU-VL. Switch off for the paper's "w/o AU-VL" ablation.
    freeze_vision_encoder (`bool`, *optional*, defaults to `True`):
        Keep the image encoder frozen (no gradient), as in BLIP-2 pretraining.
    vision_trainable_layers (`int`, *optional*, defaults to 0):
        With `freeze_vision_encoder`, the top this many encoder blocks (and the encoder's final norm) still train.
        The tokens entering them never change during training, so `mf2.training.vision_cache.VisionTokenCache` computes
        them once and training runs only the top blocks (`MF2Model.forward(vision_tokens=...)`). 0 caches the encoder's
        output.
    emotion_reads_au_features (`bool`, *optional*, defaults to `True`):
        The emotion recogniser reads the mean AU-VL feature beside the Emo-VL feature. Off, it reads Emo-VL alone,
        so training the AU side never moves the emotion predictions (the shipped model's recipe relies on it).
    emotion_reads_au_probabilities (`bool`, *optional*, defaults to `False`):
        The emotion recogniser also reads the AU recogniser's probabilities (one per AU, after the features): which
        AUs are active is what tells posed emotions apart, and the mean AU-VL feature blurs it. They are detached, so
        an emotion loss never trains the AU recogniser. Needs `emotion_reads_au_features` or a model without Emo-VL.
    trained (`bool`, *optional*, defaults to `False`):
        Whether the recognisers were trained. Set by the training scripts when they save; results report it as
        `model_trained`. It travels with the config, so a re-saved untrained model still says it is untrained.
    model_name (`str`, *optional*), model_version (`str`, *optional*):
        Name and version of a published checkpoint (the shipped default model is `mf2-base`); results report both.
    training_data (`list[str]`, *optional*):
        The datasets the checkpoint was trained on, for model cards and results.
    loss_weights (`dict[str, float]`, *optional*):
        Weight of each loss term (keys from `LOSS_NAMES`); missing keys weigh 1.0.
    itc_label_smoothing (`float`, *optional*, defaults to 0.1):
        Label smoothing of the ITC cross-entropy (BLIP-2 uses 0.1).
    itg_label_smoothing (`float`, *optional*, defaults to 0.1):
        Label smoothing of the ITG cross-entropy (BLIP-2 uses 0.1).
    classifier_dropout (`float`, *optional*, defaults to 0.1):
        Dropout before the recognisers.
    initializer_range (`float`, *optional*, defaults to 0.02):
        Standard deviation of the initialisation of MF²'s own weights.

    Example:

    ```python
    >>> from mf2 import MF2Config, MF2ForPreTraining
    >>> config = MF2Config()  # paper size: ViT-B/16, BERT-base, BERT-base-sized Q-Formers
    >>> model = MF2ForPreTraining(config)
    ```
    """

    model_type = "mf2"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="vit"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="bert"),
        "qformer_config": Blip2QFormerConfig,
    }
    # Trainer's prediction step ignores these output fields, so predictions are just (au_logits, emotion_logits):
    # `logits` repeats `emotion_logits` (the image-classification name), the rest are features and per-layer outputs.
    keys_to_ignore_at_inference: ClassVar[list[str]] = [
        *LOSS_NAMES,
        "image_embeds",
        "emotion_embeds",
        "au_embeds",
        "logits",
        "hidden_states",
        "attentions",
        *(
            f"{branch}_qformer_{kind}"
            for branch in ("emotion", "au")
            for kind in ("hidden_states", "attentions", "cross_attentions")
        ),
    ]

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    qformer_config: dict | PreTrainedConfig | None = None
    num_query_tokens: int = 32
    num_au_query_tokens: int = 8
    au_roi_size: int = 3
    image_text_hidden_size: int = 256
    temperature: float = 0.07
    au_names: list[str] | None = None
    au_thresholds: list[float] | None = None
    au_caption_max_length: int = 169
    emotion_caption_max_length: int = 61
    use_emotion_branch: bool = True
    use_au_branch: bool = True
    freeze_vision_encoder: bool = True
    vision_trainable_layers: int = 0
    emotion_reads_au_features: bool = True
    emotion_reads_au_probabilities: bool = False
    trained: bool = False
    model_name: str | None = None
    model_version: str | None = None
    training_data: list[str] | None = None
    loss_weights: dict[str, float] | None = None
    itc_label_smoothing: float = 0.1
    itg_label_smoothing: float = 0.1
    classifier_dropout: float = 0.1
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        # The 8 emotions unless labels are given: `num_labels=2` is a binary head, not transformers' default.
        labels_given = self.id2label is not None or kwargs.get("num_labels") is not None
        super().__post_init__(**kwargs)
        if self.au_names is None:
            self.au_names = list(AU_NAMES)
        if not labels_given:
            self.id2label = dict(enumerate(EMOTION_LABELS))
        self.label2id = {name: index for index, name in self.id2label.items()}
        # The Q-Former reads the vision tokens and speaks the text encoder's vocabulary.
        self.qformer_config.encoder_hidden_size = self.vision_config.hidden_size
        self.qformer_config.vocab_size = self.text_config.vocab_size
        self.qformer_config.pad_token_id = getattr(self.text_config, "pad_token_id", 0) or 0
        # ITC/ITM/ITG run captions through the Q-Former, so its text FFN always exists in the config;
        # `MF2ForFacialStateRecognition` leaves it out of the image-only model it builds.
        self.qformer_config.use_qformer_text_input = True

    def to_diff_dict(self) -> dict[str, Any]:
        """As transformers writes it, with the labels always: transformers leaves out a map equal to its default
        (`LABEL_0`, `LABEL_1`), which MF² would read back as its 8 emotions."""
        return {**super().to_diff_dict(), "id2label": self.id2label, "label2id": self.label2id}

    @property
    def num_aus(self) -> int:
        return len(self.au_names)

    @property
    def au_decision_thresholds(self) -> list[float]:
        """The per-AU thresholds in use, one per AU: the tuned `au_thresholds`, else `DEFAULT_AU_THRESHOLD` each.

        The one place that decides it: the pipeline, `mf2 analyze` and the training metrics all read it here.
        """
        if self.au_thresholds:
            return [float(value) for value in self.au_thresholds]
        return [DEFAULT_AU_THRESHOLD] * self.num_aus

    @property
    def emotion_labels(self) -> list[str]:
        return [self.id2label[index] for index in range(len(self.id2label))]

    def loss_weight(self, name: str) -> float:
        """Weight of the loss term `name` (one of `LOSS_NAMES`)."""
        return float((self.loss_weights or {}).get(name, 1.0))

    def validate_mf2(self):
        """Reject combinations that cannot build a working model, with a message that says what to change."""
        if not (self.use_emotion_branch or self.use_au_branch):
            raise ValueError("MF2Config: at least one of `use_emotion_branch` and `use_au_branch` must be True.")
        vision_type = getattr(self.vision_config, "model_type", None)
        if vision_type not in SUPPORTED_VISION_MODEL_TYPES:
            raise ValueError(
                f"MF2Config: vision_config.model_type={vision_type!r} is not supported; MF² needs a patch-token "
                f"encoder, one of {SUPPORTED_VISION_MODEL_TYPES}."
            )
        if not hasattr(self.text_config, "vocab_size"):
            raise ValueError("MF2Config: text_config must be a BERT-family config with a `vocab_size`.")
        if len(set(self.au_names)) != len(self.au_names) or not self.au_names:
            raise ValueError(f"MF2Config: `au_names` must be a non-empty list of unique names, got {self.au_names}.")
        if self.au_thresholds is not None and len(self.au_thresholds) != len(self.au_names):
            raise ValueError(
                f"MF2Config: {len(self.au_thresholds)} `au_thresholds` for {len(self.au_names)} AUs; give one per AU."
            )
        if self.au_thresholds is not None and not all(0.0 < t < 1.0 for t in self.au_thresholds):
            raise ValueError(f"MF2Config: `au_thresholds` are probabilities in (0, 1), got {self.au_thresholds}.")
        layers = getattr(self.vision_config, "num_hidden_layers", 0)
        if not 0 <= self.vision_trainable_layers <= layers:
            raise ValueError(
                f"MF2Config: vision_trainable_layers={self.vision_trainable_layers} must lie in 0..{layers} "
                "(the vision encoder's num_hidden_layers)."
            )
        if self.vision_trainable_layers and not self.freeze_vision_encoder:
            raise ValueError(
                "MF2Config: vision_trainable_layers only applies with freeze_vision_encoder=True (with it False, "
                "every block trains already); set one of the two."
            )
        if self.emotion_reads_au_probabilities and self.use_emotion_branch and not self.emotion_reads_au_features:
            raise ValueError(
                "MF2Config: emotion_reads_au_probabilities=True needs emotion_reads_au_features=True (the recogniser "
                "reads the AU-VL feature and the AU probabilities together); set both, or neither."
            )
        unknown = set(self.loss_weights or {}) - set(LOSS_NAMES)
        if unknown:
            raise ValueError(f"MF2Config: unknown `loss_weights` keys {sorted(unknown)}; valid keys: {LOSS_NAMES}.")
        for name in ("num_query_tokens", "num_au_query_tokens", "au_roi_size", "image_text_hidden_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"MF2Config: `{name}` must be >= 1, got {getattr(self, name)}.")
        if not self.temperature > 0:
            raise ValueError(f"MF2Config: `temperature` must be > 0, got {self.temperature}.")
        longest = max(self.au_caption_max_length, self.emotion_caption_max_length)
        if longest > self.qformer_config.max_position_embeddings:
            raise ValueError(
                f"MF2Config: caption maximum length {longest} exceeds the Q-Former's "
                f"max_position_embeddings={self.qformer_config.max_position_embeddings}."
            )


__all__ = ["AU_NAMES", "DEFAULT_AU_THRESHOLD", "EMOTION_LABELS", "LOSS_NAMES", "MF2Config"]
