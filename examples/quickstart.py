"""Quickstart: faces in photos → Action Units, emotion and an explanation, with `pipeline("facial-state")`.

    python examples/quickstart.py                          # the example photos, the untrained offline model
    python examples/quickstart.py --model path/or/hub-id photo.jpg group.png

Without `--model` it uses MF² built from the offline encoders with untrained heads (built once into
`$MF2_HOME/models/untrained-offline`, as `mf2 analyze` does): faces, landmarks and AU regions are real, the
probabilities are not predictions until a trained checkpoint is given.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transformers import pipeline

import mf2  # noqa: F401  (registers the "facial-state" task and the MF² classes with transformers)
from mf2.analyze import build_untrained_model, is_untrained, untrained_model_dir

EXAMPLE_IMAGES = sorted((Path(__file__).resolve().parent / "images").glob("*.png"))


def main(argv: list[str] | None = None) -> list[list[dict]]:
    parser = argparse.ArgumentParser(description="Analyse faces with the facial-state pipeline.")
    parser.add_argument("images", nargs="*", default=[str(path) for path in EXAMPLE_IMAGES])
    parser.add_argument("--model", help="trained MF² checkpoint (folder or Hub id)")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: the first accelerator, else cpu)")
    args = parser.parse_args(argv)

    model = args.model
    if model is None:
        model = untrained_model_dir()
        if not is_untrained(model):
            build_untrained_model(model)
    if is_untrained(model):
        print("NOTE: this model's AU and emotion heads are untrained; the numbers below are not predictions.\n")

    pipe = pipeline("facial-state", model=str(model), device=args.device)
    # A list is batched (faces of several photos share a forward pass); `multiple_faces="all"` keeps every face.
    results = pipe(args.images, batch_size=8, multiple_faces="all", explain=True)
    for path, faces in zip(args.images, results):
        print(f"{path}: {len(faces)} face(s)")
        for number, face in enumerate(faces):
            box = ", ".join(f"{v:.0f}" for v in face["box"])
            print(f"  face {number} at [{box}]: {face['emotion']['label']} ({face['emotion']['score']:.2f})")
            top = sorted(face["action_units"].items(), key=lambda item: -item[1])[:4]
            print("    most probable AUs:", ", ".join(f"{name} {p:.2f}" for name, p in top))
            print("    active AUs:", ", ".join(face["active_action_units"]) or "none")
            print("    explanation:", face["explanation"])
    return results


if __name__ == "__main__":
    main()
