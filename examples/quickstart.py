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
from mf2.pipeline_mf2 import InputError

EXAMPLE_IMAGES = sorted((Path(__file__).resolve().parent / "images").glob("*.png"))


def main(argv: list[str] | None = None) -> list[list[dict]]:
    parser = argparse.ArgumentParser(description="Analyse faces with the facial-state pipeline.")
    parser.add_argument("images", nargs="*", default=[str(path) for path in EXAMPLE_IMAGES])
    parser.add_argument("--model", help="MF² checkpoint (folder or Hub id; default: the shipped mf2-base)")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: the first accelerator, else cpu)")
    args = parser.parse_args(argv)

    pipe = pipeline("facial-state", model=args.model, device=args.device)  # no model: the shipped mf2-base
    results = analyse(pipe, args.images)
    for path, faces in zip(args.images, results):
        if isinstance(faces, InputError):
            print(f"{path}: {faces}")
            continue
        print(f"{path}: {len(faces)} face(s)")
        for number, face in enumerate(faces):
            box = ", ".join(f"{v:.0f}" for v in face["box"])
            print(f"  face {number} at [{box}]: {face['emotion']['label']} ({face['emotion']['score']:.2f})")
            top = sorted(face["action_units"].items(), key=lambda item: -item[1])[:4]
            print("    most probable AUs:", ", ".join(f"{name} {p:.2f}" for name, p in top))
            print("    active AUs:", ", ".join(face["active_action_units"]) or "none")
            print("    explanation:", face["explanation"])
    return results


def analyse(pipe, images: list[str]) -> list[list[dict] | InputError]:
    """Each photo's faces (none where it has no face), or the error that says why it could not be read."""
    # `multiple_faces="all"` keeps every face; `no_face="skip"` gives a photo without one an empty list.
    options = {"multiple_faces": "all", "explain": True, "no_face": "skip"}
    try:
        return pipe(images, batch_size=8, **options)  # a list is batched: several photos' faces share a forward pass
    except InputError:  # an unreadable file stops the batch: read them one by one, so the others still answer
        results = []
        for image in images:
            try:
                results.append(pipe(image, **options))
            except InputError as error:
                results.append(error)
        return results


if __name__ == "__main__":
    main()
