"""Files and folders written whole or not at all (`mf2.local_files.written_aside`), and environment switches."""

import os
import subprocess
import sys

import pytest

from mf2.local_files import env_flag, written_aside


def test_a_file_appears_whole_and_no_temporary_is_left(tmp_path):
    target = tmp_path / "sub" / "out.json"
    with written_aside(target) as partial:
        partial.write_text("new")
        assert not target.exists() and partial.parent == target.parent and partial.name.startswith(".")
    assert target.read_text() == "new" and os.listdir(target.parent) == ["out.json"]


def test_a_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(OSError, match="disk full"), written_aside(target) as partial:
        partial.write_text("half")
        raise OSError("disk full")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.json"]


def test_ctrl_c_leaves_the_old_folder_and_no_temporary(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "weights").write_text("old")
    with pytest.raises(KeyboardInterrupt), written_aside(target) as partial:
        partial.mkdir()
        (partial / "weights").write_text("half")
        raise KeyboardInterrupt
    assert (target / "weights").read_text() == "old" and os.listdir(tmp_path) == ["model"]


def test_a_folder_replaces_the_old_folder(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "stale").write_text("old")
    with written_aside(target) as partial:
        partial.mkdir()
        (partial / "weights").write_text("new")
    assert os.listdir(target) == ["weights"] and os.listdir(tmp_path) == ["model"]


def test_a_killed_process_temporary_is_removed_by_the_next_write_and_a_running_one_is_not(tmp_path):
    target = tmp_path / "out.json"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = tmp_path / f".out.json.{int(dead.stdout)}.partial"
    killed.mkdir()  # a folder, as a killed recipe stage leaves
    (killed / "weights").write_text("half")
    running = tmp_path / f".out.json.{os.getppid()}.partial"  # the test runner's parent: alive
    running.write_text("being written")
    with written_aside(target) as partial:
        partial.write_text("new")
    assert not killed.exists() and running.exists() and target.read_text() == "new"


def test_a_folder_is_swept_for_stale_temporaries_once_per_process(tmp_path, monkeypatch):
    """Listing the folder at every write would make 20,000 annotated PNGs in one folder quadratic."""
    from pathlib import Path

    listed = []
    glob = Path.glob
    monkeypatch.setattr(Path, "glob", lambda self, pattern: listed.append(self) or glob(self, pattern))
    for index in range(50):
        with written_aside(tmp_path / f"{index}.png") as partial:
            partial.write_bytes(b"png")
    assert len(listed) == 1 and len(os.listdir(tmp_path)) == 50


@pytest.mark.parametrize(
    ("value", "on"),
    [("1", True), ("TRUE", True), (" yes ", True), ("on", True), ("0", False), ("", False), ("false", False)],
)
def test_env_flag_reads_the_values_huggingface_hub_accepts(monkeypatch, value, on):
    monkeypatch.setenv("MF2_TEST_FLAG", value)
    assert env_flag("MF2_TEST_FLAG") is on
    monkeypatch.delenv("MF2_TEST_FLAG")
    assert env_flag("MF2_TEST_FLAG") is False


def test_a_held_lock_is_refused_or_waited_for_and_names_its_holder(tmp_path):
    from mf2.local_files import LockHeldError, exclusive_lock

    lock = tmp_path / ".lock"
    with exclusive_lock(lock):
        with pytest.raises(LockHeldError) as raised:
            with exclusive_lock(lock, wait=False):
                pass
    assert raised.value.holder == str(os.getpid()) and raised.value.lock_file == lock
    with exclusive_lock(lock, wait=False):  # released: taken at once
        pass


def test_a_file_system_without_locks_warns_and_goes_on(tmp_path, monkeypatch):
    import errno

    from mf2 import local_files

    def unsupported(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(local_files.fcntl, "flock", unsupported)
    with pytest.warns(RuntimeWarning, match="cannot lock files"):
        with local_files.exclusive_lock(tmp_path / ".lock", wait=False):
            pass
