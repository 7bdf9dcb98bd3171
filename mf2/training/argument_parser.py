"""The command line of the MF² training entry points: `parse_args` reads the argument dataclasses
(`mf2.training.arguments`) from the command line over an optional `--config file.yaml`, with a short `--help` per
command (`HELP_OPTIONS`) and every option behind `--help-all`; `check_command` refuses an incomplete command line
before any model is loaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

import yaml
from transformers import HfArgumentParser, TrainingArguments

from .arguments import MF2FinetuneArguments, MF2ScriptArguments


def read_yaml_options(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping of option names to values a `--config` YAML file holds (empty for an empty file). Raises
    `OSError`, `yaml.YAMLError`, or `ValueError` where the file holds something else than a mapping."""
    with open(path, encoding="utf-8") as handle:
        values = yaml.safe_load(handle) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: the YAML file must hold a mapping of option names to values.")
    return values


def _yaml_defaults(path: str | os.PathLike, dataclass_types: tuple[type, ...]) -> dict[str, Any]:
    """The YAML file's mapping, checked against the fields of `dataclass_types`."""
    values = read_yaml_options(path)
    known = {item.name for kind in dataclass_types for item in dataclasses.fields(kind) if item.init}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown option(s) {unknown}.")
    return values


_DATA_OPTIONS = (
    "image_size",
    "landmark_backend",
    "no_face",
    "pixel_format",
    "preprocessing_num_workers",
    "preprocessing_batch_size",
    "cache_dir",
)
_TRAINER_OPTIONS = (
    "output_dir",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "warmup_steps",
    "weight_decay",
    "save_steps",
    "save_strategy",
    "logging_steps",
    "eval_strategy",
    "seed",
    "use_cpu",
    "bf16",
    "report_to",
)
HELP_OPTIONS: dict[str, tuple[str, ...]] = {
    "mf2 train": (
        "model_name_or_path",
        "config_name",
        "vision_encoder",
        "text_encoder",
        "tokenizer_name",
        "config_overrides",
        "stage",
        "train_data",
        "eval_data",
        "validation_fraction",
        "captioner",
        "max_au_captions_per_image",
        *_DATA_OPTIONS,
        "max_train_samples",
        "max_eval_samples",
        "tune_thresholds",
        "save_predictions",
        "mixed_precision",
        "resume",
        *_TRAINER_OPTIONS,
    ),
    "mf2 finetune": (
        "model_name_or_path",
        "train_data",
        "eval_data",
        "validation_fraction",
        *_DATA_OPTIONS,
        "max_train_samples",
        "max_eval_samples",
        "tune_thresholds",
        "save_predictions",
        "mixed_precision",
        "resume",
        *(item.name for item in dataclasses.fields(MF2FinetuneArguments)),
        *_TRAINER_OPTIONS,
    ),
    "mf2 evaluate": (
        "model_name_or_path",
        "adapter_name_or_path",
        "eval_data",
        *_DATA_OPTIONS,
        "max_eval_samples",
        "tune_thresholds",
        "store_thresholds",
        "save_predictions",
        "mixed_precision",
        "output_dir",
        "per_device_eval_batch_size",
        "dataloader_num_workers",
        "use_cpu",
        "bf16",
        "report_to",
    ),
}
"""The options each command's `--help` lists, one line each (`MF2ArgumentParser`); `--help-all` lists them all, with
every other option these commands accept (the other `TrainingArguments`, options of the other commands)."""


def _summary(action: argparse.Action, width: int) -> str:
    """`--name[=default]  help`, on one line of at most `width` characters (the help cut at a word, with `…`)."""
    name = max(action.option_strings, key=lambda option: (option.startswith("--"), "_" in option, len(option)))
    default = action.default
    shown = not (default is None or default is False or default is argparse.SUPPRESS or default in ([], ""))
    if shown and action.nargs != 0:
        name += f"={' '.join(map(str, default)) if isinstance(default, list) else default}"
    text = " ".join((action.help or "").replace("%%", "%").split())
    line = f"  {name:<34} {text}" if len(name) <= 34 else f"  {name}  {text}"
    if len(line) > width:
        cut = line[: width - 1]
        line = (cut[: cut.rfind(" ")] if cut.rfind(" ") > len(name) + 4 else cut).rstrip(" ,;:(") + "…"
    return line


def _is_negation(action: argparse.Action) -> bool:
    """`HfArgumentParser`'s `--no_X` twin of a boolean option `--X` whose default is True (same dest)."""
    return bool(action.option_strings) and action.option_strings[0].startswith("--no_") and action.nargs == 0


class _HelpAction(argparse.Action):
    """`-h/--help` (the short help: `MF2ArgumentParser.format_short_help`) or `--help-all` (every option in full)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None, full=False):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)
        self.full = full

    def __call__(self, parser, namespace, values, option_string=None):
        parser._print_message(parser.format_help() if self.full else parser.format_short_help(), sys.stdout)
        parser.exit()


_SECTION_TITLES = {
    MF2ScriptArguments: "model, data and outputs",
    MF2FinetuneArguments: "fine-tuning (DFN unless --full)",
}


class MF2ArgumentParser(HfArgumentParser):
    """`HfArgumentParser` for the `mf2` training commands: named after the command (`usage: mf2 finetune ...`), with a
    short `--help` (one line per option of `help_options`, by default `HELP_OPTIONS[prog]`) and every option behind
    `--help-all` (each of transformers' ~100 other `TrainingArguments` too, with its full text and default)."""

    def __init__(self, dataclass_types: tuple[type, ...], *, help_options: Sequence[str] | None = None, **kwargs):
        self._dataclass_order = tuple(dataclass_types)
        super().__init__(dataclass_types, add_help=False, **kwargs)
        self._help_options = tuple(HELP_OPTIONS.get(self.prog, ()) if help_options is None else help_options)
        self.add_argument("-h", "--help", action=_HelpAction, help="show the main options and exit")
        self.add_argument(
            "--help-all",
            action=_HelpAction,
            full=True,
            help="show every option (all TrainingArguments too), in full, and exit",
        )

    def _sections(self) -> list[tuple[str, list[argparse.Action]]]:
        """`(title, actions)` of `--help`: the general options, then one section per dataclass."""
        by_dest: dict[str, argparse.Action] = {}
        for action in self._actions:
            if not _is_negation(action):
                by_dest.setdefault(action.dest, action)
        fields = {kind: [item.name for item in dataclasses.fields(kind) if item.init] for kind in self._dataclass_order}
        every_field = {name for names in fields.values() for name in names}
        sections = [("general", [action for action in self._actions if action.dest not in every_field])]
        for kind, names in fields.items():
            title = _SECTION_TITLES.get(kind) or (kind.__doc__ or kind.__name__).split(":")[0].strip().rstrip(".")
            if issubclass(kind, TrainingArguments):
                title = "training (transformers.TrainingArguments; defaults: the paper's Table VI)"
            shown = [name for name in (self._help_options or names) if name in names and name in by_dest]
            sections.append((title, [by_dest[name] for name in shown]))
        return sections

    def count_hidden(self) -> int:
        """How many options `--help` leaves out (all of them are in `--help-all`)."""
        listed = {id(action) for _, actions in self._sections() for action in actions}
        return sum(1 for action in self._actions if id(action) not in listed and not _is_negation(action))

    def format_usage(self) -> str:
        """The usage line (wrapped to the terminal's width when the command gave its own)."""
        if self.usage is None:
            return super().format_usage()
        width = max(80, min(shutil.get_terminal_size((120, 24)).columns, 160))
        usage = "usage: " + self.usage % {"prog": self.prog}
        return (
            "\n".join(textwrap.wrap(usage, width, subsequent_indent=" " * (len(self.prog) + 8), break_on_hyphens=False))
            + "\n"
        )

    def format_help(self) -> str:
        """`--help-all`: argparse's help of every option, under the wrapped usage line."""
        text = super().format_help()
        return text if self.usage is None else self.format_usage() + text.split("\n", 1)[1]

    def format_short_help(self) -> str:
        """The usage, the description and one line per option of `help_options` (cut to the terminal's width)."""
        width = max(80, min(shutil.get_terminal_size((120, 24)).columns, 160))
        lines = [self.format_usage().rstrip()]
        if self.description:
            lines += ["", *textwrap.wrap(self.description, width)]
        for title, actions in self._sections():
            if actions:
                lines += ["", f"{title}:", *(_summary(action, width) for action in actions)]
        hidden = self.count_hidden()
        more = f"Each option's full text: `{self.prog} --help-all`."
        if hidden:
            more = (
                f"{hidden} more options (the rest of transformers' TrainingArguments, e.g. --gradient_checkpointing) "
                f"and each option's full text: `{self.prog} --help-all`."
            )
        return "\n".join([*lines, "", *textwrap.wrap(more, width)]) + "\n"


def check_command(
    prog: str, script_args: MF2ScriptArguments, training_args: TrainingArguments, *, required: tuple[str, ...] = ()
) -> None:
    """Refuse a command line that lacks `--output_dir` or a `required` option of `MF2ScriptArguments`, and check the
    data specs (`mf2.training.data_specs.check_data_specs`): all before any model is loaded.

    Raises:
        mf2.data.DataError: one line naming the option and the fix (the commands print it and exit with status 2).
    """
    from ..data.schema import DataError
    from .data_specs import check_data_specs

    missing = [f"--{name}" for name in required if not getattr(script_args, name)]
    if not getattr(training_args, "output_dir_given", training_args.output_dir is not None):
        missing.append("--output_dir")
    if missing:
        raise DataError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required (`{prog} --help`).")
    check_data_specs(script_args.train_data, "--train_data")
    check_data_specs(script_args.eval_data, "--eval_data")


def parse_args(
    dataclass_types: tuple[type, ...],
    argv: list[str] | None = None,
    description: str | None = None,
    *,
    prog: str | None = None,
    usage: str | None = None,
    help_options: Sequence[str] | None = None,
    defaults: dict[str, Any] | None = None,
):
    """Parse `argv` into instances of `dataclass_types`, with `--config file.yaml` as the defaults under the command line.

    Args:
        prog: the command's name in its usage and help (`"mf2 finetune"`).
        usage: the usage line's arguments (after `prog`), e.g. `"--model_name_or_path MODEL ... [option ...]"`;
            default: argparse's list of every option.
        help_options: the options `--help` lists (default: `HELP_OPTIONS[prog]`, else every MF² option).
        defaults: field values under the YAML file's and the command line's (`mf2 recipe`'s preset).

    Returns:
        One instance per dataclass type, in order.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(argv)
    parser = MF2ArgumentParser(
        dataclass_types,
        prog=prog,
        description=description,
        help_options=help_options,
        usage=None if usage is None else f"{prog or '%(prog)s'} {usage}",
    )
    parser.add_argument("--config", default=None, help="YAML file of options; the command line overrides it.")
    parser.set_defaults(**(defaults or {}))
    if known.config:
        try:
            parser.set_defaults(**_yaml_defaults(known.config, dataclass_types))
        except (OSError, yaml.YAMLError, ValueError) as error:  # a missing, unreadable or mistyped file: one line
            said = " ".join(str(getattr(error, "strerror", None) or error).split())  # YAML's errors run over lines
            parser.error(f"--config {known.config}: {said}")
    # The extra `--config` argument comes back as a trailing namespace after the dataclasses; unknown options and the
    # dataclasses' own checks (`__post_init__`) are one line with the usage, exit status 2, as argparse's errors are.
    try:
        *outputs, unknown = parser.parse_args_into_dataclasses(
            args=rest, look_for_args_file=False, return_remaining_strings=True
        )
    except ValueError as error:
        parser.error(str(error))
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return tuple(outputs[: len(dataclass_types)])


__all__ = ["HELP_OPTIONS", "MF2ArgumentParser", "check_command", "parse_args", "read_yaml_options"]
