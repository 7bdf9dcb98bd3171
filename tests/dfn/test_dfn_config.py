"""DFNConfig: defaults from the paper, validation, model-dependent resolution, adapter_config.json round trip."""

import json

import pytest
from dfn_testing import build, dfn_config

from mf2 import MF2ForFacialStateRecognition, MF2ForPreTraining
from mf2.dfn import DFNConfig, default_layer_indices, get_dfn_model
from mf2.dfn.base_model import resolve_dfn_config


def test_defaults_follow_table_vi():
    config = DFNConfig()
    assert (config.num_layers, config.activation, config.gate_activation, config.gate_scaling) == (
        7,
        "relu",
        "sigmoid",
        0.1,
    )
    assert config.peft_type == "DFN"
    assert config.modules_to_save == ["heads"]


def test_every_field_is_documented():
    from dataclasses import fields

    from peft import PeftConfig

    inherited = {f.name for f in fields(PeftConfig)}
    own = [f for f in fields(DFNConfig) if f.name not in inherited]
    assert own and all(f.metadata.get("help") for f in own)


def test_default_layer_indices_end_at_the_last_layer():
    assert default_layer_indices(12, 7) == [2, 4, 6, 7, 9, 11, 12]
    assert default_layer_indices(12, 12) == list(range(1, 13))
    assert default_layer_indices(2, 1) == [2]
    with pytest.raises(ValueError, match="only 2 layers"):
        default_layer_indices(2, 7)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_layers": 0}, "num_layers"),
        ({"bottleneck_size": 0}, "bottleneck_size"),
        ({"branches": ["face"]}, "branches"),
        ({"modalities": []}, "modalities"),
        ({"num_layers": 2, "layer_indices": [1]}, "layer_indices"),
    ],
)
def test_invalid_values_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DFNConfig(**kwargs)


def test_modalities_default_to_the_base_models_sides():
    recognition = resolve_dfn_config(dfn_config(), build(MF2ForFacialStateRecognition))
    pretraining = resolve_dfn_config(dfn_config(), build(MF2ForPreTraining))
    assert recognition.modalities == ["image"] and pretraining.modalities == ["image", "text"]
    assert recognition.branches == ["emotion", "au"] and recognition.layer_indices == [1, 2]
    with pytest.raises(ValueError, match="no text side"):
        resolve_dfn_config(dfn_config(modalities=["image", "text"]), build(MF2ForFacialStateRecognition))


def test_too_many_cells_for_the_qformer_is_an_error():
    with pytest.raises(ValueError, match="only 2 layers"):
        get_dfn_model(build(MF2ForFacialStateRecognition), DFNConfig(num_layers=7))


def test_config_round_trip(tmp_path):
    config = dfn_config(branches=["au", "emotion"], gate_scaling=0.2)
    assert config.branches == ["emotion", "au"]  # canonical order
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "DFN" and saved["gate_scaling"] == 0.2
    loaded = DFNConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, DFNConfig) and loaded.to_dict() == config.to_dict()


def test_registration_is_idempotent_and_refuses_to_overwrite_all_or_nothing(monkeypatch):
    import peft
    import peft.mapping

    from mf2.dfn import DFN_PEFT_TYPE, DFNRegistrationError, DFNTuner, is_dfn_registered, register_dfn_with_peft

    register_dfn_with_peft()  # again: a no-op
    assert is_dfn_registered() and peft.PEFT_TYPE_TO_CONFIG_MAPPING[DFN_PEFT_TYPE] is DFNConfig
    assert peft.mapping.PEFT_TYPE_TO_PREFIX_MAPPING[DFN_PEFT_TYPE] == DFNTuner.prefix
    monkeypatch.setitem(peft.mapping.PEFT_TYPE_TO_PREFIX_MAPPING, DFN_PEFT_TYPE, "other_")
    monkeypatch.delitem(peft.PEFT_TYPE_TO_TUNER_MAPPING, DFN_PEFT_TYPE)
    with pytest.raises(DFNRegistrationError) as error:
        register_dfn_with_peft()
    assert error.value.registered == "other_" and not is_dfn_registered()  # the tuner entry was not written either
