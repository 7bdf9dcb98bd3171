"""The trained MF² that ships inside the package (`mf2-base`), and how names resolve to it.

`pipeline("facial-state")` without a model, `mf2 analyze` without `--model`, and the training scripts'
`--model_name_or_path mf2-base` all load the folder `mf2/models/mf2-base` (safetensors, float16 weights, its
processor and model card). For the Auto classes, `import mf2` also makes the name `mf2-base` resolve the way a Hub id
does when offline: the folder is linked into the Hugging Face cache as the snapshot of a repository called `mf2-base`,
so `AutoModel.from_pretrained("mf2-base")` works with `HF_HUB_OFFLINE=1` (or no network) like any cached Hub model.
Other Hub ids are untouched and load the normal way.

Whether a checkpoint is trained, its name and version travel in its config (`MF2Config.trained`, `model_name`,
`model_version`); `model_identity` turns them into the fields every result record carries.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "mf2-base"
"""The short name of the shipped model (also its `config.model_name`)."""

MODEL_FILES = (
    "config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "tokenizer_config.json",
    "README.md",
)  # fmt: skip
"""What a complete shipped model folder holds (more files may be present)."""


class DefaultModelMissingError(FileNotFoundError):
    """The shipped model folder is absent or incomplete (a source checkout without its weights)."""

    def __init__(self, path: Path, missing: list[str]):
        self.path, self.missing = path, missing
        super().__init__(
            f"The shipped MF² model is incomplete at {path} (missing {', '.join(missing)}); reinstall mf2, or "
            "rebuild it with `mf2 recipe` (see the README)."
        )


def default_model_path() -> Path:
    """Folder of the shipped model (inside the installed package)."""
    return Path(__file__).resolve().parent / "models" / DEFAULT_MODEL_NAME


def check_default_model() -> Path:
    """The shipped model's folder; raises `DefaultModelMissingError` when it is incomplete."""
    path = default_model_path()
    missing = [name for name in MODEL_FILES if not (path / name).is_file()]
    if missing:
        raise DefaultModelMissingError(path, missing)
    return path


def resolve_model(name_or_path: str | os.PathLike | None) -> str:
    """A model argument as a loadable location: None or the short name → the shipped folder; anything else as given
    (a local folder of that name wins over the short name)."""
    if name_or_path is None or (str(name_or_path) == DEFAULT_MODEL_NAME and not Path(DEFAULT_MODEL_NAME).exists()):
        return str(check_default_model())
    return str(name_or_path)


def model_identity(config: Any, name_or_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """`{"model", "model_version", "model_trained"}` of a loaded model, from its config (see module docstring)."""
    return {
        "model": getattr(config, "model_name", None) or (str(name_or_path) if name_or_path is not None else None),
        "model_version": getattr(config, "model_version", None),
        "model_trained": bool(getattr(config, "trained", False)),
    }


def load_pipeline(model: str | os.PathLike, device: str | None = None, dtype: str | None = None,
                  trust_remote_code: bool = False, **options):  # fmt: skip
    """The facial-state pipeline of `model`: `pipeline("facial-state", model=model, ...)` (importing `mf2` registered
    the task), where `model` may be the short name of the shipped model (`resolve_model`) and `dtype` a name
    ("float16"; "auto" or `None` keeps the checkpoint's)."""
    import torch
    from transformers import pipeline

    kwargs: dict[str, Any] = {"device": device} if device else {}
    if dtype and dtype != "auto":
        kwargs["dtype"] = getattr(torch, dtype)
    return pipeline(
        "facial-state", model=resolve_model(model), trust_remote_code=trust_remote_code, **kwargs, **options
    )


def silence_loading_bars() -> Callable[[], None]:
    """Switch off the weight-loading and download bars of transformers and huggingface_hub (`mf2 analyze
    --no-progress`). Returns what puts them back (the switches are process-wide; the CLI may be called from Python)."""
    import huggingface_hub.utils
    import transformers.utils.logging

    transformers_on = transformers.utils.logging.is_progress_bar_enabled()
    hub_on = not huggingface_hub.utils.are_progress_bars_disabled()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()

    def restore() -> None:
        if transformers_on:
            transformers.utils.logging.enable_progress_bar()
        if hub_on:
            huggingface_hub.utils.enable_progress_bars()

    return restore


def _snapshot_revision(folder: Path) -> str:
    """A 40-hex "commit" naming this exact copy of the shipped files (their names, sizes and modification times)."""
    digest = hashlib.sha1()
    for name in sorted(os.listdir(folder)):
        stat = (folder / name).stat()
        digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


def register_in_hub_cache(cache_dir: str | os.PathLike | None = None) -> Path | None:
    """Link the shipped folder into the Hugging Face cache as the snapshot of repository `mf2-base` (see module
    docstring). Idempotent and cheap when done; returns the snapshot folder, or None when the shipped model or a
    writable cache is missing (the short name then works only through `resolve_model`)."""
    source = default_model_path()
    if not (source / "config.json").is_file():
        return None
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        repo = Path(cache_dir or HF_HUB_CACHE) / f"models--{DEFAULT_MODEL_NAME}"
        revision = _snapshot_revision(source)
        snapshot = repo / "snapshots" / revision
        ref = repo / "refs" / "main"
        if ref.is_file() and ref.read_text().strip() == revision and (snapshot / "config.json").exists():
            return snapshot
        snapshot.mkdir(parents=True, exist_ok=True)
        for file in source.iterdir():
            if file.is_file() and not (snapshot / file.name).exists():
                (snapshot / file.name).symlink_to(file)
        ref.parent.mkdir(parents=True, exist_ok=True)
        temporary = ref.with_suffix(".tmp")
        temporary.write_text(revision)
        os.replace(temporary, ref)
        return snapshot
    except OSError as error:  # a read-only home: the short name still works where mf2 resolves it itself
        logger.debug("Could not register %s in the Hugging Face cache: %s", DEFAULT_MODEL_NAME, error)
        return None


__all__ = [
    "DEFAULT_MODEL_NAME",
    "DefaultModelMissingError",
    "check_default_model",
    "default_model_path",
    "load_pipeline",
    "model_identity",
    "register_in_hub_cache",
    "resolve_model",
    "silence_loading_bars",
]
