"""MF² models with tiny random configs: shapes, losses, gradients, masking, ablations, saving and remote code."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_batch, tiny_config, tiny_dinov2
from transformers import AutoModel, AutoModelForImageClassification, AutoModelForPreTraining

from mf2 import LOSS_NAMES, MF2ForFacialStateRecognition, MF2ForPreTraining, MF2Model
from mf2.au_regions import default_au_boxes
from mf2.modeling_mf2 import caption_positive_mask, sample_hard_negatives


@pytest.fixture
def config():
    return tiny_config()


@pytest.fixture
def batch(config):
    return tiny_batch(config)


def _model(config, cls=MF2ForPreTraining, seed=0):
    torch.manual_seed(seed)
    return cls(config)


# ------------------------------------------------------------------------------------------------ shapes and losses
def test_pretraining_outputs_shapes_and_finite_losses(config, batch):
    output = _model(config)(**batch)
    assert output.au_logits.shape == (4, 12) and output.emotion_logits.shape == (4, 8)
    assert output.emotion_embeds.shape == (4, 32) and output.au_embeds.shape == (4, 12, 32)
    for name in LOSS_NAMES:
        value = getattr(output, name)
        assert value is not None and value.ndim == 0 and torch.isfinite(value), name
    expected = sum(getattr(output, name) for name in LOSS_NAMES)
    assert torch.allclose(output.loss, expected)
    assert list(output.keys())[0] == "loss"


def test_model_and_recognition_shapes(config, batch):
    features = _model(config, MF2Model)(batch["pixel_values"], batch["au_boxes"], output_hidden_states=True)
    assert features.emotion_query_output.shape == (4, 4, 32)
    assert features.au_query_output.shape == (4, 12, 2, 32)
    assert features.au_region_embeds.shape == (4, 12, 2 * 2 * 2, 32)  # k=2 boxes x 2x2 RoI bins
    assert len(features.emotion_qformer_hidden_states) == 3 and len(features.hidden_states) == 3
    assert features.vision_hidden_states is features.hidden_states  # the former name still reads
    output = _model(config, MF2ForFacialStateRecognition)(batch["pixel_values"])
    assert output.loss is None and output.au_logits.shape == (4, 12) and output.emotion_logits.shape == (4, 8)


def test_dinov2_vision_encoder_works(batch):
    config = tiny_config(vision_config=tiny_dinov2(image_size=28, patch_size=7))
    output = _model(config)(**{**batch, "pixel_values": torch.randn(4, 3, 28, 28)})
    assert torch.isfinite(output.loss) and output.au_logits.shape == (4, 12)


def test_image_path_never_builds_text_weights(config):
    names = [name for name, _ in _model(config, MF2ForFacialStateRecognition).named_parameters()]
    assert not any(".intermediate." in name or "alignment" in name for name in names)
    pretraining = [name for name, _ in _model(config).named_parameters()]
    assert any("qformer.encoder.layer.0.intermediate.dense" in name for name in pretraining)


# ------------------------------------------------------------------------------------------------ gradients
def test_gradients_reach_both_qformers_and_heads_not_frozen_vision(config, batch):
    model = _model(config)
    model(**batch).loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    for prefix in (
        "mf2.emotion_branch.qformer.",
        "mf2.au_branch.qformer.",
        "mf2.emotion_branch.query_tokens",
        "mf2.au_branch.au_query_embeddings",
        "heads.au_weight",
        "heads.emotion_classifier",
        "emotion_alignment.itm_head",
        "au_alignment.lm_head.dense",
        "emotion_alignment.temperature",
    ):
        hit = [g for n, g in grads.items() if n.startswith(prefix) and g is not None and g.abs().sum() > 0]
        assert hit, f"no gradient reached {prefix}"
    assert all(p.grad is None for p in model.mf2.vision_model.parameters())
    assert all(not p.requires_grad for p in model.mf2.vision_model.parameters())


def test_unfrozen_vision_encoder_trains():
    config = tiny_config(freeze_vision_encoder=False)
    model = _model(config)
    model(**tiny_batch(config)).loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.mf2.vision_model.parameters())


# ------------------------------------------------------------------------------------------------ independent checks
def _emotion_pieces(model, batch):
    features = model.mf2(batch["pixel_values"], batch["au_boxes"])
    alignment, branch = model.emotion_alignment, model.mf2.emotion_branch
    ids, mask = batch["emotion_input_ids"], batch["emotion_attention_mask"]
    queries = branch.query_tokens.expand(ids.shape[0], -1, -1)
    return features, alignment, branch, ids, mask, queries


def test_itc_itm_itg_match_independent_computation(config, batch):
    model = _model(config).eval()
    batch = {k: v for k, v in batch.items() if not k.startswith("au_input") and k != "au_attention_mask"}
    with torch.no_grad():
        output = model(**batch)
    with torch.no_grad():
        features, alignment, branch, ids, mask, queries = _emotion_pieces(model, batch)
        count, temperature = ids.shape[0], alignment.temperature.item()

        # ITC: captions encoded one by one, similarities and soft targets by loops.
        text_features = []
        for i in range(count):
            length = int(mask[i].sum())
            hidden = branch.qformer(
                query_embeds=alignment.embeddings(input_ids=ids[i : i + 1, :length]), query_length=0
            )
            text_features.append(F.normalize(alignment.text_proj(hidden.last_hidden_state[0, 0]), dim=-1))
        image_features = F.normalize(alignment.vision_proj(features.emotion_query_output), dim=-1)
        sim = torch.tensor(
            [
                [max(float(image_features[i, q] @ text_features[j]) for q in range(4)) for j in range(count)]
                for i in range(count)
            ]
        )
        smoothing = config.itc_label_smoothing
        positives = caption_positive_mask(ids, mask)
        itc = 0.0
        for i in range(count):
            target = positives[i].float() / positives[i].sum()
            soft = (1 - smoothing) * target + smoothing / count
            itc -= float((soft * F.log_softmax(sim[i] / temperature, dim=0)).sum())
            itc -= float((soft * F.log_softmax(sim[:, i] / temperature, dim=0)).sum())
        assert output.emo_itc.item() == pytest.approx(itc / (2 * count), rel=1e-4)

        # ITM: the same negatives (eval mode: the hardest, no draw), each (image, caption) pair scored on its own.
        negative_text, negative_image, _, _ = sample_hard_negatives(sim, positives, hardest=True)
        pairs = [(i, i, 1) for i in range(count)]
        pairs += [(int(negative_image[i]), i, 0) for i in range(count)]
        pairs += [(i, int(negative_text[i]), 0) for i in range(count)]
        itm = 0.0
        for image, text, label in pairs:
            length = int(mask[text].sum())
            joint = torch.cat([queries[:1], alignment.embeddings(input_ids=ids[text : text + 1, :length])], dim=1)
            hidden = branch.qformer(
                query_embeds=joint, query_length=4, encoder_hidden_states=features.image_embeds[image : image + 1]
            )
            logits = alignment.itm_head(hidden.last_hidden_state[0, :4]).mean(0)
            itm -= float(F.log_softmax(logits, dim=0)[label])
        assert output.emo_itm.item() == pytest.approx(itm / len(pairs), rel=1e-4)

        # ITG: causal decoding of each caption given the queries, mask written out by hand.
        smoothing, token_losses = config.itg_label_smoothing, []
        for i in range(count):
            length = int(mask[i].sum())
            total = 4 + length
            allowed = torch.zeros(total, total, dtype=torch.bool)
            allowed[:, :4] = True
            allowed[:4, 4:] = False
            for row in range(4, total):
                allowed[row, 4 : row + 1] = True
            additive = torch.zeros(1, 1, total, total).masked_fill(~allowed, torch.finfo(torch.float32).min)
            joint = torch.cat([queries[:1], alignment.embeddings(input_ids=ids[i : i + 1, :length])], dim=1)
            hidden = branch.qformer(
                query_embeds=joint,
                query_length=4,
                attention_mask=additive,
                encoder_hidden_states=features.image_embeds[i : i + 1],
            )
            log_probs = F.log_softmax(alignment.lm_head(hidden.last_hidden_state[0, 4:]), dim=-1)
            for t in range(length - 1):
                target = int(ids[i, t + 1])
                token_losses.append(
                    -(1 - smoothing) * float(log_probs[t, target]) - smoothing * float(log_probs[t].mean())
                )
        assert output.emo_itg.item() == pytest.approx(sum(token_losses) / len(token_losses), rel=1e-4)


# ------------------------------------------------------------------------------------------------ missing inputs
def test_missing_labels_and_captions_are_masked_not_faked(config, batch):
    model = _model(config).eval()
    emotion_only = {k: v for k, v in batch.items() if not k.startswith("au_input") and k != "au_attention_mask"}
    emotion_only["au_labels"] = torch.full_like(batch["au_labels"], -1)
    output = model(**emotion_only)
    assert output.au_loss.item() == 0.0 and output.au_itc is None and output.au_itm is None and output.au_itg is None
    assert output.emo_itc is not None

    au_only = {k: v for k, v in batch.items() if not k.startswith("emotion_")}
    au_only["emotion_labels"] = torch.tensor([-1, 3, -1, 5])
    output = model(**au_only)
    assert output.emo_itc is None and output.emo_itm is None and output.emo_itg is None
    expected = F.cross_entropy(output.emotion_logits[[1, 3]], torch.tensor([3, 5]))
    assert output.emotion_loss.item() == pytest.approx(expected.item(), rel=1e-5)

    # AU captions switched off for some (image, AU) pairs take no part in AU-VL alignment.
    partial = dict(batch, au_caption_mask=torch.zeros(4, 12, dtype=torch.long))
    partial["au_caption_mask"][:, :3] = 1
    assert torch.isfinite(model(**partial).au_itc)
    none = model(**dict(batch, au_caption_mask=torch.zeros(4, 12, dtype=torch.long)))
    assert none.au_itc is None and none.au_loss is not None


def test_images_without_emotion_caption_leave_emotion_alignment(config, batch):
    model = _model(config).eval()
    emotion_only = {k: v for k, v in batch.items() if not k.startswith("au_input") and k != "au_attention_mask"}
    masked = dict(emotion_only, emotion_attention_mask=emotion_only["emotion_attention_mask"].clone())
    masked["emotion_attention_mask"][1] = 0
    subset = {k: v[[0, 2, 3]] for k, v in emotion_only.items()}
    with torch.no_grad():
        with_gap, without = model(**masked), model(**subset)
    assert with_gap.emo_itc.item() == pytest.approx(without.emo_itc.item(), rel=1e-5)
    assert with_gap.emo_itg.item() == pytest.approx(without.emo_itg.item(), rel=1e-5)
    none = dict(emotion_only, emotion_attention_mask=torch.zeros_like(emotion_only["emotion_attention_mask"]))
    assert model(**none).emo_itc is None


@pytest.mark.parametrize(("emotion", "au"), [(False, True), (True, False)])
def test_single_branch_ablations(emotion, au, batch):
    config = tiny_config(use_emotion_branch=emotion, use_au_branch=au)
    model = _model(config)
    output = model(**batch)
    assert output.au_logits.shape == (4, 12) and output.emotion_logits.shape == (4, 8)
    assert (output.emo_itc is not None) == emotion and (output.au_itc is not None) == au
    output.loss.backward()
    assert model.heads.au_weight.grad.abs().sum() > 0 and model.heads.emotion_classifier.weight.grad.abs().sum() > 0
    full = sum(p.numel() for p in _model(tiny_config()).parameters())
    assert sum(p.numel() for p in model.parameters()) < full


# ------------------------------------------------------------------------------------------------ AU boxes
def test_default_boxes_and_box_sensitivity(config, batch):
    model = _model(config, MF2Model).eval()
    pixels = batch["pixel_values"]
    defaults = torch.tensor(default_au_boxes(config.au_names), dtype=torch.float32).expand(4, -1, -1, -1)
    with torch.no_grad():
        implicit, explicit = model(pixels), model(pixels, defaults)
        moved = model(pixels, batch["au_boxes"])
    assert torch.equal(implicit.au_embeds, explicit.au_embeds)
    assert not torch.allclose(moved.au_embeds, implicit.au_embeds)
    assert torch.equal(moved.emotion_embeds, implicit.emotion_embeds)  # the global branch ignores boxes


def test_bad_inputs_get_clear_errors(config, batch):
    model = _model(config)
    cases = [
        (dict(au_labels=torch.zeros(4, 11, dtype=torch.long)), "au_labels must have shape"),
        (dict(au_labels=torch.full((4, 12), 2)), "0 \\(absent\\), 1 \\(present\\) or -1"),
        (dict(emotion_labels=torch.zeros(4, 1, dtype=torch.long)), "emotion_labels must have shape"),
        (dict(emotion_labels=torch.tensor([0, 1, 8, 0])), "must lie in 0..7"),
        (dict(au_boxes=torch.rand(4, 12, 4)), "au_boxes must be"),
        (dict(au_boxes=torch.full((4, 12, 2, 4), float("nan"))), "NaN"),
        (dict(pixel_values=torch.randn(4, 1, 32, 32)), "pixel_values must be"),
        (dict(au_input_ids=torch.ones(4, 7, dtype=torch.long)), "au_input_ids must be"),
    ]
    for overrides, message in cases:
        with pytest.raises(ValueError, match=message):
            model(**{**batch, **overrides})


def test_config_that_does_not_fit_checkpoint_raises(tmp_path, config):
    _model(config).save_pretrained(tmp_path)
    with pytest.raises(Exception, match="ignore_mismatched_sizes"):
        MF2ForPreTraining.from_pretrained(tmp_path, num_au_query_tokens=3)


# ------------------------------------------------------------------------------------------------ learning
def test_overfits_eight_examples():
    config = tiny_config(classifier_dropout=0.0)
    batch = tiny_batch(config, batch_size=8, seed=3)
    torch.manual_seed(0)
    model = MF2ForFacialStateRecognition(config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(150):
        output = model(batch["pixel_values"], batch["au_boxes"], batch["au_labels"], batch["emotion_labels"])
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
    assert output.au_loss.item() < 0.05 and output.emotion_loss.item() < 0.05


def test_activation_checkpointing_gives_same_gradients(batch):
    no_dropout = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    config = tiny_config(qformer_config=no_dropout, classifier_dropout=0.0)
    model = _model(config).train()  # checkpointing only acts in training mode
    torch.manual_seed(5)
    model(**batch).loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert model.mf2.emotion_branch.qformer.encoder.layer[0].gradient_checkpointing
    torch.manual_seed(5)
    model(**batch).loss.backward()
    for name, grad in reference.items():
        assert torch.allclose(dict(model.named_parameters())[name].grad, grad, atol=1e-5), name


# ------------------------------------------------------------------------------------------------ saving and loading
def _run(code: str, env_extra: dict | None = None) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_save_and_auto_load_in_fresh_process(tmp_path, config, batch):
    model = _model(config).eval()
    model.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model.safetensors").exists()
    assert not list((tmp_path / "ckpt").glob("*.bin"))
    torch.save({k: v for k, v in batch.items()}, tmp_path / "batch.pt")
    with torch.no_grad():
        expected = model(**batch)
        features = model.mf2(batch["pixel_values"], batch["au_boxes"])
    torch.save(
        {
            "loss": expected.loss,
            "au_logits": expected.au_logits,
            "emotion_embeds": features.emotion_embeds,
            "au_embeds": features.au_embeds,
        },
        tmp_path / "expected.pt",
    )
    _run(f"""
        import torch, mf2
        from transformers import AutoModel, AutoModelForPreTraining, AutoModelForImageClassification
        batch, expected = torch.load("{tmp_path}/batch.pt"), torch.load("{tmp_path}/expected.pt")
        base = AutoModel.from_pretrained("{tmp_path}/ckpt").eval()
        pre = AutoModelForPreTraining.from_pretrained("{tmp_path}/ckpt").eval()
        rec = AutoModelForImageClassification.from_pretrained("{tmp_path}/ckpt").eval()
        assert type(base).__name__ == "MF2Model" and type(rec).__name__ == "MF2ForFacialStateRecognition"
        with torch.no_grad():
            features = base(batch["pixel_values"], batch["au_boxes"])
            assert torch.equal(features.emotion_embeds, expected["emotion_embeds"])
            assert torch.equal(features.au_embeds, expected["au_embeds"])
            torch.manual_seed(0)
            assert torch.equal(rec(batch["pixel_values"], batch["au_boxes"]).au_logits, expected["au_logits"])
            assert torch.isfinite(pre(**batch).loss)
        print("ok")
    """)


def test_remote_code_loads_where_mf2_cannot_be_imported(tmp_path, config, batch):
    model = _model(config, MF2ForFacialStateRecognition).eval()
    model.save_pretrained(tmp_path / "ckpt")
    saved = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert saved["auto_map"]["AutoModel"] == "modeling_mf2.MF2Model"
    for name in ("modeling_mf2.py", "configuration_mf2.py", "au_regions.py"):
        assert (tmp_path / "ckpt" / name).exists()
    torch.save(batch["pixel_values"], tmp_path / "pixels.pt")
    with torch.no_grad():
        torch.save(model(batch["pixel_values"]).au_logits, tmp_path / "expected.pt")
    output = _run(
        f"""
        import sys
        sys.modules["mf2"] = None  # the package is not importable here
        try:
            import mf2
            raise SystemExit("mf2 should not import")
        except ImportError:
            pass
        import torch
        from transformers import AutoModelForImageClassification
        try:
            AutoModelForImageClassification.from_pretrained("{tmp_path}/ckpt")
            raise SystemExit("loading custom code without trust_remote_code should fail")
        except ValueError as error:
            assert "trust_remote_code" in str(error)
        model = AutoModelForImageClassification.from_pretrained("{tmp_path}/ckpt", trust_remote_code=True).eval()
        assert "transformers_modules" in type(model).__module__, type(model).__module__
        with torch.no_grad():
            logits = model(torch.load("{tmp_path}/pixels.pt")).au_logits
        assert torch.equal(logits, torch.load("{tmp_path}/expected.pt"))
        print("remote ok")
        """,
        {"HF_HOME": str(tmp_path / "hf_home")},
    )
    assert "remote ok" in output


def test_auto_classes_map_to_mf2(tmp_path, config):
    _model(config).save_pretrained(tmp_path)
    assert isinstance(AutoModel.from_pretrained(tmp_path), MF2Model)
    assert isinstance(AutoModelForPreTraining.from_pretrained(tmp_path), MF2ForPreTraining)
    assert isinstance(AutoModelForImageClassification.from_pretrained(tmp_path), MF2ForFacialStateRecognition)


# ------------------------------------------------------------------------------------------------ transformers API
# (transformers' own common tests run on these classes in tests/models/mf2; these check what they cannot.)
def test_per_layer_outputs_have_the_standard_names(config, batch):
    model = _model(config, MF2ForFacialStateRecognition).eval()
    model.set_attn_implementation("eager")  # attention weights need the eager kernels
    with torch.no_grad():
        output = model(batch["pixel_values"], batch["au_boxes"], output_hidden_states=True, output_attentions=True)
    vision_layers, qformer_layers = config.vision_config.num_hidden_layers, config.qformer_config.num_hidden_layers
    assert len(output.hidden_states) == vision_layers + 1 and output.hidden_states[-1].shape == (4, 17, 32)
    assert len(output.attentions) == vision_layers and output.attentions[0].shape == (4, 4, 17, 17)
    assert len(output.emotion_qformer_attentions) == qformer_layers  # self-attention only, one per layer
    assert output.emotion_qformer_attentions[0].shape == (4, 4, 4, 4)
    cross = output.emotion_qformer_cross_attentions  # queries to vision tokens, in the one cross-attention layer
    assert len(cross) == 1 and cross[0].shape == (4, 4, 4, 17)
    assert output.au_qformer_attentions[0].shape == (4 * 12, 4, 2, 2)
    assert torch.equal(output.logits, output.emotion_logits)  # the image-classification name
    with torch.no_grad():
        plain = model(batch["pixel_values"], batch["au_boxes"])
    assert all(getattr(plain, name) is None for name in ("hidden_states", "attentions", "au_qformer_hidden_states"))
    assert torch.equal(plain.au_logits, output.au_logits)


def test_qformers_hold_the_configs_qformer_config(config):
    for model_class in (MF2Model, MF2ForFacialStateRecognition, MF2ForPreTraining):
        model = model_class(config)
        base = model if model_class is MF2Model else model.mf2
        for branch in (base.emotion_branch, base.au_branch):
            assert branch.qformer.config is model.config.qformer_config  # shared, so a later change reaches it
        has_text_ffn = hasattr(base.emotion_branch.qformer.encoder.layer[0], "intermediate")
        assert has_text_ffn == (model_class is MF2ForPreTraining)
    assert config.qformer_config.use_qformer_text_input  # the config still says what pretraining builds


def test_both_heads_initialise_one_shared_base(config):
    from mf2.modeling_mf2 import MF2RecognitionPreTrainedModel

    assert not issubclass(MF2ForPreTraining, MF2ForFacialStateRecognition)  # siblings, each through super().__init__
    for model_class, has_text in ((MF2ForFacialStateRecognition, False), (MF2ForPreTraining, True)):
        model = model_class(config)
        assert isinstance(model, MF2RecognitionPreTrainedModel)
        assert isinstance(model.mf2, MF2Model) and model.heads is not None
        assert all((model.text_alignment(branch) is not None) == has_text for branch in ("emotion", "au"))


def test_outputs_share_the_per_layer_fields_and_keep_their_order():
    from dataclasses import fields

    from mf2.modeling_mf2 import (
        PER_LAYER_FIELDS,
        MF2LayerOutputs,
        MF2ModelOutput,
        MF2PreTrainingOutput,
        MF2RecognitionOutput,
    )

    firsts = {MF2ModelOutput: "emotion_embeds", MF2RecognitionOutput: "loss", MF2PreTrainingOutput: "loss"}
    for output_class, first in firsts.items():
        names = [field.name for field in fields(output_class)]
        assert issubclass(output_class, MF2LayerOutputs) and names[0] == first  # `return_dict=False`: loss first
        assert tuple(names[-len(PER_LAYER_FIELDS) :]) == PER_LAYER_FIELDS and len(set(names)) == len(names)


def test_losses_are_deterministic_in_eval_mode(config, batch):
    model = _model(config).eval()
    with torch.no_grad():
        torch.manual_seed(1)
        first = model(**batch)
        torch.manual_seed(2)
        second = model(**batch)
    for name in ("loss", "emo_itm", "au_itm"):
        assert torch.equal(first[name], second[name]), name
    similarity = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.7], [0.3, 0.6, 0.4]])
    positives = torch.eye(3, dtype=torch.bool)
    negative_text, negative_image, _, _ = sample_hard_negatives(similarity, positives, hardest=True)
    assert negative_text.tolist() == [2, 2, 1] and negative_image.tolist() == [2, 2, 1]


def test_unknown_keywords_raise_and_processor_outputs_pass(config, batch):
    from mf2.image_processing_mf2 import IMAGE_FEATURES, MF2ImageProcessor
    from mf2.modeling_mf2 import PROCESSOR_ONLY_FIELDS

    assert set(IMAGE_FEATURES) - set(MF2ImageProcessor.model_input_names) <= set(PROCESSOR_ONLY_FIELDS)
    images = {"pixel_values": batch["pixel_values"], "au_boxes": batch["au_boxes"]}
    features = MF2ImageProcessor(landmark_backend="template", size=32)(list(torch.rand(4, 32, 32, 3).numpy()))
    for model_class in (MF2Model, MF2ForFacialStateRecognition, MF2ForPreTraining):
        model = _model(config, model_class).eval()
        with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['foo_bar'\]"):
            model(**images, foo_bar=123)
        with torch.no_grad():
            assert model(**features).au_embeds.shape == (4, 12, 32)  # `model(**processor(images))` works


def test_image_classification_pipeline_reads_the_emotion_logits(tmp_path, config, batch):
    from PIL import Image
    from transformers import pipeline

    from mf2 import MF2ImageProcessor

    model = _model(config, MF2ForFacialStateRecognition).eval()
    model.save_pretrained(tmp_path)
    MF2ImageProcessor(landmark_backend="template", size=32).save_pretrained(tmp_path)
    classifier = pipeline("image-classification", model=str(tmp_path), device="cpu")
    image = Image.fromarray((torch.rand(40, 40, 3) * 255).byte().numpy())
    predictions = classifier(image, top_k=3)
    features = classifier.image_processor(image, return_tensors="pt")
    with torch.no_grad():
        probabilities = classifier.model(**features).emotion_logits.softmax(-1)[0]
    best = probabilities.topk(3)
    assert [p["label"] for p in predictions] == [config.id2label[int(i)] for i in best.indices]
    assert [p["score"] for p in predictions] == pytest.approx(best.values.tolist(), abs=1e-5)


def test_device_map_auto_offloads_to_cpu_and_disk(tmp_path, config, batch):
    model = _model(config, MF2ForFacialStateRecognition).eval()
    model.save_pretrained(tmp_path / "ckpt")
    with torch.no_grad():
        expected = model(batch["pixel_values"], batch["au_boxes"])
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    offloaded = MF2ForFacialStateRecognition.from_pretrained(
        tmp_path / "ckpt", device_map="auto", max_memory={"cpu": size * 7 // 10}, offload_folder=tmp_path / "offload"
    ).eval()
    placed = set(offloaded.hf_device_map.values())
    assert "disk" in placed and placed - {"disk"}, offloaded.hf_device_map
    # Modules with bare parameters are placed whole, so no parameter is left to match no module.
    assert not any(name.endswith(("query_tokens", "roi_position_embeddings")) for name in offloaded.hf_device_map)
    with torch.no_grad():
        output = offloaded(batch["pixel_values"], batch["au_boxes"])
    torch.testing.assert_close(output.au_logits, expected.au_logits)
    torch.testing.assert_close(output.emotion_logits, expected.emotion_logits)


def test_recognition_compiles_as_one_graph(config, batch):
    model = _model(config, MF2ForFacialStateRecognition).eval()
    # fullgraph=True fails on any graph break (a data-dependent check such as the boxes' NaN test would be one); the
    # "eager" backend checks the capture without code generation, which is torch's own concern.
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    labels = {"au_labels": batch["au_labels"], "emotion_labels": batch["emotion_labels"]}  # the losses too
    with torch.no_grad():
        expected = model(batch["pixel_values"], batch["au_boxes"], **labels)
        output = compiled(batch["pixel_values"], batch["au_boxes"], **labels)
    torch.testing.assert_close(output.au_logits, expected.au_logits)
    torch.testing.assert_close(output.logits, expected.logits)
    torch.testing.assert_close(output.loss, expected.loss)


def test_bfloat16_loading_and_sdpa_eager_agreement(tmp_path, config, batch):
    model = _model(config, MF2ForFacialStateRecognition).eval()
    model.save_pretrained(tmp_path)
    inputs = (batch["pixel_values"], batch["au_boxes"])
    with torch.no_grad():
        expected = model(*inputs)
        outputs = {}
        for attention in ("eager", "sdpa"):
            loaded = MF2ForFacialStateRecognition.from_pretrained(tmp_path, attn_implementation=attention).eval()
            for module in (loaded.mf2.vision_model, loaded.mf2.emotion_branch.qformer, loaded.mf2.au_branch.qformer):
                assert module.config._attn_implementation == attention
            outputs[attention] = loaded(*inputs)
        half = MF2ForFacialStateRecognition.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
        assert half.dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in half.parameters())
        half_output = half(inputs[0].bfloat16(), inputs[1].bfloat16())
    for name in ("au_logits", "emotion_logits", "emotion_embeds", "au_embeds"):
        torch.testing.assert_close(outputs["eager"][name], outputs["sdpa"][name], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(outputs["sdpa"][name], expected[name], atol=1e-5, rtol=1e-4)
    for name in ("au_logits", "emotion_logits"):
        assert torch.isfinite(half_output[name]).all()
        torch.testing.assert_close(half_output[name].float(), expected[name], atol=0.1, rtol=0.05)


def test_a_loaded_model_keeps_its_vision_encoder_frozen_as_its_config_says(tmp_path, config):
    """transformers rebuilds loaded weights as trainable; MF² re-applies the config's freezing, so training a loaded
    checkpoint never updates the blocks its config keeps frozen."""
    frozen = MF2ForFacialStateRecognition(config)
    frozen.save_pretrained(tmp_path / "frozen")
    loaded = MF2ForFacialStateRecognition.from_pretrained(tmp_path / "frozen")
    assert not any(p.requires_grad for p in loaded.mf2.vision_model.parameters())
    assert any(p.requires_grad for p in loaded.mf2.emotion_branch.parameters())
    top = tiny_config(vision_trainable_layers=1)
    MF2ForPreTraining(top).save_pretrained(tmp_path / "top")
    for model_class in (MF2ForPreTraining, MF2Model):
        model = model_class.from_pretrained(tmp_path / "top")
        core = model if isinstance(model, MF2Model) else model.mf2
        assert [any(p.requires_grad for p in b.parameters()) for b in core.vision_blocks] == [False, True]


def test_labels_for_a_recogniser_that_did_not_run_are_an_error_and_no_labels_no_loss(config, batch):
    model = MF2ForFacialStateRecognition(config).eval()
    inputs = {"pixel_values": batch["pixel_values"], "au_boxes": batch["au_boxes"]}
    skipped = model(**inputs, branches=("emotion",))  # no labels: logits of what ran, None for the rest
    assert skipped.au_logits is None and skipped.loss is None
    with pytest.raises(ValueError, match="au_labels were given, but their recogniser did not run"):
        model(**inputs, branches=("emotion",), au_labels=batch["au_labels"])
    unknown = torch.full_like(batch["au_labels"], -1)  # only unknown labels: nothing is left out
    assert model(**inputs, branches=("emotion",), au_labels=unknown).au_loss is None


def test_resizing_the_caption_vocabulary_says_it_is_not_supported(config):
    with pytest.raises(NotImplementedError, match="does not resize its caption vocabulary"):
        MF2ForPreTraining(config).resize_token_embeddings(config.text_config.vocab_size + 1)
