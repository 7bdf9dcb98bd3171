"""Where mf2 keeps the files it makes, and how it writes them: whole or not at all.

`mf2_home()` is `$MF2_HOME`, default `~/.cache/mf2`. Below it: `encoders/` (the offline encoders `mf2 encoders`
converts) and `cache/` (pre-processed datasets and feature caches of the training scripts). Read at every call, so a
changed environment variable takes effect at once.

`written_aside(target)` gives a temporary name beside `target` to write a file or a folder into, and renames it onto
`target` when the writing is done (`os.replace`, atomic on one file system). A failure, a full disk or Ctrl-C removes
the temporary and leaves `target` as it was; a killed process leaves only a hidden temporary, which the next write of
the same target removes. So a reader never sees half a file where a finished one is expected: a resumed run either
finds the whole target or writes it again.

`write_json(path, payload)` writes a JSON file that way.

`exclusive_lock(path)` holds a lock file for a block, so that two processes never write one thing at once (a cache
entry, a training run's folder); the system releases it when a process dies, so a killed run never leaves it held.

This file imports nothing from mf2, so it travels with the remote-code pipeline (`onnx_export` uses it).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import warnings

try:  # POSIX; where it is missing, `exclusive_lock` cannot keep two processes apart
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MF2_HOME_VARIABLE = "MF2_HOME"

PARTIAL_SUFFIX = ".partial"

_swept: set[Path] = set()  # folders whose killed processes' temporaries this process has removed already


class LockHeldError(RuntimeError):
    """Another process holds `lock_file`: `holder` is its process id as it wrote it into the file ("" if unknown)."""

    def __init__(self, lock_file: Path, holder: str):
        self.lock_file, self.holder = lock_file, holder
        holder = holder or "(unknown)"
        super().__init__(f"{lock_file.parent} is in use by process {holder}; wait for it to end, or stop it")


@contextmanager
def exclusive_lock(lock_file: str | os.PathLike, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file` (created if missing) for the block; the holder's process id is written
    into it. Where another process holds it: wait for it (`wait=True`), or raise `LockHeldError` at once."""
    lock_file = Path(lock_file)
    with open(lock_file, "a+") as handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                handle.seek(0)
                raise LockHeldError(lock_file, handle.read().strip()) from None
            except OSError as error:  # a file system without locks (some network and FUSE mounts): go on unlocked
                if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                warnings.warn(
                    f"{lock_file}: this file system cannot lock files ({error.strerror}); two processes "
                    "in the same folder would not be kept apart",
                    RuntimeWarning,
                    stacklevel=3,
                )
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield


def env_flag(name: str) -> bool:
    """Whether environment variable `name` is switched on (1, true, yes, on; any case), as `huggingface_hub` reads
    `HF_HUB_OFFLINE`."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def names_local_path(name: str | os.PathLike) -> bool:
    """Whether a model or adapter name can only be a local path: a Hub id is `name` or `owner/name`, so anything with
    more separators, a backslash or a leading `.`, `/`, `~` is a path (and a missing one is an error, not a download),
    and so is `folder/name` where `folder` is a folder here (`outputs/my-dfn` mistyped is not a Hub id to ask for)."""
    text = os.fspath(name)
    if text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1:
        return True
    return text.count("/") == 1 and os.path.isdir(text.split("/")[0])


def mf2_home() -> Path:
    """`$MF2_HOME`, else `~/.cache/mf2`."""
    return Path(os.environ.get(MF2_HOME_VARIABLE, Path.home() / ".cache" / "mf2"))


@contextmanager
def written_aside(target: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `target` for the block to write a file or a folder into, renamed onto `target` when
    the block ends normally (a folder replaces the old folder), removed when it raises or is interrupted.

    The temporary, `.NAME.PID.partial`, is hidden and carries the process id, so that processes writing the same
    target at once (the ranks of a distributed run filling one cache) never write into each other's; the last rename
    wins, and each wrote the whole thing.

        with written_aside(path) as partial:
            partial.write_text(text)
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(target)
    partial = target.with_name(f".{target.name}.{os.getpid()}{PARTIAL_SUFFIX}")
    try:
        yield partial
        if partial.is_dir() and target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)  # os.replace cannot replace a folder that holds files
        os.replace(partial, target)
    finally:
        _remove(partial)  # gone after the rename; still there only when the block failed


def write_json(path: str | os.PathLike, payload: Any) -> None:
    """Write JSON (indented, keys sorted) to `path`, creating folders; whole or not at all (`written_aside`)."""
    with written_aside(path) as partial:
        partial.write_text(json.dumps(payload, indent=2, sort_keys=True, default=float) + "\n")


def write_config(config: Any, folder: str | os.PathLike) -> Path:
    """A transformers config as `folder/config.json` (what `config.save_pretrained` writes), whole or not at all: the
    config is rewritten beside trained weights, and a kill mid-write must not leave a model that no longer loads."""
    target = Path(folder) / "config.json"
    with written_aside(target) as partial:
        config.to_json_file(partial)
    return target


def _remove_stale_partials(target: Path) -> None:
    """Remove the temporaries left in `target`'s folder by processes that were killed (no longer running).

    Once per folder and process: listing the folder at every write would make a run that writes N files into one
    folder (20,000 annotated PNGs) quadratic in N. A temporary left behind later in the run is this process's own,
    removed by `written_aside` itself unless the process is killed, and then the next run sweeps it."""
    folder = target.parent.resolve()
    if folder in _swept:
        return
    for partial in folder.glob(f".*{PARTIAL_SUFFIX}"):
        stem = partial.name[1 : -len(PARTIAL_SUFFIX)]  # NAME.PID
        pid = stem.rpartition(".")[2]
        if pid.isdigit() and not _running(int(pid)):
            _remove(partial)
    _swept.add(folder)


def _running(pid: int) -> bool:
    if os.name == "nt":  # there os.kill(pid, 0) sends Ctrl-C: never take another process's temporary for stale
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


__all__ = [
    "MF2_HOME_VARIABLE",
    "PARTIAL_SUFFIX",
    "LockHeldError",
    "env_flag",
    "exclusive_lock",
    "mf2_home",
    "write_config",
    "write_json",
    "written_aside",
]
