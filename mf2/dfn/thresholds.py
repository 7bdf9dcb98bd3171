"""An adapter's own AU thresholds: `thresholds.json` beside it (a local folder or a Hub repo), and the error of an
adapter that cannot be read. Apart from `loading.py` so that `DFNModel` (which `loading.py` builds on) reads them too."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..local_files import names_local_path

THRESHOLDS_FILE = "thresholds.json"  # = mf2.training.scoring.THRESHOLDS_FILE, which writes it
"""Beside the adapter: `{"au_thresholds": [...]}`, the per-AU thresholds tuned on `mf2 finetune`'s evaluation data."""


class AdapterLoadError(OSError):
    """The DFN adapter `adapter` could not be read (`reason`, its loader's first line): neither a local folder nor a
    Hub repo that holds one, or a damaged one. Raised as itself so that a caller never blames the base model."""

    def __init__(self, adapter: str | os.PathLike, reason: str):
        self.adapter, self.reason = os.fspath(adapter), reason
        super().__init__(f"could not load the DFN adapter {self.adapter}: {reason}")


def read_thresholds(folder: str | os.PathLike, subfolder: str | None = None) -> list[float] | None:
    """AU thresholds from `thresholds.json` beside an adapter (a local folder, or a Hub repo and its `subfolder`,
    where `mf2 push` puts it), or None where there is none. A Hub file that exists but cannot be fetched raises
    `AdapterLoadError`: the adapter must not run with thresholds other than its own."""
    if names_local_path(folder) or Path(folder).exists():
        path = Path(folder, subfolder or "") / THRESHOLDS_FILE
        if not path.is_file():
            return None
        text = path.read_text(encoding="utf-8")
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        try:
            text = Path(hf_hub_download(os.fspath(folder), THRESHOLDS_FILE, subfolder=subfolder)).read_text("utf-8")
        except LocalEntryNotFoundError as error:  # offline and not cached: it may exist (a subclass of the next)
            raise AdapterLoadError(folder, f"its {THRESHOLDS_FILE} could not be read ({error})") from error
        except EntryNotFoundError:
            return None
        except OSError as error:  # offline and not cached, no such repo, a network error
            raise AdapterLoadError(folder, f"its {THRESHOLDS_FILE} could not be read ({error})") from error
    return [float(value) for value in json.loads(text)["au_thresholds"]]


__all__ = ["THRESHOLDS_FILE", "AdapterLoadError", "read_thresholds"]
