"""Reading the JSON-lines files the commands write, as a user's script would."""

import json
from pathlib import Path


def read_jsonl(path: Path) -> list[dict]:
    """One dict per line of `path`."""
    return [json.loads(line) for line in Path(path).read_text().splitlines()]
