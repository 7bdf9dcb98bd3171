"""Training tests: put `tests/` (for `tiny.py`) and this folder (for `training_testing.py`) on sys.path."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
for path in (os.path.dirname(HERE), HERE):
    if path not in sys.path:
        sys.path.insert(0, path)

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def one_thread():
    """One torch thread: on the shared 2-core machine, two threads make tiny models ~10x slower (contention)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """A tiny MF² config, its 64-token tokenizer and processor (template landmarks, 32 px), on disk."""
    from tiny import tiny_config
    from training_testing import IMAGE_SIZE, write_tokenizer
    from transformers import AutoTokenizer

    from mf2.processing_mf2 import MF2Processor

    root = tmp_path_factory.mktemp("tiny")
    config = tiny_config()
    tokenizer = AutoTokenizer.from_pretrained(write_tokenizer(root / "tokenizer"))
    processor = MF2Processor.from_config(config, tokenizer, landmark_backend="template", size=IMAGE_SIZE)
    return {"root": root, "config": config, "processor": processor}


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, data_dir):
    """`mf2 recipe --preset smoke` on the development data, every stage (about 40 s): `(output folder, Recipe)`. The
    recipe's tests and `mf2 ablate`'s share it."""
    from dataclasses import replace

    from mf2.training.recipe import PRESETS, Recipe, RecipeSettings

    output = tmp_path_factory.mktemp("recipe")
    settings = replace(RecipeSettings(), **PRESETS["smoke"])
    recipe = Recipe(data_dir, output, output / "mf2-base", settings, "cpu")
    recipe.run()
    return output, recipe
