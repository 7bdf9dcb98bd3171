"""The vision-token cache: cached and uncached training give the same losses; entries are keyed and invalidated."""

import pytest
import torch
from tiny import tiny_batch, tiny_config
from torch.utils.data import Dataset

from mf2 import MF2ForFacialStateRecognition, MF2ForPreTraining
from mf2.training.vision_cache import VisionTokenCache, VisionTokenCollator, VisionTokenDataset, flip_au_boxes


def _config(**overrides):
    return tiny_config(vision_config={"num_hidden_layers": 3}, **overrides)


class _Rows(Dataset):
    """A pre-collated batch served one example at a time (what `MF2DataCollator` would return, unstacked)."""

    def __init__(self, batch):
        self.batch = batch

    def __len__(self):
        return self.batch["pixel_values"].shape[0]

    def __getitem__(self, index):
        return {name: value[index] for name, value in self.batch.items()}


def _stack(rows):
    return {name: torch.stack([row[name] for row in rows]) for name in rows[0]}


def _cached_batch(model, batch, tmp_path, flips=False, dtype=torch.float32):
    cache = VisionTokenCache(model, tmp_path / "tokens", dtype=dtype, flips=flips)
    entry = cache.build(
        _Rows(batch),
        collate_fn=_stack,
        batch_size=3,
        fingerprint="tiny",
        label_names=("au_labels", "emotion_labels", "au_boxes"),
    )
    examples = [VisionTokenDataset(entry, augment=False)[i] for i in range(len(entry))]
    return cache, entry, VisionTokenCollator()(examples)


@pytest.mark.parametrize("trainable_layers", [0, 2])
def test_cached_and_uncached_pretraining_losses_agree(tmp_path, trainable_layers):
    torch.manual_seed(0)
    model = MF2ForPreTraining(_config(vision_trainable_layers=trainable_layers)).eval()
    batch = tiny_batch(model.config)
    _, _, cached = _cached_batch(model, batch, tmp_path)
    captions = {name: value for name, value in batch.items() if "input_ids" in name or "attention_mask" in name}
    torch.manual_seed(1)
    direct = model(**batch)
    torch.manual_seed(1)  # the hard-negative draw is the only random step in eval mode: replay it
    replayed = model(
        vision_tokens=cached["vision_tokens"],
        au_boxes=cached["au_boxes"],
        au_labels=cached["au_labels"],
        emotion_labels=cached["emotion_labels"],
        **captions,
    )
    for name in ("loss", "emo_itc", "emo_itm", "emo_itg", "au_itc", "au_itm", "au_itg", "au_loss", "emotion_loss"):
        assert getattr(replayed, name).item() == pytest.approx(getattr(direct, name).item(), rel=1e-5, abs=1e-6), name


def test_cached_recognition_trains_only_the_top_blocks(tmp_path):
    torch.manual_seed(0)
    model = MF2ForFacialStateRecognition(_config(vision_trainable_layers=1))
    layers = model.mf2.vision_blocks
    assert not any(p.requires_grad for p in layers[0].parameters()) and all(
        p.requires_grad for p in layers[2].parameters()
    )
    model.eval()
    batch = tiny_batch(model.config)
    _, _, cached = _cached_batch(model, batch, tmp_path)
    direct = model(
        pixel_values=batch["pixel_values"],
        au_boxes=batch["au_boxes"],
        emotion_labels=batch["emotion_labels"],
        au_labels=batch["au_labels"],
    )
    replayed = model(
        vision_tokens=cached["vision_tokens"],
        au_boxes=cached["au_boxes"],
        emotion_labels=cached["emotion_labels"],
        au_labels=cached["au_labels"],
    )
    assert replayed.loss.item() == pytest.approx(direct.loss.item(), rel=1e-5)
    replayed.loss.backward()
    assert all(p.grad is None for p in layers[0].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in layers[2].parameters())


def test_half_precision_storage_stays_close(tmp_path):
    torch.manual_seed(0)
    model = MF2ForFacialStateRecognition(_config(vision_trainable_layers=1)).eval()
    batch = tiny_batch(model.config)
    _, _, exact = _cached_batch(model, batch, tmp_path / "fp32")
    _, _, half = _cached_batch(model, batch, tmp_path / "fp16", dtype=torch.float16)
    assert torch.allclose(exact["vision_tokens"], half["vision_tokens"], atol=1e-2)


def test_flipped_view_is_the_mirror_image_with_mirrored_boxes(tmp_path):
    torch.manual_seed(0)
    model = MF2ForFacialStateRecognition(_config()).eval()
    batch = tiny_batch(model.config)
    cache = VisionTokenCache(model, tmp_path / "tokens", dtype=torch.float32)
    entry = cache.build(_Rows(batch), collate_fn=_stack, batch_size=4, fingerprint="tiny", label_names=("au_boxes",))
    mirrored = model.mf2.frozen_vision_tokens(batch["pixel_values"].flip(-1))
    assert torch.allclose(entry[1]["cached_features"]["flipped_tokens"], mirrored[1], atol=1e-6)
    views = VisionTokenDataset(entry, augment=True)
    torch.manual_seed(0)
    seen = {bool(torch.equal(views[1]["au_boxes"], batch["au_boxes"][1])) for _ in range(20)}
    assert seen == {True, False}  # both views are drawn
    boxes = batch["au_boxes"][1]
    assert torch.allclose(flip_au_boxes(flip_au_boxes(boxes)), boxes)
    flipped = flip_au_boxes(boxes)
    assert torch.allclose(flipped[..., 0], 1 - boxes[..., 2]) and (flipped[..., 2] >= flipped[..., 0]).all()


def test_entries_are_keyed_by_frozen_weights_layer_and_data(tmp_path):
    torch.manual_seed(0)
    model = MF2ForFacialStateRecognition(_config(vision_trainable_layers=1)).eval()
    batch = tiny_batch(model.config)
    cache = VisionTokenCache(model, tmp_path / "tokens")
    key = cache.key("data-v1")
    assert cache.key("data-v2") != key
    with torch.no_grad():  # the trainable top block may change: the entry stays valid
        model.mf2.vision_blocks[2].mlp.fc1.weight.add_(1.0)
    assert cache.key("data-v1") == key
    with torch.no_grad():  # a frozen block changed: the old entry must not be read
        model.mf2.vision_blocks[0].mlp.fc1.weight.add_(1.0)
    assert cache.key("data-v1") != key
    model.config.vision_trainable_layers = 0
    assert VisionTokenCache(model, tmp_path / "tokens").feature_spec()["cache_layer"] == 3
    first = cache.build(_Rows(batch), collate_fn=_stack, batch_size=4, fingerprint="data-v1")
    again = cache.build(_Rows(batch), collate_fn=_stack, batch_size=4, fingerprint="data-v1")
    assert first.path == again.path and len(cache.entries()) == 1


def test_emotion_only_branch_skips_au_vl(tmp_path):
    torch.manual_seed(0)
    model = MF2ForFacialStateRecognition(_config(emotion_reads_au_features=False)).eval()
    batch = tiny_batch(model.config)
    full = model(pixel_values=batch["pixel_values"], emotion_labels=batch["emotion_labels"])
    emotion_only = model(
        pixel_values=batch["pixel_values"], emotion_labels=batch["emotion_labels"], branches=("emotion",)
    )
    assert emotion_only.au_logits is None and emotion_only.au_embeds is None
    assert torch.allclose(emotion_only.emotion_logits, full.emotion_logits)
    assert emotion_only.loss.item() == pytest.approx(full.emotion_loss.item())


def test_collator_passes_branches_and_rejects_empty_batch():
    collator = VisionTokenCollator(branches=("emotion",))
    batch = collator([{"vision_tokens": torch.zeros(5, 4), "emotion_labels": torch.tensor(1)}] * 2)
    assert batch["branches"] == ("emotion",) and batch["vision_tokens"].shape == (2, 5, 4)
    with pytest.raises(ValueError, match="empty"):
        collator([])
    with pytest.raises(ValueError, match="MF2Processor"):
        VisionTokenCollator(with_captions=True)


def test_augmented_views_are_stored_replayable_and_drawn_with_their_boxes(tmp_path):
    torch.manual_seed(0)
    model = MF2ForFacialStateRecognition(_config()).eval()
    batch = {**tiny_batch(model.config), "example_ids": torch.arange(4)}

    def build(folder):
        cache = VisionTokenCache(model, tmp_path / folder, dtype=torch.float32, augmented_views=2)
        return cache.build(
            _Rows(batch), collate_fn=_stack, batch_size=3, fingerprint="tiny", label_names=("au_boxes", "example_ids")
        )

    entry, rebuilt = build("a"), build("b")
    assert {"view1_tokens", "view1_au_boxes", "view2_tokens", "view2_au_boxes"} <= set(entry.feature_names)
    for name in ("view1_tokens", "view2_au_boxes"):
        assert torch.equal(entry[2]["cached_features"][name], rebuilt[2]["cached_features"][name]), name
    view1 = entry[2]["cached_features"]["view1_tokens"]
    assert not torch.allclose(view1, entry[2]["cached_features"]["tokens"])
    dataset = VisionTokenDataset(entry, augment=True)
    assert dataset.views == ["tokens", "flipped_tokens", "view1_tokens", "view2_tokens"]
    torch.manual_seed(0)
    for _ in range(30):
        example = dataset[2]
        if torch.equal(example["vision_tokens"], view1):
            assert torch.equal(example["au_boxes"], entry[2]["cached_features"]["view1_au_boxes"])
            break
    else:
        pytest.fail("the first augmented view was never drawn")
    with pytest.raises(ValueError, match="example_ids"):
        VisionTokenCache(model, tmp_path / "c", augmented_views=1).build(
            _Rows(tiny_batch(model.config)),
            collate_fn=_stack,
            batch_size=4,
            fingerprint="no-ids",
            label_names=("au_boxes",),
        )
