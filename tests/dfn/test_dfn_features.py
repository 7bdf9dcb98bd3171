"""`DFNFeatures`: the one feature object of the tuner and the cache, and `return_dict` on the DFN model."""

import pytest
import torch
from dfn_testing import build, caption_batch, dfn_config, image_batch

from mf2 import MF2ForFacialStateRecognition, MF2ForPreTraining
from mf2.dfn import DFNFeatureCache, DFNFeatures, collate_cached_features, get_dfn_model


def test_extracted_features_are_one_model_output_with_named_fields():
    model = get_dfn_model(build(MF2ForPreTraining), dfn_config(init_weights=False)).eval()
    batch = caption_batch(model.base_model.model.config)
    features = model.extract_features(**{k: v for k, v in batch.items() if not k.endswith("labels")})
    assert isinstance(features, DFNFeatures)
    assert set(features.keys()) == set(DFNFeatures.__dataclass_fields__)  # both branches, both modalities
    assert features.branch("au", "image_states") is features.au_image_states
    # A plain dict of the same fields (a collated cache batch) gives the same outputs.
    labels = {k: batch[k] for k in ("au_labels", "emotion_labels")}
    with torch.no_grad():
        from_object = model(cached_features=features, **labels)
        from_dict = model(cached_features=dict(features), **labels)
    assert torch.equal(from_object.loss, from_dict.loss) and torch.equal(from_object.au_logits, from_dict.au_logits)


def test_unknown_cached_feature_is_an_error():
    with pytest.raises(ValueError, match="unknown cached feature"):
        DFNFeatures.from_mapping({"emotion_embeds": torch.zeros(1, 2), "stale_name": torch.zeros(1)})


def test_cache_stores_the_feature_fields(tmp_path):
    model = get_dfn_model(build(MF2ForFacialStateRecognition), dfn_config()).eval()
    batch = image_batch(model.base_model.model.config)
    dataset = [{key: value[index] for key, value in batch.items()} for index in range(4)]
    cached = DFNFeatureCache(model, tmp_path).build(dataset, batch_size=2)
    assert set(cached.feature_names) <= set(DFNFeatures.__dataclass_fields__)
    collated = collate_cached_features([cached[index] for index in range(4)])
    assert isinstance(DFNFeatures.from_mapping(collated["cached_features"]), DFNFeatures)


def test_dfn_model_honours_return_dict():
    model = get_dfn_model(build(MF2ForFacialStateRecognition), dfn_config(init_weights=False)).eval()
    batch = image_batch(model.base_model.model.config)
    with torch.no_grad():
        output = model(**batch)
        as_tuple = model(**batch, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(output.to_tuple())
    assert all(torch.equal(first, second) for first, second in zip(as_tuple, output.to_tuple()))
