"""Training throughput of the shipped model's configuration: a pretraining step and a recognition step, each with and
without the vision-token cache (`mf2.training.vision_cache`), in images per second (forward + backward + optimiser
step).

    python benchmarks/benchmark_training.py                 # the recipe's CPU configuration, batch 16
    python benchmarks/benchmark_training.py --preset gpu --device cuda --batch-size 64

- `pretrain`: `MF2ForPreTraining` with every loss (Emo-VL and AU-VL ITC / ITM / ITG, recognisers) on a batch where
  half the images carry AU captions (`--au-captions` per image, as `--max_au_captions` in the recipe) and every image an
  emotion caption (template captions); the vision encoder frozen.
- `recognise`: `MF2ForFacialStateRecognition` with the recipe's emotion stage: the top `vision_trainable_layers`
  blocks, Emo-VL and the emotion recogniser train.
- `uncached`: from pixels (the frozen encoder runs every step); `cached`: from the tokens below the trainable blocks.

Random pixels: the cost does not depend on what the image shows. Needs the offline encoders (`mf2 encoders`).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
from transformers import AutoTokenizer

from mf2 import MF2ForFacialStateRecognition
from mf2.data.captions import TemplateCaptioner
from mf2.integration.encoders import fetch_encoders
from mf2.processing_mf2 import MF2ImageProcessor, MF2Processor
from mf2.training.recipe_settings import PRESETS, RecipeSettings
from mf2.training.recipe_stages import AU_CAPTION_LENGTH, EMOTION_CAPTION_LENGTH, build_base_model


def caption_batch(processor: MF2Processor, batch_size: int, au_captions: int, generator: torch.Generator) -> dict:
    captioner = TemplateCaptioner()
    emotions, au_rows = [], []
    for index in range(batch_size):
        labels = torch.randint(0, 2, (12,), generator=generator).tolist()
        emotion = int(torch.randint(0, 8, (1,), generator=generator))
        captions = captioner.caption(labels if index % 2 == 0 else [-1] * 12, emotion)
        keep = set(torch.randperm(12, generator=generator)[:au_captions].tolist())
        au_rows.append([c if i in keep else "" for i, c in enumerate(captions.au_caption)])
        emotions.append(captions.emotion_caption)
    encoded = processor(emotion_captions=emotions, au_captions=au_rows, return_tensors="pt")
    return {key: value for key, value in encoded.items() if isinstance(value, torch.Tensor)}


def measure(step, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cpu", choices=("cpu", "gpu"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--au-captions", type=int, default=None, help="AU captions per captioned image (recipe's)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    settings = replace(RecipeSettings(), **PRESETS[args.preset])
    au_captions = args.au_captions or settings.max_au_captions
    device, batch = torch.device(args.device), args.batch_size
    generator = torch.Generator().manual_seed(0)
    size = settings.image_size
    pixels = torch.randn(batch, 3, size, size, generator=generator).to(device)
    labels = {"emotion_labels": torch.randint(0, 8, (batch,), generator=generator).to(device)}
    _, text = fetch_encoders()
    processor = MF2Processor(
        MF2ImageProcessor(size=size),
        AutoTokenizer.from_pretrained(str(text)),
        emotion_caption_max_length=EMOTION_CAPTION_LENGTH,
        au_caption_max_length=AU_CAPTION_LENGTH,
    )
    captions = {key: value.to(device) for key, value in caption_batch(processor, batch, au_captions, generator).items()}
    au_labels = torch.randint(0, 2, (batch, 12), generator=generator).to(device)

    pretraining = build_base_model(settings).to(device).train()
    pretraining.mf2.vision_model.requires_grad_(False)  # as in the recipe's pretraining stage
    recognition = MF2ForFacialStateRecognition(pretraining.config).to(device).train()
    recognition.load_state_dict(pretraining.state_dict(), strict=False)
    recognition.mf2.apply_vision_freezing()
    tokens = pretraining.mf2.frozen_vision_tokens(pixels)

    def stepper(model, inputs):
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

        def step():
            model(**inputs).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        return step

    runs = {
        "pretrain uncached": stepper(
            pretraining, {"pixel_values": pixels, "au_labels": au_labels, **labels, **captions}
        ),
        "pretrain cached": stepper(
            pretraining, {"vision_tokens": tokens, "au_labels": au_labels, **labels, **captions}
        ),
        "recognise uncached": stepper(recognition, {"pixel_values": pixels, "branches": ("emotion",), **labels}),
        "recognise cached": stepper(recognition, {"vision_tokens": tokens, "branches": ("emotion",), **labels}),
    }
    start = time.perf_counter()
    pretraining.mf2.frozen_vision_tokens(torch.cat([pixels, pixels.flip(-1)]))
    cache_rate = 2 * batch / (time.perf_counter() - start)
    print(
        f"preset {args.preset}, device {args.device}, batch {batch}, {size} px, {au_captions} AU captions per "
        f"AU-captioned image, threads {torch.get_num_threads()}"
    )
    print(f"{'step':<20} {'s/step':>8} {'images/s':>9}")
    results = {}
    for name, step in runs.items():
        seconds = measure(step, args.steps, args.warmup)
        results[name] = batch / seconds
        print(f"{name:<20} {seconds:>8.3f} {batch / seconds:>9.1f}")
    print(f"cache build (frozen part, one view): {cache_rate:.1f} images/s")
    for kind in ("pretrain", "recognise"):
        print(f"{kind}: cache speed-up {results[f'{kind} cached'] / results[f'{kind} uncached']:.2f}x")


if __name__ == "__main__":
    main()
