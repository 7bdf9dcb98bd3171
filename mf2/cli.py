"""The `mf2` command line: one entry point, each subcommand delegating to the module that does the work.

Subcommands are imported only when used, so `mf2 --help` stays fast and optional dependencies stay optional.
"""

import importlib
import sys

# subcommand -> (module, function taking argv, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "analyze": ("mf2.analyze", "main", "faces in images, folders, videos → AUs and emotions as JSONL / CSV"),
    "caption": ("mf2.data.caption_dataset", "main", "fill the MFA caption columns of a dataset (template or LLM)"),
    "demo": ("mf2.demo", "main", "the web demo (Gradio): photos, webcam, videos in a browser; needs mf2[demo]"),
    "encoders": ("mf2.encoders", "main", "fetch and convert the offline pretrained encoders into the cache"),
    "export": ("mf2.onnx_export", "main", "write the recognition model as ONNX (opset 17, dynamic batch); mf2[onnx]"),
    "evaluate": ("mf2.training.evaluate", "main", "score a checkpoint (+ DFN adapter) on a labelled dataset"),
    "finetune": ("mf2.training.finetune", "main", "DFN fine-tuning of a frozen MF² (or full fine-tuning with --full)"),
    "push": ("mf2.training.hub", "main", "publish model, processor, DFN adapter and model card to the Hub"),
    "recipe": ("mf2.training.recipe", "main", "reproduce the shipped mf2-base model from the development data"),
    "train": ("mf2.training.pretrain", "main", "pre-train MF² (Emo-VL + AU-VL + recognisers) with Trainer"),
}


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
    module, function, _ = COMMANDS[command]
    return int(getattr(importlib.import_module(module), function)(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
