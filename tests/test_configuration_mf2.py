import pytest
from transformers import AutoConfig, Blip2QFormerConfig, Dinov2Config, ViTConfig

from mf2 import AU_NAMES, EMOTION_LABELS, MF2Config
from mf2.configuration_mf2 import DEFAULT_AU_THRESHOLD


def test_default_config_is_paper_size():
    config = MF2Config()
    assert isinstance(config.vision_config, ViTConfig)
    assert (config.vision_config.hidden_size, config.vision_config.patch_size, config.vision_config.image_size) == (
        768,
        16,
        224,
    )
    assert config.text_config.model_type == "bert" and config.text_config.hidden_size == 768
    assert isinstance(config.qformer_config, Blip2QFormerConfig)
    assert config.qformer_config.hidden_size == 768 and config.qformer_config.num_hidden_layers == 12
    assert config.qformer_config.encoder_hidden_size == 768
    assert config.qformer_config.use_qformer_text_input
    assert config.image_text_hidden_size == 256 and config.temperature == pytest.approx(0.07)
    assert config.au_names == list(AU_NAMES) and config.emotion_labels == list(EMOTION_LABELS)
    assert (config.au_caption_max_length, config.emotion_caption_max_length) == (169, 61)
    assert config.freeze_vision_encoder


def test_sub_configs_accept_dicts_and_round_trip(tmp_path):
    config = MF2Config(
        vision_config={"model_type": "dinov2", "hidden_size": 384, "num_attention_heads": 6, "patch_size": 14},
        text_config={"model_type": "bert", "hidden_size": 384, "vocab_size": 1000},
        qformer_config={"hidden_size": 384, "num_attention_heads": 6},
        loss_weights={"au_loss": 2.0},
    )
    assert isinstance(config.vision_config, Dinov2Config)
    assert config.qformer_config.encoder_hidden_size == 384
    assert config.qformer_config.vocab_size == 1000
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, MF2Config)
    strip = lambda d: {k: v for k, v in d.items() if k != "_name_or_path"}  # noqa: E731
    assert strip(loaded.to_dict()) == strip(config.to_dict())
    assert loaded.loss_weight("au_loss") == 2.0 and loaded.loss_weight("emo_itc") == 1.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"use_emotion_branch": False, "use_au_branch": False}, "at least one"),
        ({"vision_config": {"model_type": "bert"}}, "patch-token encoder"),
        ({"loss_weights": {"itc": 1.0}}, "unknown `loss_weights`"),
        ({"au_thresholds": [0.5] * 3}, "one per AU"),
        ({"au_thresholds": [1.5] * 12}, "probabilities"),
        ({"au_names": ["AU1", "AU1"]}, "unique"),
        ({"num_query_tokens": 0}, "num_query_tokens"),
        ({"au_caption_max_length": 1000}, "max_position_embeddings"),
        ({"emotion_reads_au_features": False, "emotion_reads_au_probabilities": True}, "set both, or neither"),
    ],
)
def test_invalid_combinations_raise_clear_errors(overrides, message):
    with pytest.raises(Exception, match=message):
        MF2Config(**overrides)


def test_au_decision_thresholds_are_the_tuned_ones_else_the_default():
    config = MF2Config()
    assert config.au_decision_thresholds == [DEFAULT_AU_THRESHOLD] * len(AU_NAMES)
    tuned = [round(0.1 + 0.05 * k, 2) for k in range(len(AU_NAMES))]
    assert MF2Config(au_thresholds=tuned).au_decision_thresholds == tuned


def test_two_labels_are_a_binary_head_and_round_trip(tmp_path):
    """`num_labels=2` is transformers' default map; MF² used to read it as "not given" (its 8 emotions), and
    transformers leaves that map out of config.json, so a binary model reloaded as 8 emotions."""
    binary = MF2Config(num_labels=2)
    assert binary.num_labels == 2 and MF2Config().num_labels == 8 and MF2Config(num_labels=3).num_labels == 3
    binary.save_pretrained(tmp_path)
    assert MF2Config.from_pretrained(tmp_path).id2label == {0: "LABEL_0", 1: "LABEL_1"}
