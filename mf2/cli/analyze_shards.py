"""`mf2 analyze` over several processes (`accelerate launch --num_processes N`) and `--resume`.

Each process takes every N-th input not yet in the output (by position, so the split is the same in every process),
writes its records into its own part file next to the output (`OUTPUT.rankR.part`, one whole line per record,
flushed), and process 0 merges the output already there and every part into the output, in input order, then removes
the parts. A run that is killed leaves its parts: `--resume` folds them (less each part's last input, which may be
incomplete, and any truncated last line) into the output first, then analyses only the inputs not in it.

A run in one process without `--resume` writes the output itself, input by input
(`mf2.cli.analyze_records.RecordWriter`). Killed, it leaves whole inputs but for the last one, which `--resume` drops
when it may be incomplete: a truncated line, an image or video frame whose last record's `face` number is below its
`faces` count less one, or a video (its frames may stop part-way) that does not end with its error record. So a run
killed at any byte, then resumed, writes the records an uninterrupted run writes.

Records are matched to inputs by their `path`; an input named twice is analysed once here.
"""

from __future__ import annotations

import csv
import errno
import functools
import io
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TextIO

from ..local_files import written_aside
from ..video import is_video
from .analyze_checks import AnalyzeError, frame_png_pattern
from .analyze_inputs import InputPath, is_url
from .analyze_records import OUTPUT_ERRORS, annotation_name

Line = tuple[str, str]
"""One record of an output file: its input's path and its text (a JSON line, or a CSV row with its line end)."""


@dataclass(frozen=True)
class Processes:
    """This process's place in the launch: `rank` of `world_size` (1 of 1 without a distributed launch)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched() -> Processes:
    """The launch that accelerate (or torchrun) describes in the environment: `RANK`, `WORLD_SIZE`, `LOCAL_RANK`."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        return Processes()
    return Processes(rank, world, local) if world > 1 else Processes()


def start(processes: Processes) -> None:
    """Join the process group (gloo: it only carries barriers and the counters, on CPU, whatever the device)."""
    if not processes.distributed:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        # A long shard may keep the others waiting at the final barrier: allow a day, not the default 30 minutes.
        dist.init_process_group("gloo", init_method="env://", timeout=timedelta(hours=24))


COUNTS = ("records", "faces", "errors", "warnings")
"""The counters of a run (`mf2.cli.analyze`'s summary), added up over the processes."""


def summed(processes: Processes, counts: dict[str, int], failed: bool = False) -> dict[str, int]:
    """`counts` (the `COUNTS`, and `failed`: how many processes failed) added up over the processes; a barrier too.
    Every process gets there, the failed ones included, so that none waits for a process that is gone."""
    local = {**{key: int(counts.get(key, 0)) for key in COUNTS}, "failed": int(failed)}
    if not processes.distributed:
        return local
    import torch
    import torch.distributed as dist

    total = torch.tensor(list(local.values()), dtype=torch.int64)
    try:
        dist.all_reduce(total)
    except RuntimeError as error:  # a process was killed: its message (if any) is above
        raise RuntimeError(f"process {processes.rank}: another process stopped ({str(error)[:200]})") from error
    return dict(zip(local, (int(value) for value in total)))


def _share_failure(processes: Processes, run: Callable[[], dict[str, int]]) -> dict[str, int]:
    """`run()` in every process, then the counters summed: a failure (one process's, or a killed peer's) is raised
    in every process, once all have got this far."""
    try:
        counts, failure = run(), None
    except Exception as error:  # re-raised below, after the others learnt of it
        counts, failure = {}, error
    total = summed(processes, counts, failure is not None)
    if failure is not None:
        raise failure
    if total["failed"]:
        raise RuntimeError("another process failed (its message is above); rerun with --resume to go on")
    return total


def finish(processes: Processes) -> None:
    if processes.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def device_for(processes: Processes, device: str | None) -> str | None:
    """One GPU per process: `cuda:LOCAL_RANK` when the device is unset or `cuda` and the machine has GPUs."""
    if not processes.distributed or device not in (None, "cuda"):
        return device
    import torch

    if not torch.cuda.is_available():
        return device
    return f"cuda:{processes.local_rank % torch.cuda.device_count()}"


def annotation_names(files: list[InputPath], stems: dict[str, str]) -> dict[str, str]:
    """The `--annotate` PNG name of every image among `files`, given in input order as one process gives them, so
    that processes (and resumed runs) that each see only some inputs never write two images to one name; and never a
    name of a video's frame PNGs (`stems`: the videos' PNG stems, `video_stems`), so that `clip_frame000000.png`
    beside `clip.mp4` does not replace that video's first annotated frame."""
    frames = [frame_png_pattern(stem) for stem in stems.values()]
    used: set[str] = set()
    names = {}
    for path in dict.fromkeys(files):
        if not is_video(path):
            name = annotation_name(path, None, used)
            while any(frame.fullmatch(name) for frame in frames):
                name = annotation_name(path, None, used)  # the next free one: that name is a video frame's
            names[str(path)] = name
    return names


def part_path(output: Path, rank: int) -> Path:
    return output.with_name(f"{output.name}.rank{rank}.part")


def part_paths(output: Path) -> list[Path]:
    """The part files next to `output`, whatever number of processes wrote them, by rank."""
    found = output.parent.glob(f"{output.name}.rank*.part")
    return sorted(found, key=lambda path: int(path.name.rsplit(".rank", 1)[1].split(".")[0] or 0))


def read_lines(path: Path, fmt: str) -> tuple[list[str] | None, list[Line]]:
    """The records of an output or part file (CSV: and its header), without a truncated last line: a killed run
    stops mid-line at worst, and that line is not a record."""
    if not path.is_file():
        return None, []
    text = path.read_text(encoding="utf-8", errors=OUTPUT_ERRORS)  # a name's odd bytes: as written
    text = text[: text.rfind("\n") + 1]  # drop what follows the last line end: an unfinished line
    if fmt == "jsonl":
        return None, list(_json_lines(text))
    rows = _csv_rows(text)
    if not rows:
        return None, []
    return rows[0], [(row[0], _csv_text(row)) for row in rows[1:] if row]


def _json_lines(text: str) -> Iterable[Line]:
    # Records end at "\n" alone: `str.splitlines` also breaks at U+2028, U+2029 and U+0085, which a file name may hold
    # and JSON writes raw (ensure_ascii=False), and would drop that input's record as two damaged halves.
    for line in text.split("\n")[:-1]:
        line += "\n"
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a damaged line is not a record: its input is analysed again
        if isinstance(record, dict) and "path" in record:
            yield str(record["path"]), line


def _csv_rows(text: str) -> list[list[str]]:
    try:
        return list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error:
        return []


def _csv_text(row: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(row)
    return buffer.getvalue()


def without_last_input(lines: list[Line]) -> list[Line]:
    """A killed run's part less its last input, whose records (faces, video frames) may stop part-way."""
    if not lines:
        return lines
    last = lines[-1][0]
    end = len(lines)
    while end and lines[end - 1][0] == last:
        end -= 1
    return lines[:end]


def without_unfinished_input(lines: list[Line], header: list[str] | None, fmt: str) -> list[Line]:
    """An output's records less its last input when that one may stop part-way (a killed run's output, written
    input by input): an image or video frame whose last record says more faces follow (`face` < `faces` - 1), or a
    video, unless its last record is its error (a video is written frame by frame; nothing says its last frame came,
    so a video that ends a finished output is analysed again too). A whole image, an error, and a record without a
    face count (an older output's) keep every record."""
    if not lines:
        return lines
    path, text = lines[-1]
    record = record_fields(text, header, fmt)
    if is_video(path):
        finished = bool(record.get("error"))
    else:
        face, faces = _number(record.get("face")), _number(record.get("faces"))
        finished = face is None or faces is None or face + 1 >= faces
    return lines if finished else without_last_input(lines)


def record_fields(text: str, header: list[str] | None, fmt: str) -> dict:
    """One record's fields, from its JSON line or its CSV row and the CSV header (CSV values are text)."""
    if fmt == "jsonl":
        return json.loads(text)
    rows = _csv_rows(text)
    return dict(zip(header or [], rows[0])) if rows else {}


def _number(value) -> int | None:
    """A record's `face` or `faces` (CSV: its text), `None` when empty or missing."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def input_key(path: InputPath | str) -> str:
    """What names one input across runs: a URL as written, a local file by its real path, so that `--resume` knows
    `imgs/a.png` from `./imgs/a.png` or `/home/me/imgs/a.png` (each record keeps the spelling it was given)."""
    name = str(path)
    return name if is_url(name) else _real_path(name, "" if os.path.isabs(name) else os.getcwd())


@functools.lru_cache(maxsize=4096)
def _real_path(name: str, cwd: str) -> str:
    # Cached (by working folder too, which a relative name is read from): a merge asks once per record line, and a
    # video's thousands of frame records share one path.
    return os.path.realpath(os.path.join(cwd, name))


def ordered(lines: list[Line], files: list[InputPath]) -> list[Line]:
    """Records grouped by input (`input_key`) in the order of `files` (each input's records keep their order; records
    of inputs not among `files`, from an earlier run, come last), each input's records once: the first copy found
    wins."""
    position: dict[str, int] = {}
    for index, path in enumerate(files):
        position.setdefault(input_key(path), index)
    groups: dict[str, list[Line]] = {}
    owner: dict[str, int] = {}  # which source (output or part) gave an input's records: copies from others are dropped
    for source, line in lines:
        key = input_key(line[0])
        if owner.setdefault(key, source) == source:
            groups.setdefault(key, []).append(line)
    keys = sorted(groups, key=lambda key: position.get(key, len(files)))
    return [line for key in keys for line in groups[key]]


def write_atomically(output: Path, header: list[str] | None, lines: list[Line]) -> None:
    """Write `output` whole through a temporary file and a rename: a run killed here leaves the old file intact."""
    with (
        written_aside(output) as partial,
        open(partial, "w", newline="", encoding="utf-8", errors=OUTPUT_ERRORS) as stream,
    ):
        if header is not None:
            stream.write(_csv_text(header))
        stream.writelines(text for _, text in lines)
        stream.flush()
        os.fsync(stream.fileno())


def merge(output: Path, fmt: str, files: list[InputPath], interrupted: bool) -> None:
    """Fold the part files into `output` (what it holds stays), ordered by `files`, and remove the parts.
    `interrupted`: the parts are a killed run's, so each one's last input is dropped (it is analysed again), and so is
    the output's last input when it may be incomplete (`without_unfinished_input`)."""
    header, kept = read_lines(output, fmt)
    whole = without_unfinished_input(kept, header, fmt) if interrupted else kept
    dropped, kept = len(whole) < len(kept), whole
    sources: list[tuple[int, Line]] = [(0, line) for line in kept]
    parts = part_paths(output)
    for number, part in enumerate(parts, start=1):
        part_header, lines = read_lines(part, fmt)
        if header is not None and part_header is not None and part_header != header:
            raise ValueError(f"{output} has other CSV columns than {part.name}; write to a new --output")
        header = header or part_header
        sources += [(number, line) for line in (without_last_input(lines) if interrupted else lines)]
    lines = ordered(sources, files)
    if parts or dropped or not output.exists():
        write_atomically(output, header if lines else None, lines)
    for part in parts:
        part.unlink(missing_ok=True)


def done_inputs(output: Path, fmt: str) -> set[str]:
    """The inputs (`input_key`) that already have their records in `output`."""
    return {input_key(path) for path, _ in read_lines(output, fmt)[1]}


def shard(files: list[InputPath], done: set[str], processes: Processes) -> tuple[list[InputPath], list[InputPath]]:
    """(the inputs still to analyse, in order and each once; this process's share of them: every N-th). `done` holds
    `input_key`s."""
    todo, seen = [], set(done)
    for path in files:
        key = input_key(path)
        if key not in seen:
            seen.add(key)
            todo.append(path)
    return todo, todo[processes.rank :: processes.world_size]


def run_sharded(
    processes: Processes,
    output: Path,
    fmt: str,
    files: list[InputPath],
    resume: bool,
    analyse: Callable[[TextIO, list[InputPath]], dict[str, int]],
) -> tuple[str | None, dict[str, int]]:
    """Analyse this process's share into its part file, then (process 0) merge the parts into `output`.

    `analyse(stream, share)` writes the records of `share` into `stream` and returns its counters. Returns the
    counters summed over the processes and, in process 0 (else `None`), what was analysed, for the summary.
    Raises `AnalyzeError` (one line) when the output or a part cannot be read, written or merged, or when another
    process failed; a failure in `analyse` is raised as it is."""

    def prepare() -> dict[str, int]:
        if processes.rank == 0:
            if output.parent.exists() and not output.parent.is_dir():  # mkdir would say "File exists"
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(output.parent))
            output.parent.mkdir(parents=True, exist_ok=True)
            if resume:
                merge(output, fmt, files, interrupted=True)
            else:
                for stale in [output, *part_paths(output)]:
                    stale.unlink(missing_ok=True)
        return {}

    def analyse_share() -> dict[str, int]:
        with open(
            part_path(output, processes.rank), "w", 1, newline="", encoding="utf-8", errors=OUTPUT_ERRORS
        ) as stream:
            return analyse(stream, share)  # line-buffered: each record reaches the file whole

    start(processes)
    try:
        _share_failure(processes, prepare)  # then every process reads the same output: the same inputs to do
        todo, share = shard(files, done_inputs(output, fmt) if resume else set(), processes)
        counts = _share_failure(processes, analyse_share)
        if processes.rank != 0:
            return None, counts
        merge(output, fmt, files, interrupted=False)  # summing waited for every process: the parts are whole
    except RuntimeError as error:  # another process failed, or the process group broke
        raise AnalyzeError(str(error).strip().splitlines()[0]) from error
    except OSError as error:  # the system's words and the file they are about, not Python's "[Errno 17] ..."
        where = f": {error.filename}" if error.filename is not None else ""
        raise AnalyzeError(f"--output {output}: {error.strerror or error}{where}") from error
    except ValueError as error:
        raise AnalyzeError(f"--output {output}: {str(error).strip().splitlines()[0]}") from error
    finally:
        finish(processes)
    skipped = len(set(map(str, files))) - len(todo)
    return f"{len(todo)} file(s) analysed by {processes.world_size} process(es), {skipped} already in {output}", counts


__all__ = [
    "Processes",
    "annotation_names",
    "device_for",
    "launched",
    "merge",
    "read_lines",
    "record_fields",
    "run_sharded",
    "without_last_input",
    "without_unfinished_input",
]
