"""Resident memory of `mf2 analyze` on a long video with the shipped model: sampled while it runs, early vs late.

    python benchmarks/benchmark_video_memory.py                  # 3,000 frames of 128x128, every frame analysed
    python benchmarks/benchmark_video_memory.py --clip face      # 640x480 moving face: dlib, tracking (the default)
    python benchmarks/benchmark_video_memory.py --clip faceless --frames 20000 --annotate   # issue #21's check
    python benchmarks/benchmark_video_memory.py --clip face --frames 1500 --reports   # tracks, --summary, --plot

The default video is synthetic (a gradient that moves), analysed with the `template` landmark back-end so that every
frame goes through the model. `--clip face` is the example photo moving about a 640x480 frame as a head does
(`tests/face_images.moving_face_frames`), analysed as `mf2 analyze` does by default: dlib, faces searched every 10
frames and followed in between. `--clip faceless` is the gradient analysed as `mf2 analyze` does by default (dlib):
no frame has a face, so every frame is searched and gives a faceless record, the stretch without faces that must
neither hold memory nor hold back the records. `--annotate` adds `mf2 analyze --annotate` (a PNG per frame, into the
temporary folder, removed at the end with the rest).

The command's resident set is read from /proc every 0.5 s. Every `--report-every` seconds a line gives the time, the
resident set, the size of the output file and of its records, and the PNGs written so far; at the end, the peak
against the first minute's peak (the minute from the first record on, the model loaded: memory that grows with the
video shows as a later peak above it), and whether the output file grew from each report to the next (records are
written as each frame is done, not at the end).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FIRST_MINUTE = 60.0


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


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def count_lines(path: Path, start: int, counted: int) -> tuple[int, int]:
    """Lines of `path` (records of the JSON lines output), reading only what came after byte `start`: `(end, lines)`."""
    try:
        with path.open("rb") as stream:
            stream.seek(start)
            data = stream.read()
    except FileNotFoundError:
        return start, counted
    whole = data.rfind(b"\n") + 1  # a record is counted once its line is whole
    return start + whole, counted + data[:whole].count(b"\n")


def count_pngs(folder: Path | None) -> int:
    if folder is None or not folder.is_dir():
        return 0
    with os.scandir(folder) as entries:
        return sum(1 for entry in entries if entry.name.endswith(".png") and not entry.name.startswith("."))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--size", type=int, default=128, help="side of the gradient's (and faceless) frames")
    parser.add_argument("--model", default=None, help="default: the shipped mf2-base")
    parser.add_argument(
        "--clip",
        choices=("gradient", "face", "faceless"),
        default="gradient",
        help="what the video shows, and how it is analysed (see above)",
    )
    parser.add_argument("--annotate", action="store_true", help="also write an annotated PNG per frame")
    parser.add_argument(
        "--reports",
        action="store_true",
        help="also --all-faces --summary and --plot (each track's "
        "running sums and timeline are held until the video ends)",
    )
    parser.add_argument(
        "--report-every",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="seconds between two progress lines (default 30)",
    )
    parser.add_argument(
        "--workdir",
        default=None,
        help="where the video, the output and the PNGs go (a temporary "
        "folder inside it, removed at the end; default: the system's temporary folder)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as folder:
        video, output = Path(folder) / "long.mp4", Path(folder) / "out.jsonl"
        annotated = Path(folder) / "annotated" if args.annotate else None
        command = [sys.executable, "-m", "mf2.cli", "analyze", str(video), "--no-progress", "-o", str(output)]
        written = time.perf_counter()
        if args.clip == "face":
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            from face_images import write_moving_face_video

            write_moving_face_video(video, args.frames)
        else:
            write_video(video, args.frames, args.size)
            if args.clip == "gradient":
                command += ["--landmark-backend", "template"]
        print(
            f"{args.clip} video of {args.frames} frames written in {time.perf_counter() - written:.0f} s "
            f"({video.stat().st_size / 1e6:.1f} MB)",
            flush=True,
        )
        if annotated is not None:
            command += ["--annotate", str(annotated)]
        if args.reports:
            command += [
                "--all-faces",
                "--summary",
                str(Path(folder) / "summary.csv"),
                "--plot",
                str(Path(folder) / "plots"),
            ]
        if args.model:
            command += ["--model", args.model]
        print("running:", " ".join(command[1:]), flush=True)
        stderr_file = Path(folder) / "stderr.txt"
        samples: list[tuple[float, float]] = []
        first_record = None  # seconds at which the output file first held something
        reports: list[tuple[float, int, int]] = []  # (seconds, output bytes, records)
        counted_to, records = 0, 0
        start = time.perf_counter()
        with stderr_file.open("w") as stderr:
            process = subprocess.Popen(command, stderr=stderr)
            next_report = start + args.report_every
            while process.poll() is None:
                value = rss_mb(process.pid)
                now = time.perf_counter()
                if value is not None:
                    samples.append((now - start, value))
                if first_record is None and file_size(output) > 0:
                    first_record = now - start
                if now >= next_report:
                    next_report += args.report_every
                    counted_to, records = count_lines(output, counted_to, records)
                    reports.append((now - start, file_size(output), records))
                    pngs = f", {count_pngs(annotated)} PNGs" if annotated is not None else ""
                    print(
                        f"  {now - start:6.0f} s: resident {value or 0:.0f} MB, output {file_size(output) / 1e6:.2f}"
                        f" MB, {records} records{pngs}",
                        flush=True,
                    )
                time.sleep(0.5)
        message = stderr_file.read_text(errors="replace")
        counted_to, records = count_lines(output, counted_to, records)
        pngs = count_pngs(annotated)
        png_bytes = sum(path.stat().st_size for path in annotated.glob("*.png")) if annotated is not None else 0
        final_size = file_size(output)
    if process.returncode != 0 or len(samples) < 8:
        raise SystemExit(f"mf2 analyze failed ({process.returncode}): {message.strip()[-500:]}")
    seconds = samples[-1][0]
    quarter = len(samples) // 4
    early = max(value for _, value in samples[quarter : 2 * quarter])
    late = max(value for _, value in samples[-quarter:])
    peak = max(value for _, value in samples)
    since = first_record if first_record is not None else 0.0
    first_minute = max(value for time_, value in samples if time_ <= since + FIRST_MINUTE)
    drawn = f"; {pngs} annotated PNGs, {png_bytes / 1e6:.1f} MB" if annotated is not None else ""
    print(
        f"{records} records from {args.frames} frames in {seconds:.0f} s ({args.frames / seconds:.1f} frames/s); "
        f"output {final_size / 1e6:.2f} MB{drawn}"
    )
    if seconds > since + FIRST_MINUTE:
        minute = f"first minute's (to {since + FIRST_MINUTE:.0f} s, the first record at {since:.0f} s)"
    else:
        minute = f"whole run's ({seconds:.0f} s: not a minute after the first record at {since:.0f} s)"
    print(
        f"resident memory: peak {peak:.0f} MB, {peak - first_minute:+.0f} MB over the {minute} peak of "
        f"{first_minute:.0f} MB; second quarter max {early:.0f} MB, last quarter max {late:.0f} MB (growth "
        f"{late - early:+.0f} MB)"
    )
    sizes = [size for _, size, _ in reports]
    grew = sum(later > earlier for earlier, later in zip(sizes, sizes[1:]))
    if len(sizes) >= 2:
        print(
            f"output file during the run: {sizes[0] / 1e6:.2f} MB at {reports[0][0]:.0f} s to {sizes[-1] / 1e6:.2f} "
            f"MB at {reports[-1][0]:.0f} s; grew from each report to the next in {grew} of {len(sizes) - 1}, "
            f"{final_size / 1e6:.2f} MB at the end"
        )
    else:
        print(
            f"output file during the run: {len(sizes)} report(s) only (the run is shorter than two "
            f"--report-every periods); {final_size / 1e6:.2f} MB at the end"
        )


if __name__ == "__main__":
    main()
