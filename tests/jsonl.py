"""Reading the JSON-lines files the commands write, as a user's script would."""

import json
from pathlib import Path


def read_jsonl(path: Path) -> list[dict]:
    """One dict per line of `path` (lines end at "\\n" alone, as JSON lines do: a record may hold U+2028 raw)."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").split("\n") if line]
