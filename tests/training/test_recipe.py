"""`mf2 recipe` end to end on a few development images (the smoke preset): every stage, resume, the exported model."""

import json
import os
from dataclasses import asdict, replace

import pytest
import torch
import yaml

from mf2 import MF2ForFacialStateRecognition
from mf2.local_files import exclusive_lock
from mf2.training.recipe import PRESETS, RECIPE_STAGES, Recipe, RecipeSettings, main
from mf2.training.recipe_stages import DEVELOPMENT_FILES, LOCK_NAME, RecipeSettingsError


@pytest.mark.slow
def test_every_stage_runs_and_exports_a_trained_model(smoke_run):
    output, _ = smoke_run
    for stage in RECIPE_STAGES:
        assert (output / stage / "done.json").is_file(), stage
        assert not (output / stage / "checkpoints").exists(), stage  # removed once the stage's model is saved
    export = output / "mf2-base"
    for name in (
        "config.json",
        "model.safetensors",
        "processor_config.json",
        "README.md",
        "eval_results.json",
        "cv_results.json",
        "training_data.json",
    ):
        assert (export / name).is_file(), name
    config = json.loads((export / "config.json").read_text())
    assert config["trained"] is True and config["model_name"] == "mf2-base" and len(config["au_thresholds"]) == 12
    assert config["dtype"] == "float32" and config["emotion_reads_au_features"] is True
    # No folder of the training machine, at the top or in a sub-config (the encoders' cache).
    assert '"_name_or_path"' not in (export / "config.json").read_text()
    model = MF2ForFacialStateRecognition.from_pretrained(str(export))
    hidden = model.config.qformer_config.hidden_size
    assert model.heads.emotion_norm.normalized_shape == (2 * hidden,)  # Emo-VL and AU-VL, refit in emotion_head
    assert model.dtype == torch.float32 and not any("alignment" in name for name, _ in model.named_parameters())
    card = (export / "README.md").read_text()
    assert "research only" in card and "CK+" in card and "mf2 recipe" in card
    # The card's numbers are the run's (the smoke preset: 24 valid faces, 2 folds, 16 FER+ images for pretraining),
    # not the shipped run's.
    assert "FER+ validation (24 faces" in card and "the `2-fold CV` rows" in card and "5-fold" not in card
    assert "16 FER+ train images + CK+ dev" in card
    # The model-index names each result by its data and its metric, never two rows alike.
    index = yaml.safe_load(card.split("---")[1])["model-index"][0]["results"]
    named = [(row["dataset"]["name"], row["metrics"][0]["name"]) for row in index]
    assert (
        len(set(named)) == len(named)
        and ("FER+ (FER2013 images with FER+ labels): valid.parquet", "Emotion accuracy") in named
    )
    assert {row["dataset"]["type"] for row in index} == {"ferplus", "ckplus"}
    per_au = card[card.index("F1 per AU") :].splitlines()[2]
    assert per_au.startswith("| AU1 | AU2 | AU4 | AU6 |")  # AU order, not alphabetical
    transfer = json.loads((output / "emotion" / "metrics.json").read_text())
    assert 0.0 <= transfer["ckplus_peak_accuracy_of_ferplus_model"] <= 1.0 and transfer["ckplus_peak_rows"] > 0
    cv = json.loads((export / "cv_results.json").read_text())
    assert cv["num_folds"] == 2 and 0.0 <= cv["mean"]["au_f1_train_tuned"] <= 1.0
    timings = json.loads((output / "timings.json").read_text())
    assert set(timings) == set(RECIPE_STAGES)


@pytest.mark.slow
@pytest.mark.parametrize("branch", ["use_emotion_branch", "use_au_branch"])
def test_a_model_without_one_branch_goes_through_every_stage(smoke_run, tmp_path, data_dir, branch):
    """Table IV's "w/o Emo-VL" and "w/o AU-VL": each recogniser reads the branch that is left."""
    output, _ = smoke_run
    settings = replace(RecipeSettings(), **PRESETS["smoke"], **{branch: False})
    recipe = Recipe(data_dir, tmp_path, tmp_path / "mf2-base", settings, "cpu")
    recipe.cache_dir = output / "cache"  # the smoke run's vision tokens: the same frozen encoder below the branches
    recipe.run()
    model = MF2ForFacialStateRecognition.from_pretrained(str(tmp_path / "mf2-base"))
    left = model.mf2.au_branch if branch == "use_emotion_branch" else model.mf2.emotion_branch
    assert getattr(model.config, branch) is False and left is not None
    assert model.heads.emotion_norm.normalized_shape == (model.config.qformer_config.hidden_size,)
    metrics = json.loads((tmp_path / "emotion_head" / "metrics.json").read_text())
    assert 0.0 <= metrics["ferplus_valid_accuracy"] <= 1.0
    assert json.loads((tmp_path / "mf2-base" / "cv_results.json").read_text())["num_folds"] == 2
    # Never taken for the shipped model: its own name, and a card that says which branch it has.
    gone = "emo-vl" if branch == "use_emotion_branch" else "au-vl"
    assert model.config.model_name == f"mf2-base-without-{gone}"
    card = (tmp_path / "mf2-base" / "README.md").read_text()
    assert "it is not the shipped model" in card and "Emo-VL and AU-VL Q-Formers" not in card


@pytest.mark.slow
def test_a_second_run_resumes_without_redoing_finished_stages(smoke_run, capsys):
    output, recipe = smoke_run
    marks = {stage: (output / stage / "done.json").stat().st_mtime_ns for stage in RECIPE_STAGES}
    recipe.run()
    assert {stage: (output / stage / "done.json").stat().st_mtime_ns for stage in RECIPE_STAGES} == marks
    # An interrupted stage (no done.json) runs again, from its last checkpoint where it has one.
    (output / "export" / "done.json").unlink()
    recipe.run(("export",))
    assert (output / "export" / "done.json").is_file() and (output / "mf2-base" / "config.json").is_file()


def test_command_line_refuses_a_folder_without_the_data(tmp_path, capsys):
    assert main(["--data", str(tmp_path), "--output_dir", str(tmp_path / "out")]) == 2
    assert "lacks ferplus/train.parquet" in capsys.readouterr().err
    assert main(["--output_dir", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("mf2 recipe: --data is required")
    config = tmp_path / "recipe.yaml"  # --data may come from the YAML file, as every option may
    config.write_text(f"data: {tmp_path / 'elsewhere'}\n")
    assert main(["--config", str(config), "--output_dir", str(tmp_path / "out")]) == 2
    assert f"{tmp_path / 'elsewhere'} lacks ferplus/train.parquet" in capsys.readouterr().err
    with pytest.raises(SystemExit) as raised:
        main(["--data", str(tmp_path), "--colour", "blue"])
    assert raised.value.code == 2 and "unrecognized arguments: --colour blue" in capsys.readouterr().err


def test_settings_are_read_by_the_training_commands_parser_over_the_preset(tmp_path, capsys):
    """`mf2 recipe` reads its settings as the other training commands read theirs (typed options, `--config` YAML):
    the command line over the YAML file over the preset."""
    from mf2.training.recipe_settings import recipe_arguments

    data = ["--data", str(tmp_path)]
    args, settings = recipe_arguments([*data, "--soft_targets", "false", "--ema_decay", "0", "--augmented_views", "3"])
    assert settings.soft_targets is False and settings.ema_decay == 0.0 and settings.augmented_views == 3
    assert args.preset == "cpu" and settings.emotion_epochs == RecipeSettings().emotion_epochs
    config = tmp_path / "recipe.yaml"
    config.write_text("emotion_epochs: 5\nau_epochs: 2\n")
    _, settings = recipe_arguments([*data, "--preset", "gpu", "--config", str(config), "--au_epochs", "3"])
    assert settings.image_size == PRESETS["gpu"]["image_size"] and settings.emotion_epochs == 5.0
    assert settings.au_epochs == 3.0
    with pytest.raises(SystemExit) as raised:
        recipe_arguments([*data, "--soft_targets", "maybe"])
    assert raised.value.code == 2 and "soft_targets" in capsys.readouterr().err


def _fake_data(folder):
    for name in DEVELOPMENT_FILES:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).touch()
    return folder


def test_a_folder_started_with_other_settings_is_refused_before_any_stage(tmp_path, capsys):
    """Resuming with other settings would train the remaining stages on top of stages made with the first ones."""
    data, output = _fake_data(tmp_path / "data"), tmp_path / "out"
    smoke = replace(RecipeSettings(), **PRESETS["smoke"])
    output.mkdir()
    stored = {**asdict(smoke), "a_setting_mf2_no_longer_has": 1}
    del stored["cache_batch_size"]  # a setting added since the folder's run started is not compared
    (output / "settings.json").write_text(json.dumps(stored))
    recipe = Recipe(data, output, output / "export", smoke, "cpu")
    recipe.check_settings(recipe.run_settings())
    faster = Recipe(data, output, output / "export", replace(smoke, cache_batch_size=4), "cpu")
    faster.check_settings(faster.run_settings())  # speed only

    changed = replace(smoke, head_steps=7, class_weight_power=0.0)
    with pytest.raises(RecipeSettingsError) as raised:
        Recipe(data, output, output / "export", changed, "cpu").run()
    assert raised.value.differences == {
        "class_weight_power": (smoke.class_weight_power, 0.0),
        "head_steps": (smoke.head_steps, 7),
    }
    assert sorted(path.name for path in output.iterdir()) == [".lock", "settings.json"]  # no stage ran

    assert main(["--data", str(data), "--output_dir", str(output), "--preset", "smoke", "--head_steps", "7"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"mf2 recipe: {output} was started with head_steps={smoke.head_steps} (now 7)")


def test_a_folder_started_on_other_data_is_refused(tmp_path):
    """Resumed on other development files, the CK+ folds of two datasets would be pooled and one's features read by
    the other's rows."""
    data, output = _fake_data(tmp_path / "data"), tmp_path / "out"
    smoke = replace(RecipeSettings(), **PRESETS["smoke"])
    output.mkdir()
    recipe = Recipe(data, output, output / "export", smoke, "cpu")
    (output / "settings.json").write_text(json.dumps(recipe.run_settings()))
    recipe.check_settings(recipe.run_settings())  # the same files, as they were
    (data / "ckplus" / "dev.parquet").write_bytes(b"other subjects")
    with pytest.raises(RecipeSettingsError) as raised:
        recipe.check_settings(recipe.run_settings())
    assert list(raised.value.differences) == ["data"]


def test_a_folder_another_process_runs_in_is_refused(tmp_path, capsys):
    data, output = _fake_data(tmp_path / "data"), tmp_path / "out"
    output.mkdir()
    with exclusive_lock(output / LOCK_NAME):  # as a running `mf2 recipe` holds it
        assert main(["--data", str(data), "--output_dir", str(output), "--preset", "smoke"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == f"mf2 recipe: {output} is in use by process {os.getpid()}; wait for it to end, or stop it."
    assert not (output / "settings.json").exists()


def test_a_preset_named_in_the_yaml_file_sets_the_defaults(tmp_path):
    from mf2.training.recipe_settings import recipe_arguments

    config = tmp_path / "recipe.yaml"
    config.write_text("preset: gpu\nau_epochs: 2\n")
    args, settings = recipe_arguments(["--data", str(tmp_path), "--config", str(config)])
    assert args.preset == "gpu" and settings.image_size == PRESETS["gpu"]["image_size"] and settings.au_epochs == 2.0
    _, settings = recipe_arguments(["--data", str(tmp_path), "--config", str(config), "--preset", "smoke"])
    assert settings.max_ckplus == PRESETS["smoke"]["max_ckplus"]  # the command line's preset over the file's
    config.write_text("preset: gpuu\n")
    with pytest.raises(SystemExit) as raised:
        recipe_arguments(["--data", str(tmp_path), "--config", str(config)])
    assert raised.value.code == 2


def test_a_preset_misspelt_in_the_yaml_file_is_one_line(tmp_path, capsys):
    config = tmp_path / "recipe.yaml"
    config.write_text("preset: gpuu\n")
    with pytest.raises(SystemExit):
        main(["--data", str(tmp_path), "--config", str(config)])
    assert "mf2 recipe: error: argument --preset: invalid choice: 'gpuu' (choose from cpu, gpu, smoke)" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--pretrain_epochs", "nan"], "--pretrain_epochs must be a finite number, got nan"),
        (["--head_learning_rate", "inf"], "--head_learning_rate must be a finite number"),
        (["--emotion_learning_rate", "0"], "--emotion_learning_rate must be > 0"),
        (["--head_steps", "-3"], "--head_steps must be >= 1, got -3"),
        (["--cv_folds", "1"], "--cv_folds must be >= 2"),
        (["--ema_decay", "1"], "--ema_decay must be in [0, 1)"),
        (["--use_emotion_branch", "false", "--use_au_branch", "false"], "the model needs a branch"),
    ],
)
def test_settings_no_run_could_use_are_one_line_before_any_work(tmp_path, capsys, option, message):
    with pytest.raises(SystemExit) as raised:
        main(["--data", str(tmp_path), "--output_dir", str(tmp_path / "out"), *option])
    assert raised.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_stages_asked_for_out_of_order_are_one_line(tmp_path, capsys):
    """`--stages pretrain` in a fresh folder would load the data stage's model that is not there (a traceback)."""
    data, output = _fake_data(tmp_path / "data"), tmp_path / "out"
    argv = ["--data", str(data), "--output_dir", str(output), "--preset", "smoke"]
    assert main([*argv, "--stages", "pretrain"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "--stages pretrain starts from the stages before it, not done in" in line and "(data)" in line
    assert not output.exists() or not list(output.iterdir())  # refused before anything was written
