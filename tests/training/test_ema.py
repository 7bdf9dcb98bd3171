"""The weight average: follows its warmed-up decay, lands in the model at the end, survives a resume."""

from types import SimpleNamespace

import pytest
import torch

from mf2.training.ema import EMA_FILE, EMACallback


def test_average_follows_the_decay_and_is_copied_into_the_model_at_the_end(tmp_path):
    model = torch.nn.Linear(2, 1, bias=False)
    frozen = torch.nn.Parameter(torch.ones(1), requires_grad=False)
    model.register_parameter("frozen", frozen)
    with torch.no_grad():
        model.weight.fill_(0.0)
    callback = EMACallback(model, decay=0.5)
    assert set(callback.average) == {"weight"}  # only what trains is averaged
    args = SimpleNamespace(output_dir=str(tmp_path))
    with torch.no_grad():
        model.weight.fill_(1.0)
    callback.on_step_end(args, SimpleNamespace(global_step=1), None)  # warm-up: min(0.5, 2/11) -> weight 9/11
    assert callback.average["weight"][0, 0].item() == pytest.approx(9 / 11)
    callback.on_step_end(args, SimpleNamespace(global_step=100), None)  # decay 0.5
    assert callback.average["weight"][0, 0].item() == pytest.approx(9 / 11 + (1 - 9 / 11) / 2)
    callback.on_train_end(args, None, None)
    assert model.weight[0, 0].item() == pytest.approx(9 / 11 + (1 - 9 / 11) / 2)


def test_the_average_is_saved_with_each_checkpoint_and_read_back_on_resume(tmp_path):
    model = torch.nn.Linear(2, 1)
    callback = EMACallback(model, decay=0.9)
    callback.average["weight"].fill_(0.25)
    (tmp_path / "checkpoint-7").mkdir()
    args = SimpleNamespace(output_dir=str(tmp_path))
    callback.on_save(args, SimpleNamespace(global_step=7), None)
    assert (tmp_path / "checkpoint-7" / EMA_FILE).is_file()
    resumed = EMACallback(model, decay=0.9)
    resumed.on_train_begin(args, None, None)
    assert torch.equal(resumed.average["weight"], torch.full_like(model.weight, 0.25))
    with pytest.raises(ValueError, match="decay"):
        EMACallback(model, decay=1.0)
