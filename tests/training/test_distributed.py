"""Data-parallel pretraining on CPU: `accelerate launch --multi_gpu --num_processes 2` (gloo) runs `mf2 train` on a
tiny dataset, and the gathered evaluation scores every one of an odd number of examples exactly once."""

import collections
import json
import subprocess

import pytest
from distributed_launch import launch_two_processes
from training_testing import REPO_DIR, pretrain_argv, read_log_history, subprocess_env, write_setup

EVAL_SIZE = 13  # odd: the two shards are uneven and Accelerate pads the last batch with repeated examples


@pytest.mark.slow
def test_two_process_training_and_gathered_evaluation(tmp_path):
    setup = write_setup(tmp_path, train_size=24, eval_size=EVAL_SIZE)
    output = tmp_path / "out"
    launch = launch_two_processes("-m", "mf2.training.pretrain")
    argv = pretrain_argv(
        setup, output, eval_data=f"mfa:{setup['eval']}", save_predictions=True, per_device_eval_batch_size=3
    )
    result = subprocess.run(
        [*launch, *argv], env=subprocess_env(), cwd=REPO_DIR, capture_output=True, text=True, timeout=600
    )
    log = result.stdout[-4000:] + result.stderr[-4000:]
    assert result.returncode == 0, log

    # 24 rows, batch 4 per process, 2 processes: 3 optimizer steps per epoch (the data is sharded, not repeated).
    steps = [entry for entry in read_log_history(output) if "loss" in entry]
    assert [entry["step"] for entry in steps] == [1, 2, 3]
    assert all("emo_itc" in entry and "au_loss" in entry for entry in steps)

    # The gathered predictions hold each evaluation example exactly once (no padding duplicates, none missing).
    lines = (output / "eval_predictions.jsonl").read_text().splitlines()
    ids = collections.Counter(json.loads(line)["example_id"] for line in lines)
    assert ids == collections.Counter(range(EVAL_SIZE))
    assert json.loads((output / "eval_results.json").read_text())["eval_emotion_count"] == EVAL_SIZE
