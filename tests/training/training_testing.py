"""Helpers of the training tests: a tiny MF² config, a 64-token tokenizer and small synthetic MFA datasets on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tiny import VOCAB_SIZE, tiny_config

TESTS_DIR = Path(__file__).resolve().parents[1]
REPO_DIR = TESTS_DIR.parent
IMAGE_SIZE = 32

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
LETTERS = [chr(code) for code in range(ord("a"), ord("z") + 1)]


def write_tokenizer(folder: Path) -> Path:
    """A BERT WordPiece tokenizer with 64 tokens (letters, continuation letters, punctuation): every caption maps to
    real ids, and the ids fit the tiny model's vocabulary."""
    from transformers import BertTokenizer

    vocab = SPECIAL_TOKENS + LETTERS + [f"##{letter}" for letter in LETTERS] + [".", ",", ":", "(", ")", "1", "2"]
    assert len(vocab) <= VOCAB_SIZE
    folder.mkdir(parents=True, exist_ok=True)
    # transformers 5 takes the vocabulary itself (`vocab_file=` is ignored: a tokenizer of the 5 special tokens).
    BertTokenizer(vocab={token: index for index, token in enumerate(vocab)}).save_pretrained(folder)
    return folder


def write_config(folder: Path, **overrides) -> Path:
    tiny_config(**overrides).save_pretrained(folder)
    return folder


def synthetic_rows(count: int, seed: int = 0, num_groups: int = 5) -> dict[str, list]:
    """MFA-schema columns: random face-sized images (some grayscale), random AU (with unknowns) and emotion labels,
    empty captions (the training code fills them from templates)."""
    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        size = int(rng.integers(36, 48))
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        images.append(image.convert("L") if index % 3 == 0 else image)
    au = rng.integers(0, 2, (count, 12))
    au[rng.random((count, 12)) < 0.1] = -1
    return {
        "image": images,
        "au": au.tolist(),
        "emotion": rng.integers(0, 8, count).tolist(),
        "au_caption": [[""] * 12 for _ in range(count)],
        "emotion_caption": [""] * count,
        "key_au_caption": [""] * count,
        "group": [f"subject-{index % num_groups}" for index in range(count)],
        "frame": [-1] * count,
        "source": ["synthetic"] * count,
    }


def write_dataset(path: Path, count: int, seed: int = 0) -> Path:
    """A synthetic MFA dataset as one Parquet file (images embedded)."""
    from datasets import Dataset

    from mf2.data import MFA_FEATURES

    dataset = Dataset.from_dict(synthetic_rows(count, seed), features=MFA_FEATURES)
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.to_parquet(str(path))
    return path


def write_setup(root: Path, train_size: int = 24, eval_size: int = 13) -> dict[str, Path]:
    """Config, tokenizer and train / eval Parquet files under `root`."""
    return {
        "config": write_config(root / "config"),
        "tokenizer": write_tokenizer(root / "tokenizer"),
        "train": write_dataset(root / "data" / "train.parquet", train_size, seed=0),
        "eval": write_dataset(root / "data" / "eval.parquet", eval_size, seed=1),
        "cache": root / "cache",
    }


def pretrain_argv(setup: dict[str, Path], output_dir: Path, **options) -> list[str]:
    """`mf2 train` arguments for the tiny setup (no warm-up, logging every step, small batches)."""
    values = {
        "config_name": setup["config"],
        "tokenizer_name": setup["tokenizer"],
        "train_data": f"mfa:{setup['train']}",
        "image_size": IMAGE_SIZE,
        "landmark_backend": "template",
        "cache_dir": setup["cache"],
        "output_dir": output_dir,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 4,
        "num_train_epochs": 1,
        "warmup_steps": 0,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "save_strategy": "no",
        "use_cpu": True,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }
    values.update(options)
    argv = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            argv += [f"--{key}", str(value)]
        elif isinstance(value, (list, tuple)):
            argv += [f"--{key}", *map(str, value)]
        else:
            argv += [f"--{key}", str(value)]
    return argv


def subprocess_env(**extra) -> dict[str, str]:
    """Environment of a child process: offline, one thread per process, the repository importable."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(REPO_DIR) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    env.update({key: str(value) for key, value in extra.items()})
    return env


def run_module(module: str, argv: list[str], timeout: float = 300, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *argv],
        env=subprocess_env(**env),
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_log_history(output_dir: Path) -> list[dict]:
    return json.loads((Path(output_dir) / "trainer_state.json").read_text())["log_history"]
