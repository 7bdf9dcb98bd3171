"""Pre-processing once per example (cached by fingerprint), no-face handling, data specs, and the collator."""

import numpy as np
import pytest
import torch
from datasets import Dataset
from training_testing import IMAGE_SIZE, synthetic_rows

from mf2.data import MFA_FEATURES
from mf2.data.group_split import group_folds
from mf2.processing_mf2 import MF2ImageProcessor
from mf2.training.collator import MF2DataCollator
from mf2.training.data_specs import DataSpec, stratified_indices
from mf2.training.preprocess import add_example_ids, fill_template_captions, preprocess_dataset


@pytest.fixture(scope="module")
def dataset():
    return fill_template_captions(Dataset.from_dict(synthetic_rows(10), features=MFA_FEATURES))


def test_preprocessing_runs_once_and_is_cached(dataset, tiny_setup, tmp_path, monkeypatch):
    processor = tiny_setup["processor"].image_processor
    first = preprocess_dataset(dataset, processor, tmp_path)
    assert len(first) == 10 and "image" not in first.column_names
    row = first.with_format("numpy")[0]
    assert first.features["pixel_values"].dtype == "uint8"  # stored as 8 bits (numpy format widens it on read)
    assert row["pixel_values"].shape == (3, IMAGE_SIZE, IMAGE_SIZE) and row["pixel_values"].max() <= 255
    assert row["au_boxes"].shape == (12, 2, 4) and row["landmarks"].shape == (68, 2)
    assert first["landmark_backend"] == ["template"] * 10 and all(first["face_found"])
    assert [path.name for path in tmp_path.iterdir()] == [f"preprocess-{first._fingerprint}.arrow"]

    # A second run (another epoch, a resumed run, fine-tuning) reads the cache and never calls the processor.
    def fail(*args, **kwargs):
        raise AssertionError("the image processor ran again")

    monkeypatch.setattr(MF2ImageProcessor, "__call__", fail)
    second = preprocess_dataset(dataset, processor, tmp_path)
    assert second._fingerprint == first._fingerprint
    np.testing.assert_array_equal(
        second.with_format("numpy")[3]["pixel_values"], first.with_format("numpy")[3]["pixel_values"]
    )
    monkeypatch.undo()
    # Any processor option that changes the output gives a new cache file.
    other = MF2ImageProcessor.from_dict({**processor.to_dict(), "size": 24})
    assert preprocess_dataset(dataset, other, tmp_path)._fingerprint != first._fingerprint


def test_rows_without_a_face(dataset, tmp_path):
    pytest.importorskip("dlib")
    processor = MF2ImageProcessor(landmark_backend="dlib", size=IMAGE_SIZE)  # random noise: dlib finds no face
    fallback = preprocess_dataset(dataset, processor, tmp_path)
    assert len(fallback) == 10 and not any(fallback["face_found"])
    assert set(fallback["landmark_backend"]) == {"template-fallback"}
    assert len(preprocess_dataset(dataset, processor, tmp_path, no_face="skip")) == 0
    with pytest.warns(FutureWarning, match="no_face='drop' is deprecated.*use no_face='skip'"):  # the old spelling
        assert len(preprocess_dataset(dataset, processor, tmp_path, no_face="drop")) == 0
    with pytest.raises(ValueError, match="No face"):
        preprocess_dataset(dataset, processor, None, no_face="error")


def test_collator_builds_the_model_batch(dataset, tiny_setup, tmp_path):
    processor = tiny_setup["processor"]
    rows = add_example_ids(preprocess_dataset(dataset, processor.image_processor, tmp_path)).with_format("numpy")
    batch = MF2DataCollator(processor)([rows[i] for i in range(4)])
    assert (
        batch["pixel_values"].shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE) and batch["pixel_values"].dtype == torch.float32
    )
    # uint8 crops are normalised with the processor's mean / std: same values as the processor's own output.
    reference = processor.image_processor(dataset[0]["image"], landmark_backend="template")["pixel_values"][0]
    assert torch.allclose(batch["pixel_values"][0], reference, atol=0.02)
    assert batch["au_labels"].tolist() == [list(row) for row in dataset["au"][:4]]
    assert batch["emotion_labels"].tolist() == dataset["emotion"][:4] and batch["example_ids"].tolist() == [0, 1, 2, 3]
    assert batch["au_input_ids"].shape[:2] == (4, 12) and batch["au_input_ids"].shape[2] <= 12  # truncated
    assert batch["au_caption_mask"].tolist() == (torch.tensor(dataset["au"][:4]) >= 0).long().tolist()
    assert batch["emotion_input_ids"].shape[0] == 4

    # A stage without emotion targets: labels unknown, no emotion captions; image-only batches for recognition.
    au_only = MF2DataCollator(processor, emotion_targets=False)([rows[i] for i in range(4)])
    assert (au_only["emotion_labels"] == -1).all() and "emotion_input_ids" not in au_only
    # At most 2 AU captions per image (random), the others masked out as missing.
    torch.manual_seed(0)
    fewer = MF2DataCollator(processor, max_au_captions=2)([rows[i] for i in range(4)])
    assert (fewer["au_caption_mask"].sum(1) == batch["au_caption_mask"].sum(1).clamp(max=2)).all()
    assert (fewer["au_caption_mask"] <= batch["au_caption_mask"]).all()
    assert (fewer["au_attention_mask"].sum(-1)[fewer["au_caption_mask"] == 0] == 0).all()
    image_only = MF2DataCollator(processor, with_captions=False)([rows[i] for i in range(4)])
    assert set(image_only) == {"pixel_values", "au_boxes", "au_labels", "emotion_labels", "example_ids"}


def test_the_collators_cache_key_holds_what_its_tokenizer_does_not_where_it_lies(tiny_setup, tmp_path):
    """A resumed run may reach the same tokenizer by another path (another `$MF2_HOME`): its caches still match. The
    tokenizer counts only where captions are tokenised, and another vocabulary is another key."""
    from training_testing import write_tokenizer
    from transformers import AutoTokenizer, BertTokenizer

    from mf2.processing_mf2 import MF2Processor

    def collator(folder, with_captions=True):
        tokenizer = AutoTokenizer.from_pretrained(folder)
        processor = MF2Processor.from_config(tiny_setup["config"], tokenizer, landmark_backend="template")
        return MF2DataCollator(processor, with_captions=with_captions)

    first = write_tokenizer(tmp_path / "home1" / "tokenizer")
    copy = write_tokenizer(tmp_path / "home2" / "tokenizer")
    assert collator(first).fingerprint() == collator(copy).fingerprint()
    vocab = AutoTokenizer.from_pretrained(first).get_vocab()
    vocab["1"], vocab["2"] = vocab["2"], vocab["1"]  # two tokens swap ids
    BertTokenizer(vocab=vocab).save_pretrained(tmp_path / "other")
    assert collator(tmp_path / "other").fingerprint() != collator(first).fingerprint()
    assert "tokenizer" not in collator(first, with_captions=False).fingerprint()


def test_data_specs_and_splits():
    spec = DataSpec.parse("ferplus:/data/ferplus/train.parquet,max_samples=600,seed=3")
    assert (spec.source, spec.path, spec.max_samples, spec.seed) == ("ferplus", "/data/ferplus/train.parquet", 600, 3)
    # FER+ crops are aligned like any face (one geometry), never read as already aligned
    assert spec.backend("template") == "dlib" and DataSpec.parse("ckplus:/x.parquet").backend("template") == "dlib"
    with pytest.raises(ValueError):
        DataSpec.parse("imagenet:/x")

    labels = [0] * 60 + [1] * 30 + [2] * 10
    chosen = stratified_indices(labels, 20, seed=0)
    assert len(chosen) == 20 and np.bincount(np.asarray(labels)[chosen]).tolist() == [12, 6, 2]

    groups = [f"s{i % 7}" for i in range(40)]
    folds = group_folds(groups, 3, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(40))
    assert all(not {groups[i] for i in a} & {groups[i] for i in b} for a in folds for b in folds if a is not b)


def test_ferplus_training_crops_are_the_inference_crops(data_dir, tmp_path):
    """One geometry: a FER+ face is cropped for training exactly as the shipped model's processor crops it at
    inference (`no_face="fallback"`), pixels and AU boxes, found faces and fallbacks alike."""
    import io

    from PIL import Image

    from mf2.integration.default_model import default_model_path
    from mf2.training.data_specs import load_source
    from mf2.training.preprocess import prepare_data

    spec = f"ferplus:{data_dir}/ferplus/valid.parquet,max_samples=16"
    rows, summary = prepare_data([spec], MF2ImageProcessor(size=112), tmp_path)
    assert set(summary[0]["landmark_backends"]) <= {"dlib", "template-fallback"}
    assert summary[0]["landmark_backends"].get("dlib", 0) >= 8  # most 48-px faces are found on the upscaled copy
    cells = load_source(DataSpec.parse(spec))["image"]
    images = [Image.open(io.BytesIO(cell["bytes"])) if isinstance(cell, dict) else cell for cell in cells]
    shipped = MF2ImageProcessor.from_pretrained(str(default_model_path()))
    inference = shipped(images, no_face="fallback", do_normalize=False, return_tensors="np")
    assert list(inference["landmark_backend"]) == list(rows["landmark_backend"])
    stored = np.asarray(rows["pixel_values"], dtype=np.float32)
    assert np.abs(stored - np.rint(inference["pixel_values"] * 255)).max() <= 1
    np.testing.assert_allclose(np.asarray(rows["au_boxes"]), inference["au_boxes"], atol=1e-6)


def test_the_key_covers_the_files_the_landmark_options_name(tmp_path):
    """A retrained predictor written over the same path places other landmarks: its content is in the key; options
    that name no file leave the key as it was (existing caches stay valid)."""
    from mf2.training.preprocess import processor_fingerprint

    predictor = tmp_path / "predictor.dat"
    predictor.write_bytes(b"first")
    plain = processor_fingerprint(MF2ImageProcessor(landmark_backend="template"))
    assert "backend_files" not in plain
    given = MF2ImageProcessor(landmark_backend="template", backend_kwargs={"predictor_path": str(predictor)})
    first = processor_fingerprint(given)
    predictor.write_bytes(b"other")
    assert processor_fingerprint(given) != first and first["backend_files"]


def test_saving_the_processor_leaves_the_key_as_it_was(tiny_setup, tmp_path):
    """`save_pretrained` adds `auto_map` to the processor it saves; a recipe resumed in a new process (whose
    processor was never saved) must find the caches its first process made after saving it."""
    from mf2.processing_mf2 import MF2Processor
    from mf2.training.preprocess import processor_fingerprint

    processor = MF2Processor.from_config(
        tiny_setup["config"], tiny_setup["processor"].tokenizer, landmark_backend="template", size=IMAGE_SIZE
    )
    assert "auto_map" not in processor.image_processor.to_dict()
    before = processor_fingerprint(processor.image_processor)
    processor.save_pretrained(tmp_path / "saved")
    assert "auto_map" in processor.image_processor.to_dict()  # what the key has to leave out
    assert processor_fingerprint(processor.image_processor) == before


def test_a_killed_runs_temporary_is_removed_and_a_fresh_one_is_not(tmp_path):
    import os
    import time

    from mf2.training.preprocess import STALE_TEMPORARY_SECONDS, _cache_file

    old, fresh = tmp_path / "tmpkilled", tmp_path / "tmpwriting"
    old.write_bytes(b"half"), fresh.write_bytes(b"half")
    past = time.time() - STALE_TEMPORARY_SECONDS - 60
    os.utime(old, (past, past))
    _cache_file(tmp_path, "abc")
    assert not old.exists() and fresh.exists()
