"""Quickstart: faces in photos → Action Units, emotion and an explanation, with `pipeline("facial-state")`.

    python examples/quickstart.py                          # the example photos, the shipped model
    python examples/quickstart.py --model path/or/hub-id photo.jpg group.png

Without `--model` it uses the trained MF² shipped with the package (`mf2-base`), offline.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transformers import pipeline

import mf2  # noqa: F401  (registers the "facial-state" task and the MF² classes with transformers)

EXAMPLE_IMAGES = sorted((Path(__file__).resolve().parent / "images").glob("*.png"))


def main(argv: list[str] | None = None) -> list[list[dict]]:
    parser = argparse.ArgumentParser(description="Analyse faces with the facial-state pipeline.")
    parser.add_argument("images", nargs="*", default=[str(path) for path in EXAMPLE_IMAGES])
    parser.add_argument("--model", help="MF² checkpoint (folder or Hub id; default: the shipped mf2-base)")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: the first accelerator, else cpu)")
    args = parser.parse_args(argv)

    pipe = pipeline("facial-state", model=args.model, device=args.device)  # no model: the shipped mf2-base
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
