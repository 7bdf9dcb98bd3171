"""Table VI defaults, YAML configs with command-line overrides, and stages."""

import pytest

from mf2 import MF2Config
from mf2.training.argument_parser import parse_args
from mf2.training.arguments import MF2FinetuneArguments, MF2ScriptArguments, MF2TrainingArguments
from mf2.training.pretraining_stages import PRETRAINING_STAGES, get_stage

TYPES = (MF2ScriptArguments, MF2TrainingArguments)


def test_table_vi_defaults(tmp_path):
    script, training = parse_args(TYPES, ["--output_dir", str(tmp_path), "--use_cpu", "True"])
    assert training.optim == "adamw_torch" and training.weight_decay == 0.05 and training.learning_rate == 1e-4
    assert training.warmup_steps == 2000 and training.lr_scheduler_type == "linear"
    assert training.per_device_train_batch_size == 56 and training.num_train_epochs == 30
    # What MF²'s multi-loss outputs and raw-image collator need.
    assert training.label_names == ["au_labels", "emotion_labels"] and training.remove_unused_columns is False
    assert training.ddp_find_unused_parameters is True
    assert script.image_size is None and script.stage == "both" and script.no_face == "fallback"


def test_yaml_config_with_command_line_overrides(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        "train_data: ['ferplus:/x/train.parquet,max_samples=60', 'ckplus:/x/dev.parquet']\n"
        "image_size: 112\nlearning_rate: 5.0e-5\nnum_train_epochs: 2\nresume: true\nfull: true\n"
        f"output_dir: {tmp_path / 'out'}\nuse_cpu: true\n"
    )
    script, finetune, training = parse_args(
        (MF2ScriptArguments, MF2FinetuneArguments, MF2TrainingArguments),
        ["--config", str(config), "--learning_rate", "3e-4", "--gradient_accumulation_steps", "2"],
    )
    assert script.train_data == ["ferplus:/x/train.parquet,max_samples=60", "ckplus:/x/dev.parquet"]
    assert script.image_size == 112 and script.resume is True and finetune.full is True
    assert training.learning_rate == 3e-4  # the command line wins
    assert training.num_train_epochs == 2 and training.gradient_accumulation_steps == 2
    assert training.weight_decay == 0.05  # untouched defaults stay Table VI's


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("no_such_option: 1\n", "unknown option(s) ['no_such_option']"),
        ("- a list\n", "must hold a mapping"),
        ("a: [\n", "expected the node content"),
        (None, "No such file or directory"),
    ],
)
def test_a_bad_config_file_is_one_line_with_the_usage(tmp_path, capsys, text, words):
    config = tmp_path / "run.yaml"
    if text is not None:
        config.write_text(text)
    with pytest.raises(SystemExit) as raised:
        parse_args(TYPES, ["--config", str(config)], prog="mf2 train")
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mf2 train: error:")]
    assert raised.value.code == 2 and line.startswith(f"mf2 train: error: --config {config}: ") and words in line


def test_stages_fix_branches_and_targets():
    assert set(PRETRAINING_STAGES) == {"both", "no_au_vl", "no_emo_vl", "au_pretrain"}
    assert get_stage("no_au_vl").config_overrides() == {"use_emotion_branch": True, "use_au_branch": False}
    stage = get_stage("au_pretrain")
    assert stage.au_targets and not stage.emotion_targets
    stage.check_config(MF2Config())
    with pytest.raises(ValueError, match="use_au_branch"):
        get_stage("no_au_vl").check_config(MF2Config())
    with pytest.raises(ValueError, match="Unknown stage"):
        get_stage("nope")


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--learning_rate", "nan"),
        ("--learning_rate", "0"),
        ("--per_device_train_batch_size", "0"),
        ("--num_train_epochs", "0"),
        ("--max_train_samples", "0"),
        ("--dfn_num_layers", "0"),
        ("--dfn_gate_scaling", "inf"),
    ],
)
def test_a_value_no_run_could_use_is_one_line_before_anything_runs(tmp_path, capsys, option, value):
    types = (MF2ScriptArguments, MF2FinetuneArguments, MF2TrainingArguments)
    with pytest.raises(SystemExit) as raised:
        parse_args(types, ["--output_dir", str(tmp_path), "--use_cpu", "True", option, value], prog="mf2 finetune")
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mf2 finetune: error:")]
    assert raised.value.code == 2 and option in line
