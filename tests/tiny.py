"""Tiny random MF² configurations and inputs for the mechanics tests."""

import torch

from mf2 import MF2Config

VOCAB_SIZE = 64


def tiny_config(**overrides) -> MF2Config:
    """A 2-layer MF² small enough to run a training step in well under a second on a CPU.

    A sub-config given as a dict changes only the keys it names (`vision_config={"num_hidden_layers": 3}`), unless it
    names another `model_type`, which starts that sub-config afresh."""
    options = dict(
        vision_config=dict(
            model_type="vit",
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            image_size=32,
            patch_size=8,
        ),
        text_config=dict(
            model_type="bert",
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            vocab_size=VOCAB_SIZE,
            max_position_embeddings=64,
        ),
        qformer_config=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            max_position_embeddings=64,
        ),
        num_query_tokens=4,
        num_au_query_tokens=2,
        au_roi_size=2,
        image_text_hidden_size=16,
        au_caption_max_length=12,
        emotion_caption_max_length=12,
    )
    for name, value in overrides.items():
        default = options.get(name)
        if isinstance(default, dict) and isinstance(value, dict):
            same_model = value.get("model_type", default.get("model_type")) == default.get("model_type")
            value = {**default, **value} if same_model else value
        options[name] = value
    return MF2Config(**options)


def tiny_dinov2(image_size: int = 32, patch_size: int = 8) -> dict:
    """A 2-layer DINOv2 sub-config for `tiny_config(vision_config=...)`: the shipped image encoder's kind, whose
    weights `save_pretrained` writes under other names than the model's own."""
    return dict(
        model_type="dinov2",
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
    )


def tiny_batch(config: MF2Config, batch_size: int = 4, caption_length: int = 7, seed: int = 0) -> dict:
    """Random pixels, boxes, captions and labels shaped as `MF2ForPreTraining` expects."""
    generator = torch.Generator().manual_seed(seed)
    num_aus = config.num_aus
    image_size = config.vision_config.image_size
    corner = torch.rand(batch_size, num_aus, 2, 2, generator=generator) * 0.6
    size = 0.1 + torch.rand(batch_size, num_aus, 2, 2, generator=generator) * 0.3
    ids = torch.randint(5, VOCAB_SIZE, (batch_size, caption_length), generator=generator)
    ids[:, 0] = 1
    au_ids = torch.randint(5, VOCAB_SIZE, (batch_size, num_aus, caption_length), generator=generator)
    au_ids[..., 0] = 1
    emotion_mask = torch.ones_like(ids)
    emotion_mask[0, -2:] = 0  # some padding
    return {
        "pixel_values": torch.randn(batch_size, 3, image_size, image_size, generator=generator),
        "au_boxes": torch.cat([corner, corner + size], dim=-1),
        "emotion_input_ids": ids,
        "emotion_attention_mask": emotion_mask,
        "au_input_ids": au_ids,
        "au_attention_mask": torch.ones_like(au_ids),
        "au_labels": torch.randint(0, 2, (batch_size, num_aus), generator=generator),
        "emotion_labels": torch.randint(0, len(config.id2label), (batch_size,), generator=generator),
    }
