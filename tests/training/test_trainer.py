"""MF2Trainer logs every loss part; the pretrain / finetune / evaluate entry points run end to end on a tiny model."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from jsonl import read_jsonl
from safetensors import safe_open
from tiny import tiny_config, tiny_dinov2
from training_testing import pretrain_argv, read_log_history, synthetic_rows, write_setup

from mf2 import LOSS_NAMES, MF2Config, MF2ForPreTraining
from mf2.data import MFA_FEATURES
from mf2.training import MF2DataCollator, MF2Trainer, MF2TrainingArguments
from mf2.training.preprocess import add_example_ids, fill_template_captions, preprocess_dataset
from mf2.training.trainer import CheckpointWeightsError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def train_rows(tiny_setup, tmp_path_factory):
    dataset = fill_template_captions(Dataset.from_dict(synthetic_rows(12), features=MFA_FEATURES))
    processed = preprocess_dataset(dataset, tiny_setup["processor"].image_processor, tmp_path_factory.mktemp("cache"))
    return add_example_ids(processed).with_format("numpy")


def make_trainer(tiny_setup, rows, output_dir, collator=None, config=None, **options):
    torch.manual_seed(0)
    model = MF2ForPreTraining(config or tiny_setup["config"])
    values = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        max_steps=3,
        warmup_steps=0,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
    )
    values.update(options)
    return MF2Trainer(
        model=model,
        args=MF2TrainingArguments(**values),
        train_dataset=rows,
        eval_dataset=rows,
        data_collator=collator or MF2DataCollator(tiny_setup["processor"]),
    )


def test_every_loss_part_is_logged(tiny_setup, train_rows, tmp_path):
    trainer = make_trainer(tiny_setup, train_rows, tmp_path)
    trainer.train()
    steps = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(steps) == 3
    for entry in steps:
        assert set(LOSS_NAMES) <= set(entry), sorted(entry)
        # One micro-batch per logged step, all weights 1: the total is the sum of the parts.
        assert entry["loss"] == pytest.approx(sum(entry[name] for name in LOSS_NAMES), rel=1e-4)
    metrics = trainer.evaluate()
    assert {f"eval_{name}" for name in LOSS_NAMES} <= set(metrics)


def test_parts_average_over_the_logging_window_with_accumulation_and_checkpointing(tiny_setup, train_rows, tmp_path):
    trainer = make_trainer(
        tiny_setup,
        train_rows,
        tmp_path,
        max_steps=2,
        logging_steps=2,
        gradient_accumulation_steps=2,
        per_device_train_batch_size=3,
        activation_checkpointing=True,
    )
    trainer.train()
    (entry,) = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert entry["step"] == 2 and set(LOSS_NAMES) <= set(entry)
    # `loss` averages 2 steps of 2 micro-batches each (divided by the accumulation); the parts average the 4
    # micro-batches, so their sum matches the logged loss.
    assert entry["loss"] == pytest.approx(sum(entry[name] for name in LOSS_NAMES), rel=1e-4)


def test_a_resumed_run_reads_back_every_weight_of_its_checkpoint(tiny_setup, train_rows, tmp_path):
    """`save_pretrained` writes DINOv2's attention as `attention.attention.query` (its original names), which
    `Trainer`'s own resume did not map back, so a resumed run kept those weights at their starting values."""
    config = tiny_config(vision_config=tiny_dinov2())
    options = dict(config=config, max_steps=2, save_strategy="steps", save_steps=2)
    trained = make_trainer(tiny_setup, train_rows, tmp_path / "run", **options)
    trained.train()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    with safe_open(checkpoint / "model.safetensors", "pt") as saved:
        assert any(".attention.attention.query." in name for name in saved.keys())

    resumed = make_trainer(tiny_setup, train_rows, tmp_path / "run", **options)
    with torch.no_grad():
        for parameter in resumed.model.parameters():
            parameter.add_(1.0)  # nothing may keep the value it had before the resume
    resumed.train(resume_from_checkpoint=str(checkpoint))
    expected, actual = trained.model.state_dict(), resumed.model.state_dict()
    assert expected.keys() == actual.keys()
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, msg=name)


def test_the_best_model_at_the_end_is_its_checkpoint_every_weight(tiny_setup, train_rows, tmp_path):
    """`load_best_model_at_end` reads the best checkpoint back the same way, DINOv2's renamed weights included (the
    encoder trains here, so that its weights differ between the checkpoints)."""
    config = tiny_config(vision_config=tiny_dinov2(), freeze_vision_encoder=False)
    options = dict(config=config, max_steps=2, save_strategy="steps", save_steps=1, eval_strategy="steps")
    # "Best" is the higher loss, so that the best checkpoint is the first one and not the weights training ends with.
    options.update(eval_steps=1, load_best_model_at_end=True, metric_for_best_model="loss", greater_is_better=True)
    trainer = make_trainer(tiny_setup, train_rows, tmp_path / "run", save_total_limit=None, **options)
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None and best.endswith("checkpoint-1"), best
    expected = type(trainer.model).from_pretrained(best).state_dict()
    actual = trainer.model.state_dict()
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, msg=name)
    vision = [name for name in expected if ".vision_model.encoder." in name and "q_proj" in name]
    assert vision  # the weights Trainer's own loading missed


def test_a_checkpoint_of_another_model_is_refused_on_resume(tiny_setup, train_rows, tmp_path):
    other = make_trainer(tiny_setup, train_rows, tmp_path / "run", max_steps=1, save_strategy="steps", save_steps=1)
    other.train()
    trainer = make_trainer(tiny_setup, train_rows, tmp_path / "run", config=tiny_config(vision_config=tiny_dinov2()))
    with pytest.raises(CheckpointWeightsError) as error:
        trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-1"))
    assert {"missing_keys", "unexpected_keys"} <= set(error.value.problems)
    assert "remove it to start the training afresh" in str(error.value)


def test_a_stage_without_emotion_targets_logs_no_emotion_part(tiny_setup, train_rows, tmp_path):
    collator = MF2DataCollator(tiny_setup["processor"], emotion_targets=False)  # the "au_pretrain" stage
    trainer = make_trainer(tiny_setup, train_rows, tmp_path, collator=collator, max_steps=1)
    trainer.train()
    (entry,) = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert {"au_itc", "au_itm", "au_itg", "au_loss"} <= set(entry)
    assert not {"emo_itc", "emo_itm", "emo_itg", "emotion_loss"} & set(entry)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """`mf2 train` on the tiny setup, with evaluation (AU thresholds tuned and stored, predictions written)."""
    from mf2.training import pretrain

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("pretrain")
    setup = write_setup(root)
    output = root / "out"
    argv = pretrain_argv(setup, output, eval_data=f"mfa:{setup['eval']}", save_predictions=True, num_train_epochs=2)
    assert pretrain.main(argv) == 0
    return setup, output


def test_pretrain_entry_point(pretrained):
    setup, output = pretrained
    history = read_log_history(output)
    assert [entry["step"] for entry in history if "loss" in entry] == list(range(1, 13))  # 24 rows / 4, 2 epochs
    assert all(set(LOSS_NAMES) <= set(entry) for entry in history if "loss" in entry)
    config = MF2Config.from_pretrained(output)
    results = json.loads((output / "eval_results.json").read_text())
    assert config.au_thresholds == results["eval_au_thresholds"] and len(config.au_thresholds) == 12
    assert {"eval_au_f1", "eval_au_f1_tuned", "eval_emotion_accuracy", "eval_emotion_macro_f1"} <= set(results)
    predictions = read_jsonl(output / "eval_predictions.jsonl")
    assert sorted(p["example_id"] for p in predictions) == list(range(13))
    data = json.loads((output / "training_data.json").read_text())
    assert data["stage"] == "both" and data["train"][0]["rows"] == 24
    assert (output / "processor_config.json").is_file() and (output / "model.safetensors").is_file()


def test_finetune_dfn_full_and_cross_validation(pretrained, tmp_path, capsys):
    from mf2.training import evaluate, finetune

    setup, output = pretrained
    common = dict(model_name_or_path=output, config_name=None, tokenizer_name=None, num_train_epochs=2)
    dfn_dir = tmp_path / "dfn"
    argv = pretrain_argv(
        setup, dfn_dir, eval_data=f"mfa:{setup['eval']}", dfn_bottleneck_size=8, evaluate_base=True, **common
    )
    assert finetune.main(argv) == 0
    assert {"adapter_config.json", "adapter_model.safetensors", "thresholds.json"} <= {
        p.name for p in dfn_dir.iterdir()
    }
    assert not (dfn_dir / "model.safetensors").exists()
    dfn_results = json.loads((dfn_dir / "eval_results.json").read_text())
    thresholds = json.loads((dfn_dir / "thresholds.json").read_text())["au_thresholds"]
    assert thresholds == dfn_results["eval_au_thresholds"]
    # Before fine-tuning, the fresh adapter reproduces the pretrained model's evaluation.
    base = json.loads((dfn_dir / "base_eval_results.json").read_text())
    pretrained_results = json.loads((output / "eval_results.json").read_text())
    assert base["base_eval_emotion_accuracy"] == pytest.approx(pretrained_results["eval_emotion_accuracy"])
    assert base["base_eval_emotion_macro_f1"] == pytest.approx(pretrained_results["eval_emotion_macro_f1"])
    trainable = json.loads((dfn_dir / "train_results.json").read_text())
    assert 0 < trainable["trainable_parameters"] < trainable["total_parameters"] / 2
    # A --resume with other data (here: other settings too) is refused: the adapter would be half another run's.
    other = pretrain_argv(setup, dfn_dir, train_data=f"mfa:{setup['eval']}", resume=True, learning_rate=5e-2, **common)
    assert finetune.main(other) == 2
    said = capsys.readouterr().err.splitlines()[-1]
    assert "holds a run started with another data" in said, said

    full_dir = tmp_path / "full"
    assert finetune.main(pretrain_argv(setup, full_dir, eval_data=f"mfa:{setup['eval']}", full=True, **common)) == 0
    assert MF2Config.from_pretrained(full_dir).au_thresholds is not None

    cv_dir = tmp_path / "cv"
    # Evaluation options have nothing to score beside --cv_folds; more folds than subjects cannot be made: one line.
    assert finetune.main(pretrain_argv(setup, cv_dir, cv_folds=3, eval_data=f"mfa:{setup['eval']}", **common)) == 2
    assert "drop --eval_data" in capsys.readouterr().err.splitlines()[-1]
    assert finetune.main(pretrain_argv(setup, cv_dir, cv_folds=99, **common)) == 2
    assert "give at most that" in capsys.readouterr().err.splitlines()[-1]
    assert not cv_dir.exists() or not list(cv_dir.iterdir())  # a refused run leaves nothing a fresh run would refuse
    assert finetune.main(pretrain_argv(setup, cv_dir, cv_folds=3, **common)) == 0
    report = json.loads((cv_dir / "cv_results.json").read_text())
    assert report["num_folds"] == 3 and sum(fold["test_rows"] for fold in report["folds"]) == 24
    tested = [set(fold["test_groups"]) for fold in report["folds"]]
    assert all(not a & b for i, a in enumerate(tested) for b in tested[i + 1 :])  # subject-wise
    assert "pooled_au_f1" in report["pooled"] and "test_au_f1" in report["mean"]
    # Killed in its last fold: --resume reads the finished folds and trains only that one, to the same report.
    (cv_dir / "fold-2" / "fold_result.json").unlink()
    kept = {fold: (cv_dir / f"fold-{fold}" / "fold_result.json").stat().st_mtime_ns for fold in (0, 1)}
    assert finetune.main(pretrain_argv(setup, cv_dir, cv_folds=3, resume=True, **common)) == 0
    assert {fold: (cv_dir / f"fold-{fold}" / "fold_result.json").stat().st_mtime_ns for fold in (0, 1)} == kept
    resumed = json.loads((cv_dir / "cv_results.json").read_text())
    assert resumed["pooled"] == pytest.approx(report["pooled"]) and resumed["folds"][:2] == report["folds"][:2]
    # --resume with other settings is refused in one line: the folds kept are another run's results.
    assert finetune.main(pretrain_argv(setup, cv_dir, cv_folds=3, resume=True, learning_rate=3e-3, **common)) == 2
    assert "holds a run started with another training" in capsys.readouterr().err
    assert {fold: (cv_dir / f"fold-{fold}" / "fold_result.json").stat().st_mtime_ns for fold in (0, 1)} == kept
    # A folder whose run key is gone (a run of an older mf2) still never reads folds of another run: trained again.
    (cv_dir / "run_key.json").unlink()
    assert finetune.main(pretrain_argv(setup, cv_dir, cv_folds=3, resume=True, learning_rate=3e-3, **common)) == 0
    assert all((cv_dir / f"fold-{fold}" / "fold_result.json").stat().st_mtime_ns != kept[fold] for fold in (0, 1))

    # Evaluating the adapter reproduces the fine-tuning's evaluation, with the thresholds tuned there (thresholds.json).
    eval_dir = tmp_path / "eval"
    argv = pretrain_argv(
        setup,
        eval_dir,
        eval_data=f"mfa:{setup['eval']}",
        train_data=None,
        adapter_name_or_path=dfn_dir,
        tune_thresholds=False,
        **common,
    )
    assert evaluate.main(argv) == 0
    evaluated = json.loads((eval_dir / "eval_results.json").read_text())
    assert evaluated["eval_au_f1"] == pytest.approx(dfn_results["eval_au_f1_tuned"], abs=1e-6)
    assert evaluated["eval_emotion_accuracy"] == pytest.approx(dfn_results["eval_emotion_accuracy"], abs=1e-6)
    assert np.isfinite(evaluated["eval_emotion_macro_f1"])


@pytest.mark.parametrize(("stage", "absent"), [("no_au_vl", "au_"), ("no_emo_vl", "emo_")])
def test_one_branch_ablation_stages(stage, absent, tmp_path):
    from mf2.training import pretrain

    setup = write_setup(tmp_path, train_size=8, eval_size=4)
    output = tmp_path / "out"
    assert pretrain.main(pretrain_argv(setup, output, stage=stage, max_steps=1)) == 0
    config = MF2Config.from_pretrained(output)
    assert (config.use_au_branch, config.use_emotion_branch) == (stage == "no_emo_vl", stage == "no_au_vl")
    (entry,) = [entry for entry in read_log_history(output) if "loss" in entry]
    assert {"au_loss", "emotion_loss"} <= set(entry)  # both recognisers stay, reading the remaining branch
    assert not [name for name in entry if name.startswith(absent) and name != "au_loss"]


def test_predictions_that_are_not_finite_are_an_error_not_a_score(tmp_path, capsys):
    from mf2 import MF2ForFacialStateRecognition
    from mf2.training import evaluate
    from mf2.training.scoring import NonFinitePredictionsError, check_finite

    check_finite({"au_probs": np.zeros((3, 12)), "emotion_logits": np.zeros((3, 8)), "au_labels": None})
    with pytest.raises(NonFinitePredictionsError) as raised:
        check_finite({"au_probs": np.zeros((3, 12)), "emotion_logits": np.array([[0.0] * 8, [np.nan] * 8, [0.0] * 8])})
    assert (raised.value.part, raised.value.rows, raised.value.total) == ("emotion_logits", [1], 3)

    # An infinite AU logit is a finite probability (0 or 1) after the sigmoid: the logits are what is checked.
    with pytest.raises(NonFinitePredictionsError, match="au_logits"):
        check_finite({"au_logits": np.array([[0.0] * 11 + [np.inf]]), "au_probs": np.array([[0.5] * 11 + [1.0]])})

    setup = write_setup(tmp_path, train_size=4, eval_size=6)
    for part, parameter in (("emotion_logits", "emotion_classifier.weight"), ("au_logits", "au_bias")):
        model = MF2ForFacialStateRecognition(MF2Config.from_pretrained(setup["config"]))
        with torch.no_grad():  # as a diverged training leaves it
            model.heads.get_parameter(parameter).fill_(float("nan") if part == "emotion_logits" else float("inf"))
        model.save_pretrained(tmp_path / "diverged")
        argv = pretrain_argv(
            setup, tmp_path / "eval", model_name_or_path=tmp_path / "diverged", eval_data=f"mfa:{setup['eval']}"
        )
        argv = argv[argv.index("--tokenizer_name") :]  # no --config_name: the checkpoint is the model
        assert evaluate.main([*argv, "--model_name_or_path", str(tmp_path / "diverged")]) == 2
        (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mf2 evaluate:")]
        assert f"{part} are not finite (NaN or infinite) for 6 of 6 examples" in line
    assert evaluate.main([*argv, "--store_thresholds", "true", "--tune_thresholds", "false"]) == 2
    assert "--store_thresholds stores the thresholds --tune_thresholds tunes" in capsys.readouterr().err


def test_a_loss_that_is_not_finite_stops_training_in_one_line_before_anything_is_saved(tiny_setup, tmp_path, capsys):
    """`Trainer` alone logs a NaN step as 0 and goes on, to a saved model of NaN weights marked trained."""
    from mf2.training import pretrain
    from mf2.training.trainer import NonFiniteLossError

    setup = write_setup(tmp_path, train_size=8, eval_size=4)
    model = MF2ForPreTraining(MF2Config.from_pretrained(setup["config"]))
    with torch.no_grad():
        model.heads.emotion_classifier.weight.fill_(float("nan"))  # as a diverged step leaves it
    model.save_pretrained(tmp_path / "diverged")
    argv = pretrain_argv(setup, tmp_path / "out", num_train_epochs=1)
    argv = [*argv[: argv.index("--config_name")], *argv[argv.index("--config_name") + 2 :]]
    assert pretrain.main([*argv, "--model_name_or_path", str(tmp_path / "diverged")]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mf2 train:")]
    assert "the training loss is not finite (NaN or infinite) after step 0 (" in line and "emotion_loss nan" in line
    assert not (tmp_path / "out" / "model.safetensors").exists()
    error = NonFiniteLossError(3, {"au_loss": float("inf")})
    assert (error.step, error.parts) == (3, {"au_loss": float("inf")})


def test_a_fresh_run_over_an_earlier_one_is_refused_unless_it_overwrites_it(tmp_path, capsys):
    """An earlier run's checkpoints would be resumed as this run's, its thresholds loaded with this run's adapter and
    its results published as this run's: a fresh run over it is one line, `--overwrite_output_dir` removes them."""
    from mf2.training import pretrain

    setup = write_setup(tmp_path, train_size=8, eval_size=4)
    output = tmp_path / "out"
    (output / "checkpoint-1500").mkdir(parents=True)
    (output / "thresholds.json").write_text('{"au_thresholds": [0.1]}')
    (output / "notes.txt").write_text("the user's own file")
    argv = pretrain_argv(setup, output, num_train_epochs=1)
    assert pretrain.main(argv) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mf2 train:")]
    assert f"--output_dir {output} holds an earlier run (checkpoint-1500, thresholds.json)" in line
    assert "--resume" in line and "--overwrite_output_dir" in line
    assert pretrain.main([*argv, "--overwrite_output_dir", "true"]) == 0
    assert not (output / "checkpoint-1500").exists() and not (output / "thresholds.json").exists()
    assert (output / "notes.txt").is_file() and (output / "model.safetensors").is_file()
    # Starting from the model in that folder: --overwrite_output_dir would delete it before reading it.
    assert pretrain.main([*argv, "--model_name_or_path", str(output), "--overwrite_output_dir", "true"]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mf2 train:")]
    assert "is the folder of --model_name_or_path" in line and (output / "model.safetensors").is_file()


def test_the_shipped_model_is_never_an_output_dir():
    from types import SimpleNamespace

    from mf2.data import DataError
    from mf2.integration.default_model import default_model_path
    from mf2.training.run_setup import check_output_apart

    for output in (default_model_path(), default_model_path() / "dfn"):
        with pytest.raises(DataError, match="the model shipped in the mf2 package"):
            check_output_apart(SimpleNamespace(model_name_or_path=None), str(output))
    check_output_apart(SimpleNamespace(model_name_or_path=str(default_model_path())), "outputs/elsewhere")


def test_thresholds_are_stored_whole_into_a_local_checkpoint_only(tmp_path, monkeypatch):
    from mf2.data import DataError
    from mf2.integration.default_model import default_model_path
    from mf2.training.scoring import store_thresholds

    setup = write_setup(tmp_path, train_size=4, eval_size=4)
    model_dir = tmp_path / "model"
    MF2ForPreTraining(MF2Config.from_pretrained(setup["config"])).save_pretrained(model_dir)
    assert store_thresholds([0.25] * 12, model_dir) == model_dir / "config.json"
    assert MF2Config.from_pretrained(model_dir).au_thresholds == [0.25] * 12
    before = (model_dir / "config.json").read_text()

    def half_then_fail(config, path, use_diff=True):
        Path(path).write_text(before[: len(before) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(MF2Config, "to_json_file", half_then_fail)
    with pytest.raises(OSError):
        store_thresholds([0.5] * 12, model_dir)
    assert (model_dir / "config.json").read_text() == before  # a failed write leaves the config as it was
    monkeypatch.undo()
    with pytest.raises(DataError, match="shipped in the mf2 package"):
        store_thresholds([0.5] * 12, default_model_path())
    with pytest.raises(DataError, match="holds no config.json"):
        store_thresholds([0.5] * 12, "someone/some-hub-model")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    assert store_thresholds([0.5] * 12, model_dir, adapter_dir=adapter).name == "thresholds.json"
    pushed = tmp_path / "pushed"  # a downloaded repository of `mf2 push`: the adapter and its thresholds in dfn/
    (pushed / "dfn").mkdir(parents=True)
    (pushed / "dfn" / "adapter_config.json").write_text("{}")
    assert store_thresholds([0.5] * 12, model_dir, adapter_dir=pushed) == pushed / "dfn" / "thresholds.json"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="holds no adapter_config.json"):  # a Hub id: not a new local folder of its name
        store_thresholds([0.5] * 12, model_dir, adapter_dir="someone/some-adapter")
    assert not (tmp_path / "someone").exists()


def test_nothing_left_to_evaluate_is_a_data_error_not_a_score():
    from datasets import Dataset

    from mf2.data.schema import DataError
    from mf2.training.evaluate import rows_to_evaluate

    rows = Dataset.from_dict({"x": [1, 2, 3]})
    assert len(rows_to_evaluate(rows, 2)) == 2 and len(rows_to_evaluate(rows, None)) == 3
    with pytest.raises(DataError, match="no rows left to evaluate"):
        rows_to_evaluate(rows.select([]), None)  # every image faceless under --no_face skip
