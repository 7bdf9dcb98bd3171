"""Resident memory of `mf2 analyze` on a long video with the shipped model: sampled while it runs, early vs late.

    python benchmarks/benchmark_video_memory.py                  # 3,000 frames of 128x128, every frame analysed
    python benchmarks/benchmark_video_memory.py --clip face      # 640x480 moving face: dlib, tracking (the default)

The default video is synthetic (a gradient that moves), analysed with the `template` landmark back-end so that every
frame goes through the model. `--clip face` is the example photo moving about a 640x480 frame as a head does
(`tests/face_images.moving_face_frames`), analysed as `mf2 analyze` does by default: dlib, faces searched every 10
frames and followed in between. The command's resident set is read from /proc every 0.5 s.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_video(path: Path, count: int, size: int, fps: int = 25) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        ramp = np.linspace(0, 255, size, dtype=np.float32)
        for index in range(count):
            frame = np.stack([np.roll(ramp, index)[None, :].repeat(size, 0)] * 3, axis=-1).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        return None
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--model", default=None, help="default: the shipped mf2-base")
    parser.add_argument("--clip", choices=("gradient", "face"), default="gradient", help="what the video shows")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        video = Path(folder) / "long.mp4"
        command = [sys.executable, "-m", "mf2.cli", "analyze", str(video), "--no-progress",
                   "-o", str(Path(folder) / "out.jsonl")]  # fmt: skip
        if args.clip == "face":
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            from face_images import write_moving_face_video

            write_moving_face_video(video, args.frames)
        else:
            write_video(video, args.frames, args.size)
            command += ["--landmark-backend", "template"]
        if args.model:
            command += ["--model", args.model]
        start = time.perf_counter()
        process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        samples: list[tuple[float, float]] = []
        while process.poll() is None:
            value = rss_mb(process.pid)
            if value is not None:
                samples.append((time.perf_counter() - start, value))
            time.sleep(0.5)
        stderr = process.stderr.read()
        records = sum(1 for _ in open(Path(folder) / "out.jsonl"))
    if process.returncode != 0 or len(samples) < 8:
        raise SystemExit(f"mf2 analyze failed ({process.returncode}): {stderr.strip()[-500:]}")
    seconds = samples[-1][0]
    quarter = len(samples) // 4
    early = max(value for _, value in samples[quarter : 2 * quarter])
    late = max(value for _, value in samples[-quarter:])
    print(f"{records} records from {args.frames} frames in {seconds:.0f} s ({args.frames / seconds:.1f} frames/s)")
    print(f"resident memory: peak {max(v for _, v in samples):.0f} MB; second quarter max {early:.0f} MB, last quarter "
          f"max {late:.0f} MB (growth {late - early:+.0f} MB)")  # fmt: skip


if __name__ == "__main__":
    main()
