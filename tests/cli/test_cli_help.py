"""Each subcommand's help is headed with its own name and short; the training commands' Trainer options are behind
`--help-all`; `mf2 analyze --help` imports neither torch nor transformers (its parser lives in
`mf2.cli.analyze_parser`)."""

import json
import subprocess
import sys

import pytest

from mf2.cli import main

TRAINING_COMMANDS = ("train", "finetune", "evaluate")


def help_text(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", TRAINING_COMMANDS)
def test_training_help_is_short_and_named(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    text = help_text(capsys, command, "--help")
    lines = text.splitlines()
    assert lines[0].startswith(f"usage: mf2 {command} --"), lines[0]
    assert len(lines) < 80, len(lines)
    assert max(len(line) for line in lines) <= 120
    assert f"mf2 {command} --help-all" in text.replace("\n", " ")
    assert "--output_dir" in text and "--adam_beta1" not in text and "--gradient_checkpointing " not in text


@pytest.mark.parametrize("command", TRAINING_COMMANDS)
def test_help_all_lists_every_trainer_option(command, capsys):
    text = help_text(capsys, command, "--help-all")
    assert text.startswith(f"usage: mf2 {command} ")
    for option in ("--gradient_checkpointing", "--adam_beta1", "--dataloader_num_workers", "--model_name_or_path"):
        assert option in text, option
    assert len(text.splitlines()) > 300


def test_finetune_help_lists_its_own_options(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    text = help_text(capsys, "finetune", "--help")
    for option in ("--dfn_num_layers=7", "--train_data", "--max_steps=-1", "--learning_rate=0.0001", "--full"):
        assert option in text, option
    assert "--stage" not in text  # pretraining's option: in --help-all only


def test_a_bad_training_command_line_is_one_line_with_exit_status_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", "--no_such_option", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert (
        err[0].startswith("usage: mf2 finetune ")
        and err[1] == "mf2 finetune: error: unrecognized arguments: --no_such_option 1"
    )
    assert main(["finetune", "--model_name_or_path", "mf2-base", "--train_data", "mfa:x"]) == 2
    assert capsys.readouterr().err == "mf2 finetune: --output_dir is required (`mf2 finetune --help`).\n"


def test_analyze_help_imports_neither_torch_nor_transformers():
    script = (
        "import json, sys\nfrom mf2.cli import main\ntry:\n    main(['analyze', '--help'])\nexcept SystemExit as e:\n"
        "    code = e.code\nprint(json.dumps({'code': code, 'heavy': sorted(m for m in ('torch', 'transformers', "
        "'datasets', 'peft', 'mf2.cli.analyze') if m in sys.modules)}))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    *help_lines, last = done.stdout.splitlines()
    assert json.loads(last) == {"code": 0, "heavy": []}
    assert help_lines[0].startswith("usage: mf2 analyze ") and any("--adapter DIR" in line for line in help_lines)


def test_the_light_analyze_parser_has_every_option_of_mf2_analyze():
    """`mf2 analyze --help` shows `mf2.cli.analyze_parser`'s parser: it must hold every option of the parser
    `mf2.cli.analyze` runs with (the same once analyze.py imports its `build_parser` from `mf2.cli.analyze_parser`)."""
    from mf2.cli import analyze, analyze_parser

    light = {tuple(action.option_strings): action for action in analyze_parser.build_parser()._actions}
    for action in analyze.build_parser()._actions:
        twin = light[tuple(action.option_strings)]
        for name in ("dest", "default", "choices", "help", "nargs", "metavar", "required"):
            assert getattr(twin, name) == getattr(action, name), (action.option_strings, name)


def test_analyze_adapter_option_is_checked(tmp_path):
    from mf2.cli.analyze_checks import UsageError
    from mf2.cli.analyze_parser import build_parser

    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    assert build_parser().parse_args(["a.png", "--adapter", str(tmp_path / "adapter")]).adapter.endswith("adapter")
    with pytest.raises(UsageError, match="no adapter_config.json; pass the --output_dir of `mf2 finetune`"):
        build_parser().parse_args(["a.png", "--adapter", str(tmp_path)])
    with pytest.raises(UsageError, match="no such folder"):
        build_parser().parse_args(["a.png", "--adapter", str(tmp_path / "nope")])
    with pytest.raises(UsageError, match="drop --runtime onnx"):
        build_parser().parse_args(["a.png", "--adapter", str(tmp_path / "adapter"), "--runtime", "onnx"])
    pushed = tmp_path / "pushed"  # a repository `mf2 push` wrote, downloaded: a model with its adapter in dfn/
    (pushed / "dfn").mkdir(parents=True)
    (pushed / "config.json").write_text("{}")
    (pushed / "dfn" / "adapter_config.json").write_text("{}")
    assert build_parser().parse_args(["a.png", "--adapter", str(pushed)]).adapter == str(pushed)


def test_the_light_parser_names_the_adapter_layout_as_mf2_dfn_does():
    from mf2.cli import analyze_parser
    from mf2.dfn import loading

    assert analyze_parser.ADAPTER_CONFIG == loading.ADAPTER_CONFIG
    assert analyze_parser.ADAPTER_SUBFOLDER == loading.ADAPTER_SUBFOLDER
