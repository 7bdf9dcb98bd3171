"""Append-only on-disk cache of accepted LLM captions, safe to kill at any moment.

One JSON object per line. Each accepted reply is written and `fsync`ed before the caller moves on, so a killed run
loses at most the replies that were still in flight; a line cut short by the kill is dropped when the file is next
opened.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path


def cache_key(image_sha256: str, caption_type: str, prompt_version: str, labels: str) -> str:
    """Key of one caption: image content hash, caption type, prompt version and the ground-truth labels it was
    asked with (the same pixels with different labels need a different caption)."""
    return f"{image_sha256}:{caption_type}:{prompt_version}:{labels}"


class CaptionCache:
    """Thread-safe JSON-lines cache; `path=None` keeps it in memory only.

    Example:

    ```python
    >>> with CaptionCache("captions.jsonl") as cache:
    ...     cache.put("key", {"text": "..."})
    ...     cache.get("key")["text"]
    '...'
    ```
    """

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._entries: dict[str, dict] = {}
        self._file = None
        self.skipped_lines = 0
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._load()
            self._file = open(self.path, "a", encoding="utf-8")

    def _load(self):
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            # A kill in the middle of a write leaves a partial last line: end it, so that the next append starts a
            # line of its own (it is skipped when read). Never cut the file: another process sharing it may have
            # appended whole lines since it was read.
            with open(self.path, "ab") as handle:
                handle.write(b"\n")
            data = data[:end]
            self.skipped_lines += 1
        # Entries end at "\n" alone: a caption may hold U+2028, U+2029 or U+0085, at which `str.splitlines` breaks.
        for line in data.decode("utf-8", errors="replace").split("\n"):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                self._entries[record["key"]] = record
            except (json.JSONDecodeError, KeyError, TypeError):
                self.skipped_lines += 1

    def get(self, key: str) -> dict | None:
        """The stored record of `key`, or `None`."""
        with self._lock:
            return self._entries.get(key)

    def put(self, key: str, record: dict) -> None:
        """Store `record` under `key` and make it durable before returning."""
        entry = {"key": key, **record}
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        with self._lock:
            if self._file is not None:
                self._file.write(line)
                self._file.flush()
                os.fsync(self._file.fileno())
            self._entries[key] = entry

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> CaptionCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["CaptionCache", "cache_key"]
