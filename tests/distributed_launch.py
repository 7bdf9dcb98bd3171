"""Launching a test's command on two CPU processes with Accelerate, as a user's `accelerate launch` does."""

import socket
import sys


def free_port() -> int:
    """A TCP port of this machine that nothing listens on (for the processes' rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two_processes(*target: str) -> list[str]:
    """The command that runs `target` (`"-m", "mf2", ...` or a script path) on 2 CPU processes: torchrun under
    `--multi_gpu` with gloo (accelerate's `--cpu` launches a single process on one machine)."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        *target,
    ]
