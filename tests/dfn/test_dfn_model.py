"""DFNModel: frozen backbone, identity at initialisation, enable/disable, adapter-only save and exact reload."""

import json

import pytest
import torch
from dfn_testing import build, caption_batch, dfn_config, image_batch, state_copy
from peft import PeftModel, get_peft_model
from safetensors import safe_open

from mf2 import MF2ForFacialStateRecognition, MF2ForPreTraining
from mf2.dfn import DFNModel, DFNOutput, get_dfn_model


def assert_same_outputs(first, second):
    assert torch.equal(first.au_logits, second.au_logits)
    assert torch.equal(first.emotion_logits, second.emotion_logits)
    assert torch.equal(first.loss, second.loss)


def train_steps(model, batch, steps: int = 3, lr: float = 1e-2):
    """AdamW with weight decay over *every* parameter, frozen ones included: frozen weights must still not move."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    model.train()
    for _ in range(steps):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def test_identity_at_initialisation():
    base = build(MF2ForFacialStateRecognition).eval()
    batch = image_batch(base.config)
    expected = base(**batch)
    model = get_dfn_model(base, dfn_config())
    output = model(**batch)
    assert isinstance(output, DFNOutput)
    assert_same_outputs(output, expected)


@pytest.mark.parametrize("model_class", [MF2ForFacialStateRecognition, MF2ForPreTraining])
def test_backbone_bit_identical_after_adamw_steps(model_class):
    base = build(model_class)
    before = state_copy(base)
    model = get_dfn_model(base, dfn_config())
    side_before = state_copy(model.base_model.dfn_side)
    batch = caption_batch(base.config) if model_class is MF2ForPreTraining else image_batch(base.config)
    train_steps(model, batch)
    after = base.state_dict()
    # `heads` is now PEFT's wrapper; its original module is part of the backbone and must not move either.
    after = {name.replace("heads.original_module.", "heads."): value for name, value in after.items()}
    assert set(before) <= set(after)
    assert all(torch.equal(before[name], after[name]) for name in before)
    # ... while the side networks and the head copies did train.
    assert any(
        not torch.equal(value, model.base_model.dfn_side.state_dict()[name]) for name, value in side_before.items()
    )
    assert not torch.equal(base.heads.modules_to_save["default"].au_weight, before["heads.au_weight"])


def test_no_gradient_reaches_the_backbone():
    base = build(MF2ForPreTraining)
    model = get_dfn_model(base, dfn_config())
    model.train()
    model(**caption_batch(base.config)).loss.backward()
    backbone = [p for name, p in base.named_parameters() if "modules_to_save" not in name]
    assert all(p.grad is None and not p.requires_grad for p in backbone)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)
    # The text cells get a real gradient from ITC on the adapted caption features.
    text_cells = model.base_model.dfn_side["default"]["emotion_text"]
    assert text_cells.cells[0].up.weight.grad.abs().sum() > 0


def test_every_trainable_parameter_joins_the_graph_without_captions():
    """Recognition-only batches leave the text cells unused; they must still get a (zero) gradient for DDP."""
    base = build(MF2ForPreTraining)
    model = get_dfn_model(base, dfn_config())
    model.train()
    model(**image_batch(base.config)).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_recognition_model_gets_image_cells_only():
    model = get_dfn_model(build(MF2ForFacialStateRecognition), dfn_config())
    assert sorted(model.base_model.dfn_side["default"]) == ["au_image", "emotion_image"]
    model = get_dfn_model(build(MF2ForPreTraining), dfn_config())
    assert sorted(model.base_model.dfn_side["default"]) == ["au_image", "au_text", "emotion_image", "emotion_text"]


def test_disable_restores_base_outputs_after_training():
    base = build(MF2ForFacialStateRecognition)
    batch = image_batch(base.config)
    expected = base.eval()(**batch)
    model = get_dfn_model(base, dfn_config())
    train_steps(model, batch)
    adapted = model(**batch)
    assert not torch.equal(adapted.au_logits, expected.au_logits)
    with model.disable_adapter():
        assert_same_outputs(model(**batch), expected)
    assert_same_outputs(model(**batch), adapted)
    model.disable_adapters()
    assert_same_outputs(model(**batch), expected)
    model.enable_adapters()
    assert_same_outputs(model(**batch), adapted)


def test_backbone_stays_in_eval_mode_while_training():
    model = get_dfn_model(build(MF2ForPreTraining), dfn_config())
    model.train()
    assert not model.base_model.model.mf2.training and not model.base_model.model.emotion_alignment.training
    assert model.base_model.dfn_side.training and model.base_model.model.heads.training


@pytest.mark.parametrize("model_class", [MF2ForFacialStateRecognition, MF2ForPreTraining])
def test_save_writes_only_the_adapter_and_reloads_exactly(tmp_path, model_class):
    base = build(model_class)
    batch = caption_batch(base.config) if model_class is MF2ForPreTraining else image_batch(base.config)
    model = get_dfn_model(base, dfn_config())
    train_steps(model, batch)
    expected = model(**batch)
    model.save_pretrained(tmp_path)

    assert sorted(path.name for path in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == "DFN"
    with safe_open(tmp_path / "adapter_model.safetensors", framework="pt") as file:
        names = list(file.keys())
    assert all(name.startswith(("base_model.dfn_side.", "base_model.model.heads.")) for name in names)
    assert not any(part in name for name in names for part in ("mf2.", "qformer", "vision_model", "alignment"))

    reloaded = DFNModel.from_pretrained(build(model_class), tmp_path)
    assert isinstance(reloaded, DFNModel)
    assert_same_outputs(reloaded(**batch), expected)


def test_peft_entry_points_interoperate(tmp_path):
    """`get_peft_model` / `PeftModel.from_pretrained` build plain PeftModels whose forward (through hooks) matches."""
    base = build(MF2ForFacialStateRecognition)
    batch = image_batch(base.config)
    model = get_peft_model(base, dfn_config(init_weights=False))
    assert type(model) is PeftModel
    model.eval()
    hooked = model(**batch)
    model.save_pretrained(tmp_path)

    native = DFNModel.from_pretrained(build(MF2ForFacialStateRecognition), tmp_path)
    assert_same_outputs(native(**batch), hooked)
    plain = PeftModel.from_pretrained(build(MF2ForFacialStateRecognition), tmp_path, low_cpu_mem_usage=True)
    assert_same_outputs(plain(**batch), hooked)
    with plain.disable_adapter():
        assert_same_outputs(plain(**batch), build(MF2ForFacialStateRecognition).eval()(**batch))


def test_print_trainable_parameters(capsys):
    model = get_dfn_model(build(MF2ForFacialStateRecognition), dfn_config())
    model.print_trainable_parameters()
    printed = capsys.readouterr().out
    trainable, total = model.get_nb_trainable_parameters()
    # 2 side networks x 2 cells x (32*8 + 8 + 8*32 + 32) + 2 gates of 32, plus one copy of the heads.
    heads = sum(p.numel() for p in model.base_model.model.heads.original_module.parameters())
    assert trainable == 2 * 2 * (32 * 8 + 8 + 8 * 32 + 32) + 2 * 32 + heads
    assert printed.startswith(f"trainable params: {trainable:,} || all params: {total:,} || trainable%:")


def test_merge_is_refused_and_unload_keeps_the_trained_heads_as_peft_does():
    """`unload()` removes the side networks; the heads (`modules_to_save`) stay the adapter's trained copies, PEFT's
    rule for every tuner (docs: mf2/dfn/README.md). The base model's own heads are what `disable_adapter()` runs."""
    base = build(MF2ForFacialStateRecognition)
    model = get_dfn_model(base, dfn_config())
    with pytest.raises(ValueError, match="cannot be merged"):
        model.merge_and_unload()
    trained = model.base_model.model.heads.modules_to_save["default"]
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(0.5)  # as training leaves them
    unloaded = model.unload()
    assert unloaded is base and unloaded.heads is trained
    assert not any("dfn_side" in name for name, _ in unloaded.named_modules())


def test_images_without_a_caption_are_left_out_of_dfn_itc():
    base = build(MF2ForPreTraining)
    model = get_dfn_model(base, dfn_config()).eval()
    batch = caption_batch(base.config)
    masked = dict(batch, emotion_attention_mask=batch["emotion_attention_mask"].clone())
    masked["emotion_attention_mask"][1] = 0  # image 1 has no emotion caption
    subset = {key: value[[0, 2, 3]] for key, value in batch.items()}
    with torch.no_grad():
        with_gap, without = model(**masked), model(**subset)
    assert with_gap.emo_itc.item() == pytest.approx(without.emo_itc.item(), rel=1e-5)


def test_an_adapter_with_text_cells_runs_on_the_recogniser_to_the_same_outputs(tmp_path):
    """Trained on MF2ForPreTraining with text cells (its default where the checkpoint has text weights), an adapter is
    used through the recogniser (pipeline, mf2 evaluate, load_dfn_model), which has no text side and never reads them."""
    from tiny import tiny_config

    from mf2.dfn import DFNConfig, load_adapter

    torch.manual_seed(0)
    MF2ForPreTraining(tiny_config()).save_pretrained(tmp_path / "base")
    adapted = get_dfn_model(
        MF2ForPreTraining.from_pretrained(tmp_path / "base"),
        DFNConfig(num_layers=2, bottleneck_size=8, init_weights=False, modalities=["image", "text"]),
    ).eval()
    adapted.save_pretrained(tmp_path / "adapter")
    recogniser = load_adapter(MF2ForFacialStateRecognition.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = adapted(pixel_values=pixels), recogniser(pixel_values=pixels)
    assert torch.equal(expected.au_logits, got.au_logits) and torch.equal(expected.emotion_logits, got.emotion_logits)


def test_a_module_to_save_inside_the_frozen_backbone_is_refused():
    """The backbone runs without a graph under DFN: a copy there would be counted trainable and never train."""
    model = build(MF2ForFacialStateRecognition)
    with pytest.raises(ValueError, match="lie in the frozen backbone"):
        get_dfn_model(model, dfn_config(modules_to_save=["heads", "mf2.emotion_branch.qformer.layernorm"]))


def test_adding_loading_or_deleting_an_adapter_keeps_the_others_trainability(tmp_path):
    """PEFT's contract: another adapter does not change which parameters of the ones already there train."""
    model = get_dfn_model(build(MF2ForFacialStateRecognition), dfn_config())
    model.save_pretrained(tmp_path / "reference")
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    model.load_adapter(str(tmp_path / "reference"), adapter_name="reference")  # for inference
    model.add_adapter("other", dfn_config())
    assert {name for name, parameter in model.named_parameters() if parameter.requires_grad} == trainable
    model(**image_batch(model.config)).loss.backward()  # the active adapter still trains
    with pytest.warns(UserWarning, match="'default' was active and is deleted; 'reference' is active now"):
        model.delete_adapter("default")
    sides = [p for name, p in model.named_parameters() if "dfn_side.reference." in name]
    assert sides and all(parameter.requires_grad for parameter in sides)  # the side networks too, not only heads
