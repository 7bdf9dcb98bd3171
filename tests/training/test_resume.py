"""A pretraining run killed mid-epoch (SIGKILL after a checkpoint) and resumed with `--resume` ends where an
uninterrupted run ends: same final step, final losses within 1%."""

import json
import signal
import subprocess
import sys
import time

import pytest
from training_testing import REPO_DIR, pretrain_argv, read_log_history, subprocess_env, write_setup

STEPS_PER_EPOCH = 10  # 40 rows, batch 4
TOTAL_STEPS = 2 * STEPS_PER_EPOCH
KILL_AFTER = 6  # a checkpoint in the middle of the first epoch


def command(setup, output_dir, resume: bool = False) -> list[str]:
    argv = pretrain_argv(
        setup,
        output_dir,
        eval_data=f"mfa:{setup['eval']}",
        num_train_epochs=2,
        save_strategy="steps",
        save_steps=3,
        save_total_limit=None,
        seed=7,
        tune_thresholds=False,
        resume=resume or None,
    )
    return [sys.executable, "-m", "mf2.training.pretrain", *argv]


def run(setup, output_dir, resume: bool = False) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command(setup, output_dir, resume),
        env=subprocess_env(),
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def final_losses(output_dir) -> tuple[int, float, float]:
    history = read_log_history(output_dir)
    steps = [entry for entry in history if "loss" in entry]
    evaluation = json.loads((output_dir / "eval_results.json").read_text())
    return steps[-1]["step"], steps[-1]["loss"], evaluation["eval_loss"]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tmp_path):
    setup = write_setup(tmp_path, train_size=40, eval_size=8)
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    run(setup, reference)

    process = subprocess.Popen(
        command(setup, interrupted),
        env=subprocess_env(),
        cwd=REPO_DIR,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        marker = interrupted / f"checkpoint-{KILL_AFTER}" / "trainer_state.json"
        deadline = time.monotonic() + 300
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert marker.exists() and not (interrupted / "model.safetensors").exists()  # killed before the end
    checkpoints = sorted(int(p.name.split("-")[1]) for p in interrupted.glob("checkpoint-*"))
    assert max(checkpoints) < TOTAL_STEPS and KILL_AFTER < STEPS_PER_EPOCH  # mid-epoch, before the end

    output = run(setup, interrupted, resume=True)
    assert "Resuming from" in output.stdout + output.stderr
    step, loss, eval_loss = final_losses(interrupted)
    reference_step, reference_loss, reference_eval_loss = final_losses(reference)
    print(
        f"resumed from {max(checkpoints)}: step {step} vs {reference_step}, last loss {loss} vs {reference_loss}, "
        f"eval loss {eval_loss} vs {reference_eval_loss}"
    )
    assert step == reference_step == TOTAL_STEPS
    assert loss == pytest.approx(reference_loss, rel=0.01)
    assert eval_loss == pytest.approx(reference_eval_loss, rel=0.01)
