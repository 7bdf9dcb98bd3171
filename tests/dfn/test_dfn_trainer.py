"""DFN under `Trainer` (with and without the feature cache) and under `accelerate launch` data parallel."""

import os
import subprocess
import textwrap

import torch
from dfn_testing import IMAGE_KEYS, build, dfn_config, image_batch, state_copy
from distributed_launch import launch_two_processes
from transformers import Trainer, TrainingArguments

from mf2 import MF2ForFacialStateRecognition
from mf2.dfn import DFNFeatureCache, DFNModel, collate_cached_features, get_dfn_model

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_DIR = os.path.dirname(TESTS_DIR)


def arguments(output_dir, **overrides) -> TrainingArguments:
    options = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        report_to=[],
        label_names=["au_labels", "emotion_labels"],
        remove_unused_columns=False,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        max_steps=3,
        learning_rate=1e-2,
        weight_decay=0.05,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
    )
    options.update(overrides)
    return TrainingArguments(**options)


def dataset(config, size: int = 12) -> list[dict]:
    batch = image_batch(config, batch_size=size)
    return [{key: batch[key][index] for key in IMAGE_KEYS} for index in range(size)]


def test_trainer_trains_the_adapter_only_and_saves_it(tmp_path):
    base = build(MF2ForFacialStateRecognition)
    backbone = state_copy(base.mf2)
    model = get_dfn_model(base, dfn_config())
    data = dataset(base.config)
    args = arguments(tmp_path / "run", save_strategy="steps", save_steps=3)
    trainer = Trainer(model=model, args=args, train_dataset=data, eval_dataset=data)
    result = trainer.train()
    assert trainer.state.global_step == 3 and torch.isfinite(torch.tensor(result.training_loss))
    checkpoint = set(os.listdir(tmp_path / "run" / "checkpoint-3"))  # adapter-only checkpoints, resumable
    assert {"adapter_config.json", "adapter_model.safetensors", "optimizer.pt"} <= checkpoint
    assert not any(name.startswith("model") for name in checkpoint)
    assert all(torch.equal(backbone[name], value) for name, value in base.mf2.state_dict().items())

    predictions = trainer.predict(data)
    au_logits, emotion_logits = predictions.predictions  # loss terms and features are ignored at inference
    assert au_logits.shape == (12, base.config.num_aus) and emotion_logits.shape == (12, 8)

    trainer.save_model(tmp_path / "adapter")
    files = sorted(os.listdir(tmp_path / "adapter"))
    assert files == ["adapter_config.json", "adapter_model.safetensors", "training_args.bin"]
    reloaded = DFNModel.from_pretrained(build(MF2ForFacialStateRecognition), tmp_path / "adapter")
    model.eval()
    batch = image_batch(base.config)
    assert torch.equal(reloaded(**batch).au_logits, model(**batch).au_logits)


def test_trainer_on_cached_features_matches_uncached_training(tmp_path):
    losses = []
    for use_cache in (False, True):
        base = build(MF2ForFacialStateRecognition)
        model = get_dfn_model(base, dfn_config())
        data = dataset(base.config)
        collator = None
        if use_cache:
            data = DFNFeatureCache(model, tmp_path / "cache").build(data, batch_size=4)
            collator = collate_cached_features
        torch.manual_seed(0)
        args = arguments(tmp_path / f"run{use_cache}", max_steps=2)
        trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collator)
        trainer.train()
        losses.append([entry["loss"] for entry in trainer.state.log_history if "loss" in entry])
    assert losses[0] == losses[1] and len(losses[0]) == 2


DDP_SCRIPT = textwrap.dedent(
    """
    import os
    import sys
    sys.path.insert(0, {tests_dir!r})
    import torch
    from tiny import tiny_batch, tiny_config
    from transformers import Trainer, TrainingArguments
    from mf2 import MF2ForPreTraining
    from mf2.dfn import DFNConfig, get_dfn_model

    torch.manual_seed(0)
    base = MF2ForPreTraining(tiny_config())
    before = {{k: v.clone() for k, v in base.mf2.state_dict().items()}}
    # A pretraining base gets text cells too; recognition-only batches leave them unused in the loss.
    model = get_dfn_model(base, DFNConfig(num_layers=2, bottleneck_size=8))
    batch = tiny_batch(base.config, batch_size=16)
    keys = ("pixel_values", "au_boxes", "au_labels", "emotion_labels")
    data = [{{k: batch[k][i] for k in keys}} for i in range(16)]
    args = TrainingArguments(
        output_dir={output_dir!r}, use_cpu=True, report_to=[], label_names=["au_labels", "emotion_labels"],
        remove_unused_columns=False, per_device_train_batch_size=4, max_steps=2, save_strategy="no",
        ddp_find_unused_parameters=False, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    same = all(torch.equal(before[k], v) for k, v in base.mf2.state_dict().items())
    state = trainer.accelerator.state
    # One file per rank: two ranks printing to one pipe can interleave even within a line.
    record = " ".join(str(v) for v in ("RESULT", state.distributed_type, state.num_processes, trainer.state.global_step, same))
    os.makedirs({output_dir!r}, exist_ok=True)
    with open(os.path.join({output_dir!r}, f"result-{{state.process_index}}.txt"), "w") as stream:
        stream.write(record)
    # Tear the gloo group down before exit, both ranks together: left to the interpreter, its threads can abort the
    # process (SIGABRT, "terminate called without an active exception"; once in a clean-clone CI run even after an
    # explicit destroy), so the interpreter's own teardown is skipped too (see pytorch/pytorch#179291).
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
    """
)


def test_accelerate_launch_two_processes_without_find_unused_parameters(tmp_path):
    script = tmp_path / "train_dfn.py"
    script.write_text(DDP_SCRIPT.format(tests_dir=TESTS_DIR, output_dir=str(tmp_path / "run")))
    command = launch_two_processes(str(script))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO_DIR, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [(tmp_path / "run" / f"result-{rank}.txt").read_text() for rank in range(2)]
    assert records == ["RESULT DistributedType.MULTI_CPU 2 2 True"] * 2, result.stdout[-2000:]
