"""The `mf2` command line: one entry point, each subcommand delegating to the module that does the work.

Subcommands are imported only when used, so `mf2 --help` stays fast and optional dependencies stay optional. A
subcommand whose module is slow to import can name a light module that builds its parser (`HELP_PARSERS`): its
`--help` then imports neither torch nor transformers.
"""

import importlib
import sys

# subcommand -> (module, function taking argv, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "ablate": ("mf2.training.ablation", "main", "the paper's Table IV on the development data: one part off per row"),
    "analyze": ("mf2.cli.analyze", "main", "faces in images, folders, videos → AUs and emotions as JSONL / CSV"),
    "caption": ("mf2.data.caption_dataset", "main", "fill the MFA caption columns of a dataset (template or LLM)"),
    "demo": ("mf2.cli.demo", "main", "the web demo (Gradio): photos, webcam, videos in a browser; needs mf2[demo]"),
    "encoders": (
        "mf2.integration.encoders",
        "main",
        "fetch and convert the offline pretrained encoders into the cache",
    ),
    "export": ("mf2.onnx_export", "main", "write the recognition model as ONNX (opset 17, dynamic batch); mf2[onnx]"),
    "evaluate": ("mf2.training.evaluate", "main", "score a checkpoint (+ DFN adapter) on a labelled dataset"),
    "finetune": ("mf2.training.finetune", "main", "DFN fine-tuning of a frozen MF² (or full fine-tuning with --full)"),
    "push": ("mf2.training.hub", "main", "publish model, processor, DFN adapter and model card to the Hub"),
    "recipe": ("mf2.training.recipe", "main", "reproduce the shipped mf2-base model from the development data"),
    "train": ("mf2.training.pretrain", "main", "pre-train MF² (Emo-VL + AU-VL + recognisers) with Trainer"),
}


# subcommand -> (light module, function returning its argparse parser), for `mf2 COMMAND --help`
HELP_PARSERS: dict[str, tuple[str, str]] = {
    "analyze": ("mf2.cli.analyze_parser", "build_parser"),
}


def _wants_help(argv: list[str]) -> bool:
    """`-h` / `--help` among the options (before a `--`, after which everything is a value)."""
    options = argv[: argv.index("--")] if "--" in argv else argv
    return any(item in ("-h", "--help") for item in options)


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name:<{width}}  {help_text}" for name, (_, _, help_text) in sorted(COMMANDS.items())]
    return (
        "usage: mf2 <command> [options]\n\ncommands:\n" + "\n".join(lines) + "\n\n`mf2 <command> --help` for options."
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"mf2: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    if command in HELP_PARSERS and _wants_help(rest):
        module, function = HELP_PARSERS[command]
        getattr(importlib.import_module(module), function)().print_help()
        raise SystemExit(0)  # as argparse's --help does
    module, function, _ = COMMANDS[command]
    return int(getattr(importlib.import_module(module), function)(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
