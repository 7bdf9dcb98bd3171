"""DFNFeatureCache: same loss as the uncached path, reuse, invalidation when the backbone or the data change."""

import pytest
import torch
from dfn_testing import build, caption_batch, dfn_config, image_batch

from mf2 import MF2ForFacialStateRecognition, MF2ForPreTraining
from mf2.dfn import DFNFeatureCache, collate_cached_features, get_dfn_model


def as_dataset(batch: dict) -> list[dict]:
    size = batch["pixel_values"].shape[0]
    return [{key: value[index] for key, value in batch.items()} for index in range(size)]


def first_batches(dataset, batch_size):
    return [
        collate_cached_features([dataset[i] for i in range(start, start + batch_size)])
        for start in range(0, len(dataset), batch_size)
    ]


@pytest.mark.parametrize("model_class", [MF2ForFacialStateRecognition, MF2ForPreTraining])
def test_cached_loss_equals_uncached_loss(tmp_path, model_class):
    base = build(model_class)
    make = caption_batch if model_class is MF2ForPreTraining else image_batch
    batch = make(base.config, batch_size=6)
    model = get_dfn_model(base, dfn_config(init_weights=False))
    cached = DFNFeatureCache(model, tmp_path, shard_size=3).build(as_dataset(batch), batch_size=3)
    assert len(cached) == 6 and len(cached.manifest["shards"]) == 2
    model.train()  # dropout in the heads: the same seed must give the same loss on both paths
    for start, cached_batch in zip((0, 3), first_batches(cached, 3)):
        chunk = {key: value[start : start + 3] for key, value in batch.items()}
        torch.manual_seed(1)
        uncached = model(**chunk)
        torch.manual_seed(1)
        from_cache = model(**cached_batch)
        assert torch.equal(uncached.loss, from_cache.loss)
        assert torch.equal(uncached.au_logits, from_cache.au_logits)
        if model_class is MF2ForPreTraining:
            assert torch.equal(uncached.emo_itc, from_cache.emo_itc) and torch.equal(uncached.au_itc, from_cache.au_itc)
        # Gradients are the same too.
        grads = []
        for output in (uncached, from_cache):
            model.zero_grad()
            output.loss.backward()
            grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
        assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_cache_is_reused_and_invalidated(tmp_path):
    base = build(MF2ForFacialStateRecognition)
    model = get_dfn_model(base, dfn_config())
    dataset = as_dataset(image_batch(base.config, batch_size=4))
    cache = DFNFeatureCache(model, tmp_path)
    first = cache.build(dataset, batch_size=2)
    assert cache.build(dataset, batch_size=2).path == first.path  # reused
    assert cache.load(cache.data_fingerprint(dataset, batch_size=2)).path == first.path

    # A different adapter width does not change the features: the entry is shared.
    other = DFNFeatureCache(get_dfn_model(build(MF2ForFacialStateRecognition), dfn_config(bottleneck_size=4)), tmp_path)
    assert other.build(dataset, batch_size=2).path == first.path

    changed_data = [dict(example) for example in dataset]
    changed_data[1]["pixel_values"] = changed_data[1]["pixel_values"] + 1
    assert cache.build(changed_data, batch_size=2).path != first.path

    with torch.no_grad():
        base.mf2.au_branch.query_tokens[0, 0, 0] += 1e-3  # one backbone weight
    assert cache.load(cache.data_fingerprint(dataset, batch_size=2)) is None
    rebuilt = cache.build(dataset, batch_size=2)
    assert rebuilt.path != first.path
    assert not torch.equal(rebuilt[0]["cached_features"]["au_embeds"], first[0]["cached_features"]["au_embeds"])
    assert len(cache.entries()) == 3
    cache.clear(keep_current=cache.data_fingerprint(dataset, batch_size=2))
    assert cache.entries() == [rebuilt.path]


def test_lazy_and_in_memory_reads_agree(tmp_path):
    base = build(MF2ForFacialStateRecognition)
    model = get_dfn_model(base, dfn_config())
    cache = DFNFeatureCache(model, tmp_path, shard_size=2)
    dataset = as_dataset(image_batch(base.config, batch_size=5))
    eager = cache.build(dataset, batch_size=2, fingerprint="v1", in_memory=True)
    lazy = cache.build(dataset, batch_size=2, fingerprint="v1", in_memory=False)
    assert len(lazy) == 5 and lazy.label_names == ["au_labels", "emotion_labels"]
    for index in (0, 3, 4, -1):
        a, b = eager[index], lazy[index]
        assert a.keys() == b.keys()
        assert all(torch.equal(a["cached_features"][k], b["cached_features"][k]) for k in a["cached_features"])
        assert torch.equal(a["au_labels"], dataset[index]["au_labels"])
