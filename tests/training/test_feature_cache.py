"""The feature cache's build: an interrupted build resumes after its last shard and ends as an uninterrupted one."""

import pytest
import torch
from torch import nn

from mf2.training.feature_cache import STAGING_PREFIX, FeatureCache


class _Interrupted(Exception):
    pass


class _LinearCache(FeatureCache):
    """Features of a frozen linear layer; `stop_after` batches end the build as a killed process would."""

    def __init__(self, cache_dir, stop_after=None):
        super().__init__(cache_dir, shard_size=2)
        torch.manual_seed(0)
        self.layer = nn.Linear(4, 3)
        self.stop_after, self.batches_seen = stop_after, 0

    def source_modules(self):
        return [self.layer]

    def feature_spec(self):
        return {}

    def extract(self, batch):
        if self.stop_after is not None and self.batches_seen == self.stop_after:
            raise _Interrupted
        self.batches_seen += 1
        return {"out": self.layer(batch["x"])}

    @staticmethod
    def batch_size_of(batch):
        return int(batch["x"].shape[0])


ROWS = [{"x": torch.arange(4.0) + index, "emotion_labels": torch.tensor(index % 8)} for index in range(10)]


def _build(cache, progress=None):
    return cache.build(ROWS, batch_size=2, fingerprint="rows", label_names=("emotion_labels",), progress=progress)


def _features(entry):
    return torch.stack([entry[index]["cached_features"]["out"] for index in range(len(entry))])


def test_interrupted_build_resumes_after_its_last_shard(tmp_path):
    with pytest.raises(_Interrupted):
        _build(_LinearCache(tmp_path / "cache", stop_after=3))
    assert not _LinearCache(tmp_path / "cache").entries()  # nothing readable yet

    resumed, reported = _LinearCache(tmp_path / "cache"), []
    entry = _build(resumed, progress=lambda done, total: reported.append((done, total)))
    assert resumed.batches_seen == 2  # 3 of 5 batches were already on disk
    assert reported == [(6, 10), (8, 10), (10, 10)]  # where it starts, then each batch
    fresh = _build(_LinearCache(tmp_path / "fresh"))
    assert len(entry) == len(fresh) == 10 and entry.manifest["key"] == fresh.manifest["key"]
    assert torch.equal(_features(entry), _features(fresh))
    assert [entry[i]["emotion_labels"] for i in range(10)] == [row["emotion_labels"] for row in ROWS]
    assert not list((tmp_path / "cache").glob(f"{STAGING_PREFIX}*"))  # staging renamed, lock removed


def test_a_build_asked_for_other_labels_starts_again(tmp_path):
    with pytest.raises(_Interrupted):
        _build(_LinearCache(tmp_path, stop_after=2))
    cache = _LinearCache(tmp_path)
    entry = cache.build(ROWS, batch_size=2, fingerprint="rows", label_names=())
    assert cache.batches_seen == 5 and entry.label_names == []


def test_a_finished_entry_does_not_serve_a_build_that_asks_for_labels_it_lacks(tmp_path):
    """An entry built with fewer labels (the API's defaults) would hand `mf2 finetune` rows without the ones it needs,
    and it would train without them in silence: the labels are part of the key."""
    rows = [{**row, "au_labels": torch.zeros(12)} for row in ROWS]
    cache = _LinearCache(tmp_path)
    fewer = cache.build(rows, batch_size=2, fingerprint="rows", label_names=("au_labels",))
    assert fewer.label_names == ["au_labels"] and cache.batches_seen == 5
    more = cache.build(rows, batch_size=2, fingerprint="rows", label_names=("emotion_labels", "au_labels"))
    assert more.label_names == ["au_labels", "emotion_labels"] and cache.batches_seen == 10
    again = cache.build(rows, batch_size=2, fingerprint="rows", label_names=("au_labels", "emotion_labels"))
    assert again.path == more.path and cache.batches_seen == 10  # the order the labels are named in does not matter
    assert cache.load("rows", ("au_labels",)).path == fewer.path and cache.load("rows").path == more.path


def test_leftovers_of_another_entry_are_not_resumed_and_clear_removes_them(tmp_path):
    with pytest.raises(_Interrupted):
        _build(_LinearCache(tmp_path, stop_after=2))
    cache = _LinearCache(tmp_path)
    cache.layer.weight.data += 1  # other weights: another key, so the leftover shards must not be reused
    _build(cache)
    assert cache.batches_seen == 5
    cache.clear(keep_current="rows", label_names=("emotion_labels",))
    assert [path.name for path in tmp_path.iterdir()] == [cache.key("rows", label_names=("emotion_labels",))]


@pytest.mark.parametrize("in_memory", [True, False])
def test_labels_are_read_without_the_features(tmp_path, in_memory):
    entry = _build(_LinearCache(tmp_path))
    reread = type(entry)(entry.path, in_memory=in_memory)
    assert torch.equal(reread.labels("emotion_labels"), torch.stack([row["emotion_labels"] for row in ROWS]))
    with pytest.raises(KeyError, match="no label 'au_labels'"):
        reread.labels("au_labels")


def test_the_progress_eta_counts_only_this_process_pace(caplog, monkeypatch):
    """A build resumed at 8,192 of 25,045 images must not promise to finish at once."""
    from mf2.training import recipe_progress

    clock = iter([100.0, 160.0])  # the first call (where the build starts), the call 60 s later
    monkeypatch.setattr(recipe_progress.time, "perf_counter", lambda: next(clock))
    progress = recipe_progress.Progress("tokens", every=0.0)
    with caplog.at_level("INFO", logger="mf2.recipe"):
        progress(8192, 25045)
        progress(8192 + 600, 25045)  # 600 images in 60 s: 10 per second
    assert [record.getMessage() for record in caplog.records] == [
        "tokens: 8192/25045 to start from",
        "tokens: 8792/25045, 60 s elapsed, ETA 1625 s",
    ]
