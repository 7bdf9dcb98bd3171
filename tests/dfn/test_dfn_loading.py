"""`mf2.dfn.loading` without a network: where an adapter is looked for in a repository, and what becomes of its AU
thresholds when the Hub cannot be asked."""

import pytest
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

from mf2.dfn import loading


def fake_hub(monkeypatch, present: set[str], offline: bool = False):
    """`hf_hub_download` answering from the file names in `present` (offline: nothing is cached)."""
    import huggingface_hub

    def download(repo_id, filename, subfolder=None, **_):
        name = f"{subfolder}/{filename}" if subfolder else filename
        if offline:
            raise LocalEntryNotFoundError(f"{name} is not cached")
        if name not in present:
            raise EntryNotFoundError(f"{name} not in {repo_id}")
        raise AssertionError("only the missing files are asked for in these tests")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)


def test_a_repository_mf2_push_wrote_is_found_in_its_dfn_folder(monkeypatch, tmp_path):
    pushed = tmp_path / "pushed"
    (pushed / "dfn").mkdir(parents=True)
    (pushed / "dfn" / "adapter_config.json").write_text("{}")
    assert loading.adapter_subfolder(pushed) == "dfn"
    (pushed / "adapter_config.json").write_text("{}")
    assert loading.adapter_subfolder(pushed) is None  # an adapter at the root is the one asked for
    assert loading.adapter_subfolder(pushed, subfolder="other") == "other"
    fake_hub(monkeypatch, present=set())
    assert loading.adapter_subfolder("someone/nothing-here") is None  # PEFT's own load says what is missing


def test_hub_repository_layouts(monkeypatch):
    calls = []
    import huggingface_hub

    def download(repo_id, filename, subfolder=None, **_):
        calls.append(subfolder)
        if subfolder != "dfn":
            raise EntryNotFoundError("not at the root")
        return "/cache/adapter_config.json"

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    assert loading.adapter_subfolder("someone/mf2") == "dfn" and calls == [None, "dfn"]


def test_thresholds_that_cannot_be_fetched_stop_the_load_and_missing_ones_do_not(monkeypatch):
    fake_hub(monkeypatch, present=set(), offline=True)
    with pytest.raises(loading.AdapterLoadError, match="thresholds.json could not be read"):
        loading.read_thresholds("someone/adapter", "dfn")  # offline: it may exist, so the base's must not stand in
    fake_hub(monkeypatch, present=set())
    assert loading.read_thresholds("someone/adapter", "dfn") is None


def test_an_adapter_on_another_base_model_warns(tmp_path):
    """Same architecture, other weights (e.g. a newer mf2-base under an adapter trained on the older one): it loads,
    and says that its answers are not the ones it was tuned for."""
    import warnings

    import torch
    from tiny import tiny_config

    from mf2 import MF2ForFacialStateRecognition
    from mf2.dfn import AdapterBaseWarning, DFNConfig, get_dfn_model, load_adapter

    def model(seed: int) -> MF2ForFacialStateRecognition:
        torch.manual_seed(seed)
        return MF2ForFacialStateRecognition(tiny_config())

    get_dfn_model(model(0), DFNConfig(num_layers=2, bottleneck_size=8)).save_pretrained(tmp_path / "adapter")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_adapter(model(0), tmp_path / "adapter")  # its own base: silent
        load_adapter(model(0).half(), tmp_path / "adapter")  # its float16 copy: the same weights
        load_adapter(model(1).bfloat16(), tmp_path / "adapter")  # bfloat16 cannot be compared: silent
    with pytest.warns(AdapterBaseWarning, match="trained on another base model"):
        load_adapter(model(1), tmp_path / "adapter")


def test_one_config_object_for_two_bases_keeps_each_adapters_own_base():
    """`get_dfn_model` fills in its model's defaults and fingerprint on a copy: the caller's config object, given to
    a second model, does not carry the first model's (the warning would point at the wrong base)."""
    import torch
    from dfn_testing import build, dfn_config
    from peft import get_peft_model

    from mf2 import MF2ForFacialStateRecognition
    from mf2.dfn import get_dfn_model
    from mf2.dfn.base_model import base_fingerprint

    shared = dfn_config()
    first, second = build(MF2ForFacialStateRecognition, 0), build(MF2ForFacialStateRecognition, 1)
    one, two = get_dfn_model(first, shared), get_dfn_model(second, shared)
    assert shared.base_model_fingerprint is None and shared.modalities is None
    assert one.peft_config["default"].base_model_fingerprint == base_fingerprint(build(MF2ForFacialStateRecognition, 0))
    assert two.peft_config["default"].base_model_fingerprint == base_fingerprint(build(MF2ForFacialStateRecognition, 1))
    torch.manual_seed(0)
    through_peft = get_peft_model(build(MF2ForFacialStateRecognition, 0), dfn_config())  # PEFT's route: the same
    assert (
        through_peft.peft_config["default"].base_model_fingerprint == one.peft_config["default"].base_model_fingerprint
    )


def test_au_thresholds_belong_to_their_adapter(tmp_path, monkeypatch):
    """Each adapter's thresholds while it is active, the base model's when adapters are off, and saved with it."""
    import json

    from dfn_testing import build, dfn_config

    from mf2 import MF2ForFacialStateRecognition
    from mf2.dfn import get_dfn_model, load_adapter

    for name, value in (("a", 0.2), ("b", 0.8)):
        get_dfn_model(build(MF2ForFacialStateRecognition), dfn_config()).save_pretrained(tmp_path / name)
        (tmp_path / name / "thresholds.json").write_text(json.dumps({"au_thresholds": [value] * 12}))
    monkeypatch.setenv("HOME", str(tmp_path))
    model = load_adapter(build(MF2ForFacialStateRecognition), "~/a")  # a home-relative folder, as typed
    assert model.config.au_decision_thresholds == [0.2] * 12
    with model.disable_adapter():
        assert model.config.au_decision_thresholds == [0.5] * 12  # the base model's
    model.load_adapter(str(tmp_path / "b"), adapter_name="b")  # PEFT's way reads them too
    model.set_adapter("b")
    assert model.config.au_decision_thresholds == [0.8] * 12
    model.set_adapter("default")
    model.save_pretrained(tmp_path / "again")
    assert load_adapter(build(MF2ForFacialStateRecognition), tmp_path / "again").config.au_thresholds == [0.2] * 12
