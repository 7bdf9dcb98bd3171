"""Fine-tune MF² with DFN on your own labelled faces, then use the adapted model in the pipeline.

    python examples/finetune_dfn.py --model path/to/mf2 --labels my_faces/labels.csv --output_dir outputs/my-dfn
    python examples/finetune_dfn.py --model path/to/mf2 --demo outputs/demo-faces --output_dir outputs/demo-dfn

Steps:
1. the labelled folder becomes an MFA Parquet file (`build_mfa_dataset.py`: `mf2.data.load_image_folder` + template
   captions);
2. `mf2 finetune` (`mf2.training.finetune`) freezes the checkpoint and trains DFN's side networks and head copies
   (paper §III-B; by default on features of the frozen backbone computed once), writing the adapter
   (`adapter_config.json`, `adapter_model.safetensors`) and, with `--eval_labels`, per-AU thresholds tuned there;
3. the base model + adapter (`mf2.training.scoring.load_recognition_model`) go into `pipeline("facial-state")`.

Extra `mf2 finetune` options can follow `--`, e.g. `-- --dfn_num_layers 4 --learning_rate 5e-4`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from transformers import pipeline

import mf2  # noqa: F401  (registers the "facial-state" task and the MF² classes with transformers)
from mf2.processing_mf2 import load_saved_processor
from mf2.training import finetune
from mf2.training.scoring import load_recognition_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_mfa_dataset import build_mfa_dataset, make_demo_folder  # noqa: E402


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description="DFN fine-tuning on a labelled face folder.")
    parser.add_argument("--model", required=True, help="MF² checkpoint to adapt (folder or Hub id, with processor)")
    parser.add_argument("--labels", help="label file of your faces (see build_mfa_dataset.py)")
    parser.add_argument("--demo", metavar="DIR", help="write the 4-image demo folder here and train on it")
    parser.add_argument("--eval_labels", help="label file of held-out faces (evaluation + AU threshold tuning)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    args, extra = parser.parse_known_args(argv)
    extra = [item for item in extra if item != "--"]
    if (args.labels is None) == (args.demo is None):
        parser.error("give --labels or --demo")
    output = Path(args.output_dir)
    labels = make_demo_folder(args.demo) if args.demo else Path(args.labels)

    build_mfa_dataset(labels, output / "data" / "train")
    command = [
        "--model_name_or_path",
        args.model,
        "--train_data",
        f"mfa:{output / 'data' / 'train' / 'train.parquet'}",
        "--output_dir",
        str(output / "adapter"),
        "--num_train_epochs",
        str(args.epochs),
        "--per_device_train_batch_size",
        str(args.batch_size),
        "--learning_rate",
        str(args.learning_rate),
        "--warmup_steps",
        "0",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
    ]
    if args.eval_labels:
        build_mfa_dataset(args.eval_labels, output / "data" / "eval")
        command += ["--eval_data", f"mfa:{output / 'data' / 'eval' / 'train.parquet'}", "--tune_thresholds"]
    finetune.main(command + extra)

    model = load_recognition_model(args.model, str(output / "adapter"))  # base + adapter (+ tuned thresholds)
    pipe = pipeline("facial-state", model=model, processor=load_saved_processor(args.model))
    image = str(next(iter(sorted(labels.parent.glob("*.png"))), labels))
    face = pipe(image, explain=True)[0]
    print(
        f"{image}: {face['emotion']['label']} ({face['emotion']['score']:.2f}); active AUs "
        f"{face['active_action_units']}\n{face['explanation']}"
    )
    return face


if __name__ == "__main__":
    main()
