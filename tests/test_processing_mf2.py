"""MF2Processor: captions tokenised per face, save/load with the Auto classes, and what MF2ForPreTraining takes."""

import json

import pytest
import torch
from face_images import astronaut, no_face, two_faces
from test_image_processing_mf2 import needs_dlib, register_auto_classes
from transformers import AutoProcessor, BertTokenizer

from mf2 import AU_NAMES
from mf2.processing_mf2 import MF2ImageProcessor, MF2Processor

WORDS = (
    "the person is smiling happily with raised inner brows cheeks lips parted pressed a face looks surprised".split()
)
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]


def tiny_tokenizer() -> BertTokenizer:
    return BertTokenizer(vocab={token: index for index, token in enumerate(VOCAB)})


def test_processor_save_load_round_trip_and_auto_processor(tmp_path):
    register_auto_classes()
    image_processor = MF2ImageProcessor(landmark_backend="template", size=64, au_names=list(AU_NAMES))
    original = MF2Processor(image_processor, tiny_tokenizer(), emotion_caption_max_length=9, au_caption_max_length=7)
    original.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["processor_class"] == "MF2Processor" and saved["emotion_caption_max_length"] == 9
    assert saved["image_processor"]["image_processor_type"] == "MF2ImageProcessor"
    assert not (tmp_path / "config.json").exists()
    captions = ["the person is smiling happily"]
    au_captions = [["raised inner brows"] + [""] * 11]
    for loaded in (MF2Processor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is MF2Processor and type(loaded.image_processor) is MF2ImageProcessor
        assert (loaded.emotion_caption_max_length, loaded.au_caption_max_length) == (9, 7)
        assert loaded.image_processor.to_dict() == image_processor.to_dict()
        a = original(astronaut(), emotion_captions=captions, au_captions=au_captions)
        b = loaded(astronaut(), emotion_captions=captions, au_captions=au_captions)
        assert a.keys() == b.keys()
        for key, value in a.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, b[key]), key


def test_captions_are_tokenised_per_face_with_the_config_lengths():
    tokenizer = tiny_tokenizer()
    template = MF2ImageProcessor(landmark_backend="template", size=32)
    proc = MF2Processor(template, tokenizer, emotion_caption_max_length=6, au_caption_max_length=5)
    long_caption = " ".join(WORDS)  # longer than both limits
    au_captions = [
        {"AU1": "raised inner brows", "AU12": long_caption},
        ["smiling"] * 12,
    ]
    out = proc([astronaut(), astronaut()], emotion_captions=["a face", long_caption], au_captions=au_captions)
    assert out["emotion_input_ids"].shape == (2, 6) and out["emotion_attention_mask"][0].tolist() == [1] * 4 + [0] * 2
    assert out["emotion_input_ids"][1, -1].item() == tokenizer.sep_token_id  # truncated, still ends with [SEP]
    assert out["au_input_ids"].shape == (2, 12, 5) and out["au_attention_mask"].shape == (2, 12, 5)
    mask = out["au_caption_mask"]
    assert mask.dtype == torch.int64 and mask[0].tolist() == [1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0]
    assert mask[1].tolist() == [1] * 12
    assert out["au_attention_mask"][0, 1].sum() == 0 and (out["au_input_ids"][0, 1] == tokenizer.pad_token_id).all()
    assert out["au_input_ids"][0, 0, 0].item() == tokenizer.cls_token_id
    # An empty emotion caption (unknown emotion) is an all-padding row, which the model leaves out of Emo-VL.
    gap = proc([astronaut(), astronaut()], emotion_captions=["a face", " "])
    assert gap["emotion_attention_mask"][1].sum() == 0 and gap["emotion_attention_mask"][0].sum() == 4
    assert (gap["emotion_input_ids"][1] == tokenizer.pad_token_id).all()
    # Captions only (no images): one row per caption.
    text_only = proc(emotion_captions=["a face", "the person is smiling"])
    assert text_only["emotion_input_ids"].shape[0] == 2 and "pixel_values" not in text_only
    with pytest.raises(ValueError, match="12 captions"):
        proc(astronaut(), au_captions=[["only one"]])
    with pytest.raises(ValueError, match="2 entries for 1 images"):
        proc(astronaut(), emotion_captions=["a", "b"])
    with pytest.raises(ValueError, match="unknown AUs"):
        proc(astronaut(), au_captions=[{"AU99": "x"}])


@needs_dlib
def test_captions_repeat_for_every_face_of_an_image():
    image, _ = two_faces()
    proc = MF2Processor(MF2ImageProcessor(size=32), tiny_tokenizer())
    out = proc(
        [image, astronaut()],
        emotion_captions=["a face", "the person is smiling"],
        au_captions=[["smiling"] * 12, [""] * 12],
        multiple_faces="all",
    )
    rows = out["image_index"].tolist()
    assert rows[:2] == [0, 0] and rows[-1] == 1
    assert torch.equal(out["emotion_input_ids"][0], out["emotion_input_ids"][1])
    assert out["au_caption_mask"].sum(-1).tolist() == [12 if row == 0 else 0 for row in rows]
    # An image left out (no face, no_face="skip") takes its captions with it.
    empty = proc(no_face(), emotion_captions=["a face"], au_captions=[["smiling"] * 12], no_face="skip")
    assert empty["pixel_values"].shape[0] == 0 and empty["emotion_input_ids"].shape[0] == 0
    assert empty["au_input_ids"].shape[:2] == (0, 12) and empty["au_caption_mask"].shape == (0, 12)


@needs_dlib
def test_processor_output_feeds_mf2_for_pretraining():
    from tiny import tiny_config

    from mf2 import MF2ForPreTraining

    torch.manual_seed(0)
    config = tiny_config()
    model = MF2ForPreTraining(config).eval()
    proc = MF2Processor.from_config(config, tiny_tokenizer())
    assert proc.image_processor.size == config.vision_config.image_size
    inputs = proc(
        [astronaut(), astronaut()[:, ::-1]],
        emotion_captions=["the person is smiling happily", "a face looks surprised"],
        au_captions=[["raised inner brows"] * 6 + [""] * 6, ["lips parted"] * 12],
    )
    assert inputs["emotion_input_ids"].shape[1] <= config.emotion_caption_max_length
    with torch.no_grad():
        output = model(**inputs)
    assert torch.isfinite(output.loss)
    assert output.au_logits.shape == (2, 12) and output.emotion_logits.shape == (2, 8)


def test_load_processor_builds_one_for_a_config_or_loads_the_saved_one(tmp_path):
    from tiny import tiny_config

    from mf2.processing_mf2 import load_processor, load_saved_processor

    config = tiny_config()
    tiny_tokenizer().save_pretrained(tmp_path / "tokenizer")
    built = load_processor(config, tokenizer_name=str(tmp_path / "tokenizer"), landmark_backend="template")
    assert built.image_processor.landmark_backend == "template" and built.image_processor.size == 224
    assert built.emotion_caption_max_length == config.emotion_caption_max_length
    built.save_pretrained(tmp_path / "checkpoint")
    loaded = load_processor(config, str(tmp_path / "checkpoint"), image_size=96)  # the saved one, crop resized
    assert isinstance(loaded, MF2Processor) and loaded.image_processor.size == 96
    assert load_saved_processor(str(tmp_path / "checkpoint")).image_processor.landmark_backend == "template"
    with pytest.raises(ValueError, match="No tokenizer"):
        load_processor(config)
