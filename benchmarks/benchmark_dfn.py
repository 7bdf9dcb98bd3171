"""Benchmark DFN against full fine-tuning of MF² at the paper's size (Table IV: 52.88M vs 373.4M trainable parameters,
12.6 vs 62.3 min per training epoch).

Modes, each measured in its own subprocess (so that peak memory is per mode) on the same model and the same batch
(same seeds give the same random weights and inputs in every subprocess):

- `full`: full fine-tuning = every parameter `MF2ForPreTraining` trains in pretraining (all but the frozen ViT),
  recognition losses (AU BCE + emotion CE), backward through both Q-Formers, AdamW over the trainable parameters.
- `dfn`: `get_dfn_model(model, DFNConfig(...))`, same losses; backbone under `torch.no_grad()`, backward through the
  side networks and head copies only.
- `dfn_cached`: DFN on features from a `DFNFeatureCache` built once from the same batch; each step reads the cached
  examples, collates them and runs side networks, heads, losses, backward and AdamW.
- `pretrain` (only with `--pretraining-objective`): the full pretraining step of `MF2ForPreTraining` with captions
  (ITC + ITM + ITG on both branches plus recognition), for reference; the paper's "w/o DFN" time probably comes from
  such a step, but it is not the same objective as DFN's.

A step is forward + backward + optimizer step (fused AdamW, lr 1e-4, weight decay 0.05) + zero_grad; the reported
time is the median of the timed steps after the warm-up steps (the minimum is printed too: on a shared CPU other
processes inflate single steps). Epoch times are extrapolated to MFA's training split (31,320 images, paper §II) at
the batch size used here. Captions of the `pretrain` mode fill the configured maximum lengths (61 / 169 tokens, no
padding), an upper bound. Peak memory on CPU is the subprocess's peak resident set size
(`resource.getrusage(...).ru_maxrss`, which includes the model and optimizer state), also reported net of the resident
size right after the model was built; on CUDA it is `torch.cuda.max_memory_allocated()` from the start of training.

Usage:
    python benchmarks/benchmark_dfn.py [--batch-size 8] [--steps 3] [--warmup 1] [--device cpu|cuda]
        [--bottleneck-size 384] [--num-layers 7] [--pretraining-objective] [--small] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from count_parameters import count  # the tied-weight-aware counter beside this script

MFA_TRAIN_IMAGES = 31_320
PAPER = {"dfn_params_m": 52.88, "full_params_m": 373.4, "dfn_min_per_epoch": 12.6, "full_min_per_epoch": 62.3}
MODES = ("full", "dfn", "dfn_cached")


def rss_mib() -> float:
    """Current resident set size (Linux /proc), MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def build_config(small: bool):
    from mf2 import MF2Config

    if not small:
        return MF2Config()  # ViT-B/16 at 224 px, BERT-base text encoder, BERT-base-sized Q-Formers (12 layers)
    # A quick smoke-test size (not the paper's); 8 Q-Former layers so that N=7 still fits.
    return MF2Config(
        vision_config=dict(
            model_type="vit",
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            image_size=64,
            patch_size=16,
        ),
        text_config=dict(
            model_type="bert",
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            vocab_size=1000,
        ),
        qformer_config=dict(hidden_size=64, num_hidden_layers=8, num_attention_heads=4, intermediate_size=128),
        num_query_tokens=8,
        num_au_query_tokens=4,
        au_caption_max_length=32,
        emotion_caption_max_length=16,
    )


def make_batch(config, batch_size: int, device, with_captions: bool) -> dict:
    generator = torch.Generator().manual_seed(0)
    size = config.vision_config.image_size
    batch = {
        "pixel_values": torch.randn(batch_size, 3, size, size, generator=generator),
        "au_labels": torch.randint(0, 2, (batch_size, config.num_aus), generator=generator),
        "emotion_labels": torch.randint(0, len(config.id2label), (batch_size,), generator=generator),
    }  # au_boxes left out: the model's canonical AU boxes of an aligned face
    if with_captions:
        vocab = config.text_config.vocab_size
        emotion = torch.randint(5, vocab, (batch_size, config.emotion_caption_max_length), generator=generator)
        au = torch.randint(5, vocab, (batch_size, config.num_aus, config.au_caption_max_length), generator=generator)
        batch.update(
            emotion_input_ids=emotion,
            emotion_attention_mask=torch.ones_like(emotion),
            au_input_ids=au,
            au_attention_mask=torch.ones_like(au),
        )
    return {key: value.to(device) for key, value in batch.items()}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def worker(args) -> dict:
    """Measure one mode; returns a JSON-able dict."""
    from mf2 import MF2ForPreTraining
    from mf2.dfn import DFNConfig, DFNFeatureCache, collate_cached_features, get_dfn_model

    torch.set_flush_denormal(True)
    device = torch.device(args.device)
    config = build_config(args.small)
    torch.manual_seed(0)
    model = MF2ForPreTraining(config).to(device)
    full_trainable = count(model.parameters(), trainable_only=True)
    batch = make_batch(config, args.batch_size, device, with_captions=args.mode == "pretrain")
    result = {"mode": args.mode, "full_trainable": full_trainable, "total_base": count(model.parameters())}

    if args.mode in ("full", "pretrain"):
        trainable = [p for p in model.parameters() if p.requires_grad]
        runner = model
        result["trainable"] = full_trainable

        def forward():
            return runner(**batch)
    else:
        dfn_config = DFNConfig(num_layers=args.num_layers, bottleneck_size=args.bottleneck_size)
        runner = get_dfn_model(model, dfn_config)
        trainable = [p for p in runner.parameters() if p.requires_grad]
        result["trainable"] = count(trainable)
        result["dfn_cells"] = sum(len(side.cells) for side in runner.base_model.dfn_side["default"].values())
        result["layer_indices"] = runner.dfn_config.layer_indices

        def forward():
            return runner(**batch)

        if args.mode == "dfn_cached":
            examples = [{key: value[i].cpu() for key, value in batch.items()} for i in range(args.batch_size)]
            with tempfile.TemporaryDirectory() as cache_dir:
                cache = DFNFeatureCache(runner, cache_dir)
                started = time.perf_counter()
                key_started = time.perf_counter()
                cache.backbone_fingerprint()
                result["backbone_hash_s"] = time.perf_counter() - key_started
                cached = cache.build(examples, batch_size=args.batch_size, fingerprint="benchmark")
                synchronize(device)
                result["cache_build_s"] = time.perf_counter() - started
                result["cache_bytes_per_example"] = sum(
                    os.path.getsize(os.path.join(cached.path, shard["file"])) for shard in cached.manifest["shards"]
                ) / len(cached)
                # time the backbone pass alone (what building the cache costs per batch, without hashing and I/O)
                runner.eval()
                inputs = {"pixel_values": batch["pixel_values"]}
                runner.extract_features(**inputs)
                synchronize(device)
                started = time.perf_counter()
                runner.extract_features(**inputs)
                synchronize(device)
                result["extract_s"] = time.perf_counter() - started

            def forward():
                collated = collate_cached_features([cached[i] for i in range(len(cached))])
                features = {key: value.to(device) for key, value in collated["cached_features"].items()}
                return runner(
                    cached_features=features,
                    au_labels=collated["au_labels"].to(device),
                    emotion_labels=collated["emotion_labels"].to(device),
                )

    # Fused AdamW is `Trainer`'s default (`optim="adamw_torch_fused"` for torch >= 2.8); the for-loop AdamW is ~50x
    # slower on this CPU and would dominate every step.
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.05, fused=True)
    runner.train()
    result["rss_after_build_mib"] = rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        result["cuda_start_mib"] = torch.cuda.memory_allocated(device) / 2**20
    times = []
    for step in range(args.warmup + args.steps):
        synchronize(device)
        started = time.perf_counter()
        loss = forward().loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - started)
    result.update(step_times=times, step_s=statistics.median(times), loss=float(loss))
    result["peak_rss_mib"] = peak_rss_mib()
    if device.type == "cuda":
        result["cuda_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    result["threads"] = torch.get_num_threads()
    return result


def run_mode(mode: str, args) -> dict:
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        mode,
        "--device",
        args.device,
        "--batch-size",
        str(args.batch_size),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--num-layers",
        str(args.num_layers),
        "--bottleneck-size",
        str(args.bottleneck_size),
    ]
    if mode == "pretrain":
        command[command.index("--steps") + 1] = str(args.pretrain_steps)
    if args.small:
        command.append("--small")
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:  # e.g. -9 when the kernel's OOM killer stopped it
        print(f"[{mode} failed with exit status {completed.returncode}]\n{completed.stderr[-2000:]}", file=sys.stderr)
        return {"mode": mode, "failed": completed.returncode}
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - started
    return result


def report(results: dict[str, dict], args) -> None:
    full, dfn = results["full"], results["dfn"]
    steps_per_epoch = math.ceil(MFA_TRAIN_IMAGES / args.batch_size)
    memory = "CUDA max_memory_allocated" if args.device == "cuda" else "peak RSS (ru_maxrss) of the mode's process"
    size = (
        "smoke-test size (--small), NOT the paper size"
        if args.small
        else (
            "paper size: ViT-B/16 @224 px (frozen), two BERT-base-sized 12-layer Q-Formers, text side of MF2ForPreTraining"
        )
    )
    print(f"MF² DFN benchmark — {size}")
    print(
        f"device {args.device}, {full['threads']} torch threads, torch {torch.__version__}, batch {args.batch_size}, "
        f"{args.warmup} warm-up + {args.steps} timed steps per mode (median), each mode in its own process"
    )
    print(
        f"DFN: N={args.num_layers} cells per side network, {dfn['dfn_cells']} cells in all, bottleneck "
        f"{args.bottleneck_size}, reading Q-Former layers {dfn['layer_indices']}"
    )
    print()
    print(
        f"trainable parameters: full {full['trainable'] / 1e6:.2f}M, DFN {dfn['trainable'] / 1e6:.2f}M "
        f"= {100 * dfn['trainable'] / full['trainable']:.1f}% of full "
        f"(paper: {PAPER['full_params_m']}M vs {PAPER['dfn_params_m']}M, "
        f"{100 * PAPER['dfn_params_m'] / PAPER['full_params_m']:.1f}%; target <= 14%)"
    )
    print()
    header = (
        f"{'mode':<12}{'step (s)':>10}{'min (s)':>9}{'speed-up':>10}{'epoch (min)':>13}{'peak MiB':>10}{'net MiB':>9}"
    )
    print(header)
    print("-" * len(header))
    for mode, result in results.items():
        if "failed" in result:
            print(f"{mode:<12}failed (exit status {result['failed']}; -9 = killed, usually out of memory)")
            continue
        speedup = full["step_s"] / result["step_s"]
        epoch_min = result["step_s"] * steps_per_epoch / 60
        if args.device == "cuda":
            peak, net = result["cuda_peak_mib"], result["cuda_peak_mib"] - result["cuda_start_mib"]
        else:
            peak, net = result["peak_rss_mib"], result["peak_rss_mib"] - result["rss_after_build_mib"]
        fastest = min(result["step_times"])
        print(
            f"{mode:<12}{result['step_s']:>10.3f}{fastest:>9.3f}{speedup:>9.1f}x{epoch_min:>13.1f}{peak:>10.0f}{net:>9.0f}"
        )
    print()
    print(
        f"epoch = {steps_per_epoch} steps of {args.batch_size} (MFA train split, {MFA_TRAIN_IMAGES:,} images), "
        "extrapolated from the step time; paper (RTX A6000, batch 56): full 62.3 min, DFN 12.6 min (4.9x)"
    )
    print(
        f"memory: {memory}; 'net' = peak minus the resident size after building the model "
        "(optimizer state, gradients, activations)"
    )
    if "dfn_cached" in results:
        cached = results["dfn_cached"]
        build_min = cached["extract_s"] * steps_per_epoch / 60
        epochs = 30
        amortized = (epochs * full["step_s"] * steps_per_epoch / 60) / (
            build_min + epochs * cached["step_s"] * steps_per_epoch / 60
        )
        print(
            f"feature cache: building costs one backbone pass per example ({cached['extract_s']:.2f} s per batch of "
            f"{args.batch_size}, ~{build_min:.1f} min for the epoch-0 pass) plus hashing the backbone "
            f"({cached['backbone_hash_s']:.1f} s); {cached['cache_bytes_per_example'] / 1024:.0f} KiB per example "
            f"on disk; over {epochs} epochs (Table VI) incl. the build: {amortized:.1f}x vs full"
        )
    if "step_s" in results.get("pretrain", {}):
        print(
            f"pretrain row: full MF2ForPreTraining step with captions (ITC+ITM+ITG+recognition), "
            f"{args.pretrain_steps} timed step(s); speed-up of DFN vs it: "
            f"{results['pretrain']['step_s'] / dfn['step_s']:.1f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before the timed ones")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--num-layers", type=int, default=7, help="DFN cells per side network (paper: 7)")
    parser.add_argument("--bottleneck-size", type=int, default=384)
    parser.add_argument("--pretraining-objective", action="store_true", help="also time the full pretraining step")
    parser.add_argument("--pretrain-steps", type=int, default=1)
    parser.add_argument("--small", action="store_true", help="tiny smoke-test model instead of the paper size")
    parser.add_argument("--json", help="also write the raw measurements here")
    parser.add_argument("--worker", choices=[*MODES, "pretrain"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.mode = args.worker
        print(json.dumps(worker(args)))
        return
    modes = [*MODES, "pretrain"] if args.pretraining_objective else list(MODES)
    results = {}
    for mode in modes:
        print(f"[running {mode} ...]", file=sys.stderr, flush=True)
        results[mode] = run_mode(mode, args)
        if args.json:  # written after every mode, so a later failure loses nothing
            with open(args.json, "w") as file:
                json.dump({"args": vars(args), "results": results}, file, indent=2)
    if any("failed" in results[mode] for mode in MODES):
        raise SystemExit("a required mode failed; see above")
    report(results, args)


if __name__ == "__main__":
    main()
