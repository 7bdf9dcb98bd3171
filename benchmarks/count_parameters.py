"""Print MF²'s total and trainable parameters at the paper's size, next to the paper's Table IV.

    python benchmarks/count_parameters.py

Models are built on the meta device, so this needs no memory for weights and runs in seconds.
"""

import torch

from mf2 import MF2Config, MF2ForFacialStateRecognition, MF2ForPreTraining

PAPER = {"both branches": 373.4, "w/o Emo-VL": 186.7, "w/o AU-VL": 186.7}


def count(parameters, trainable_only: bool = False) -> int:
    """Number of parameters in an iterable of them (or a module's), each tied tensor once."""
    if isinstance(parameters, torch.nn.Module):
        parameters = parameters.parameters()
    seen, total = set(), 0
    for parameter in parameters:
        if id(parameter) in seen or (trainable_only and not parameter.requires_grad):
            continue
        seen.add(id(parameter))
        total += parameter.numel()
    return total


def main() -> None:
    rows = [
        ("both branches", MF2Config()),
        ("w/o Emo-VL", MF2Config(use_emotion_branch=False)),
        ("w/o AU-VL", MF2Config(use_au_branch=False)),
    ]
    print(f"{'model':<16}{'total':>10}{'trainable':>11}{'paper TP':>10}  (millions; ViT-B/16 frozen)")
    for name, config in rows:
        with torch.device("meta"):
            model = MF2ForPreTraining(config)
        print(f"{name:<16}{count(model) / 1e6:>10.1f}{count(model, True) / 1e6:>11.1f}{PAPER[name]:>10.1f}")

    with torch.device("meta"):
        model = MF2ForPreTraining(MF2Config())
        recogniser = MF2ForFacialStateRecognition(MF2Config())
    print("\nbreakdown of the two-branch pretraining model (millions):")
    parts = {
        "vision encoder (ViT-B/16, frozen)": model.mf2.vision_model,
        "Emo-VL Q-Former + queries": model.mf2.emotion_branch,
        "AU-VL Q-Former + queries + AU embeddings": model.mf2.au_branch,
        "Emo-VL text side (embeddings, ITC/ITM/ITG heads)": model.emotion_alignment,
        "AU-VL text side (embeddings, ITC/ITM/ITG heads)": model.au_alignment,
        "AU and emotion recognisers": model.heads,
    }
    for name, part in parts.items():
        print(f"  {name:<52}{count(part) / 1e6:>8.1f}")
    with torch.device("meta"):
        wide = MF2ForPreTraining(
            MF2Config(
                use_emotion_branch=False,
                vision_config={"model_type": "vit", "hidden_size": 1408, "num_attention_heads": 16},
            )
        )
    print(
        f"\none branch with cross-attention reading 1408-wide tokens (BLIP-2's EVA ViT-g): trainable "
        f"{count(wide, True) / 1e6:.1f}M -- the paper's single-branch figure"
    )
    print(f"\nimage-only recogniser (inference; no text side): total {count(recogniser) / 1e6:.1f}M")


if __name__ == "__main__":
    main()
