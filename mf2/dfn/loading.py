"""Running a trained DFN adapter: an MF² model plus the folder `mf2 finetune` writes (`adapter_config.json`,
`adapter_model.safetensors` and the AU thresholds tuned on its evaluation data, `thresholds.json`).

```python
>>> import mf2
>>> from transformers import pipeline
>>> pipe = pipeline("facial-state", model="mf2-base", adapter="outputs/my-dfn")  # `load_adapter` on its model
>>> from mf2.dfn import load_dfn_model
>>> model = load_dfn_model("mf2-base", "outputs/my-dfn")  # the same adapted model, for your own code
```

Which cells an adapter has is decided when it is built (`DFNConfig.modalities`, `resolve_dfn_config`): image cells only
on a base model without text weights, such as the shipped `mf2-base` (`checkpoint_has_text_weights`).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from torch import nn

from ..local_files import names_local_path
from .base_model import base_fingerprint, checkpoint_has_text_weights
from .config import DFN_PEFT_TYPE
from .peft_model import DFNModel
from .thresholds import THRESHOLDS_FILE, AdapterLoadError, read_thresholds

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_SUBFOLDER = "dfn"
"""Where `mf2 push` puts the adapter in a repository that also holds its base model (= `mf2.cli.analyze_parser`'s)."""


class AdapterBaseWarning(UserWarning):
    """The DFN adapter `adapter` was trained on another base model (its image path's weights differ): its outputs are
    not those it was trained and tuned for. Load it on the model it was trained on."""

    def __init__(self, adapter: str | os.PathLike):
        self.adapter = os.fspath(adapter)
        super().__init__(
            f"the DFN adapter {self.adapter} was trained on another base model (its weights differ from this model's): "
            "its answers are not the ones it was tuned for; load it on the model it was trained on"
        )


def adapter_subfolder(adapter_name_or_path: str | os.PathLike, subfolder: str | None = None) -> str | None:
    """The folder of `adapter_name_or_path` that holds the adapter: `subfolder` where one is given; else the root
    where it holds `adapter_config.json`, and `dfn/` where only that does (a repository `mf2 push` wrote, on the Hub or
    downloaded). Where neither is found (or the Hub cannot be asked) the root, whose loading then says what is wrong."""
    if subfolder is not None:
        return subfolder or None
    path = Path(adapter_name_or_path).expanduser()
    if path.exists():
        pushed = not (path / ADAPTER_CONFIG).is_file() and (path / ADAPTER_SUBFOLDER / ADAPTER_CONFIG).is_file()
        return ADAPTER_SUBFOLDER if pushed else None
    if names_local_path(adapter_name_or_path):
        return None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    for where in (None, ADAPTER_SUBFOLDER):
        try:
            hf_hub_download(os.fspath(adapter_name_or_path), ADAPTER_CONFIG, subfolder=where)
            return where
        except LocalEntryNotFoundError:  # offline and not cached: PEFT's own attempt reports it
            return None
        except EntryNotFoundError:
            continue
        except OSError:  # no such repo, a network error: as above
            return None
    return None


def check_adapter_folder(adapter_name_or_path: str | os.PathLike) -> None:
    """Raise a `ValueError` naming the fix when a local `adapter_name_or_path` is not a DFN adapter folder (names that
    are no local path are left to PEFT, as Hub ids)."""
    path = Path(adapter_name_or_path).expanduser()
    if not path.exists():
        if names_local_path(adapter_name_or_path):
            raise ValueError(
                f"adapter {os.fspath(adapter_name_or_path)}: no such folder; pass the --output_dir of `mf2 finetune`."
            )
        return
    if not path.is_dir():
        raise ValueError(f"adapter {path} is a file; pass the adapter's folder (the --output_dir of `mf2 finetune`).")
    config = path / ADAPTER_CONFIG
    if not config.is_file():
        what = "a saved model (config.json), not an adapter" if (path / "config.json").is_file() else "no adapter"
        raise ValueError(f"adapter {path} holds {what}: no {ADAPTER_CONFIG}; pass the --output_dir of `mf2 finetune`.")
    peft_type = json.loads(config.read_text(encoding="utf-8")).get("peft_type")
    if peft_type != DFN_PEFT_TYPE:
        raise ValueError(f"adapter {path} is a {peft_type} adapter; MF² runs DFN adapters (`mf2 finetune`).")


def load_adapter(
    model: nn.Module,
    adapter_name_or_path: str | os.PathLike,
    adapter_name: str = "default",
    subfolder: str | None = None,
) -> DFNModel:
    """`model` (a loaded `MF2ForFacialStateRecognition`) with the DFN adapter at `adapter_name_or_path` (a folder, a
    Hub repo, or either as `mf2 push` lays it out, with the adapter in `dfn/`: see `adapter_subfolder`), ready for
    inference (eval mode, nothing trainable); the adapter's tuned AU thresholds (`thresholds.json` beside it, else
    those its config carries) replace those of `model.config`, which the adapted model shares, while it is active
    (`disable_adapter()` and another adapter set the base model's or that adapter's own). As with PEFT's loaders, `model` itself is wrapped: its
    layers carry the adapter from then on (load a fresh copy for the base model's own answers).

    Raises:
        ValueError: a local folder that is not a DFN adapter (one line naming the fix).
        AdapterLoadError: the adapter could not be read.
    """
    adapter_name_or_path = os.path.expanduser(adapter_name_or_path)  # "~/my-dfn" (a Hub id never starts with ~)
    local = Path(adapter_name_or_path).exists()
    subfolder = adapter_subfolder(adapter_name_or_path, subfolder)
    check_adapter_folder(Path(adapter_name_or_path, subfolder or "") if local else adapter_name_or_path)
    fingerprint = base_fingerprint(model)  # before the adapter wraps it
    where = {"subfolder": subfolder} if subfolder else {}
    try:
        adapted = DFNModel.from_pretrained(model, os.fspath(adapter_name_or_path), adapter_name=adapter_name, **where)
    except AdapterLoadError:  # its thresholds.json (read by `DFNModel.load_adapter`) could not be fetched
        raise
    except (OSError, ValueError) as error:  # not here nor on the Hub (PEFT: ValueError), a damaged file (OSError)
        said = str(error).strip()
        raise AdapterLoadError(adapter_name_or_path, said.splitlines()[0] if said else repr(error)) from error
    trained_on = adapted.peft_config[adapter_name].base_model_fingerprint
    if None not in (trained_on, fingerprint) and trained_on != fingerprint:
        warnings.warn(AdapterBaseWarning(adapter_name_or_path), stacklevel=2)
    return adapted.eval()  # with the adapter's thresholds: `DFNModel.load_adapter` read them, once it was in


def load_dfn_model(
    model_name_or_path: str | os.PathLike, adapter_name_or_path: str | os.PathLike, **kwargs
) -> DFNModel:
    """The image-only recogniser of a checkpoint (`MF2ForFacialStateRecognition`: no text side, so nothing of a
    checkpoint without text weights is missing) with a DFN adapter, as `load_adapter` makes it. `kwargs` go to
    `from_pretrained` (`dtype`, `device_map`, ...); `"mf2-base"` is the shipped model."""
    from ..modeling_mf2 import MF2ForFacialStateRecognition

    adapter_name_or_path = os.path.expanduser(adapter_name_or_path)
    subfolder = adapter_subfolder(adapter_name_or_path) or ""  # "": the root, known; not looked for again
    check_adapter_folder(Path(adapter_name_or_path, subfolder))
    base = MF2ForFacialStateRecognition.from_pretrained(model_name_or_path, **kwargs)
    return load_adapter(base, adapter_name_or_path, subfolder=subfolder)


__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_SUBFOLDER",
    "AdapterBaseWarning",
    "AdapterLoadError",
    "THRESHOLDS_FILE",
    "adapter_subfolder",
    "check_adapter_folder",
    "checkpoint_has_text_weights",
    "load_adapter",
    "load_dfn_model",
    "read_thresholds",
]
