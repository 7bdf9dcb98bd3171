"""The weight average: follows its warmed-up decay, lands in the model at the end, survives a resume."""

from types import SimpleNamespace

import pytest
import torch
from transformers import TrainerCallback

from mf2.training.ema import EMA_FILE, EMACallback


def _state(step: int) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, is_world_process_zero=True)


def _control(should_save: bool = False) -> SimpleNamespace:
    return SimpleNamespace(should_save=should_save)


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
    callback.on_step_end(args, _state(1), _control())  # warm-up: min(0.5, 2/11) -> weight 9/11
    assert callback.average["weight"][0, 0].item() == pytest.approx(9 / 11)
    callback.on_step_end(args, _state(100), _control())  # decay 0.5
    assert callback.average["weight"][0, 0].item() == pytest.approx(9 / 11 + (1 - 9 / 11) / 2)
    callback.on_train_end(args, None, None)
    assert model.weight[0, 0].item() == pytest.approx(9 / 11 + (1 - 9 / 11) / 2)


def test_the_average_is_saved_with_each_checkpoint_and_read_back_on_resume(tmp_path):
    model = torch.nn.Linear(2, 1)
    callback = EMACallback(model, decay=0.9)
    callback.average["weight"].fill_(0.25)
    (tmp_path / "checkpoint-7").mkdir()
    args = SimpleNamespace(output_dir=str(tmp_path))
    callback.on_save(args, _state(7), None)
    assert [path.name for path in (tmp_path / "checkpoint-7").iterdir()] == [EMA_FILE]  # no partial left beside
    resumed = EMACallback(model, decay=0.9)
    resumed.on_train_begin(args, _state(7), None)
    assert torch.equal(resumed.average["weight"], torch.full_like(model.weight, 0.25))
    with pytest.raises(ValueError, match="decay"):
        EMACallback(model, decay=1.0)


@pytest.mark.parametrize("step", [0, 9])
def test_the_average_starts_from_the_weights_training_starts_from(tmp_path, step):
    """Fresh (step 0), or resumed from a checkpoint whose average was never written (killed between the two): the
    average starts from the weights as training begins, which `Trainer` loaded from the checkpoint after the callback
    was made, never from the weights the callback first saw."""
    model = torch.nn.Linear(2, 1)
    callback = EMACallback(model, decay=0.9)
    (tmp_path / "checkpoint-9").mkdir()
    (tmp_path / "checkpoint-7").mkdir()
    callback.average["weight"].fill_(0.25)
    callback.on_save(SimpleNamespace(output_dir=str(tmp_path)), _state(7), None)
    with torch.no_grad():
        model.weight.fill_(3.0)  # the checkpoint's weights, loaded by Trainer before training begins
    callback.on_train_begin(SimpleNamespace(output_dir=str(tmp_path)), _state(step), None)
    assert torch.equal(callback.average["weight"], torch.full_like(model.weight, 3.0))


class _Regression(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 1)

    def forward(self, inputs, labels):
        return {"loss": torch.nn.functional.mse_loss(self.linear(inputs).squeeze(-1), labels)}


class _Killed(Exception):
    pass


class _KillOnSave(TrainerCallback):
    """Stops the run where a kill after `Trainer` wrote a checkpoint's state (and rotated the one before away), but
    before the callbacks' `on_save`, would."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise _Killed


def _train(output_dir, resume: str | None = None, max_steps: int = 8, kill_at: int | None = None) -> torch.Tensor:
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    model = _Regression()
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(32, 3, generator=generator)
    data = Dataset.from_dict({"inputs": inputs.tolist(), "labels": (inputs.sum(-1) + 1).tolist()})
    args = TrainingArguments(
        output_dir=str(output_dir), max_steps=max_steps, per_device_train_batch_size=4, learning_rate=0.1,
        save_strategy="steps", save_steps=4, report_to=[], use_cpu=True, seed=0, logging_strategy="no", lr_scheduler_type="constant",
        disable_tqdm=True, save_total_limit=1,
    )  # fmt: skip
    callbacks = [EMACallback(model, decay=0.9)] if kill_at is None else [_KillOnSave(kill_at), EMACallback(model, 0.9)]
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks)
    trainer.train(resume_from_checkpoint=resume)
    return model.linear.weight.detach().clone()


def test_a_run_stopped_at_a_checkpoint_and_resumed_ends_with_the_same_average(tmp_path):
    """Through `Trainer` itself: the resumed run reads the average of the checkpoint it resumes from."""
    whole = _train(tmp_path / "whole")
    _train(tmp_path / "cut", max_steps=4)  # stops at its checkpoint-4, as a killed run's last checkpoint
    resumed = _train(tmp_path / "cut", resume=str(tmp_path / "cut" / "checkpoint-4"))
    torch.testing.assert_close(resumed, whole)


def test_a_run_killed_between_a_checkpoint_and_its_save_callbacks_resumes_with_its_average(tmp_path):
    """The checkpoint is complete for a resume once `trainer_state.json` is written and the one before is deleted
    then: the average must already be in it."""
    whole = _train(tmp_path / "whole")
    with pytest.raises(_Killed):
        _train(tmp_path / "cut", kill_at=4)
    assert EMA_FILE in {path.name for path in (tmp_path / "cut" / "checkpoint-4").iterdir()}
    resumed = _train(tmp_path / "cut", resume=str(tmp_path / "cut" / "checkpoint-4"))
    torch.testing.assert_close(resumed, whole)
