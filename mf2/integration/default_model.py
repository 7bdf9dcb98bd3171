"""The trained MF² that ships inside the package (`mf2-base`), and how names resolve to it.

`pipeline("facial-state")` without a model, `mf2 analyze` without `--model`, and the training scripts'
`--model_name_or_path mf2-base` all load the folder `mf2/models/mf2-base` (safetensors, float16 weights, its
processor and model card).

The short names `SHORT_NAMES` (`mf2-base`, and `mf2`, the design card's name for the same model) mean that folder
wherever a model name is accepted, without any call to the Hub, online or offline: `resolve_model` (the CLI commands),
and, after `import mf2`, `pipeline("facial-state", model="mf2")`, the Auto classes MF² registers with and the MF²
classes' `from_pretrained` (`accept_short_names`, installed by `mf2.integration.registration`: the name is swapped for
the folder before transformers sees it, so nothing is written to disk). Only the bare name does this: a folder of that
name in the working directory is used when given as a path (`./mf2-base`, an absolute path); Hub ids (`org/name`) are
untouched and load the normal way.

Whether a checkpoint is trained, its name and version travel in its config (`MF2Config.trained`, `model_name`,
`model_version`); `model_identity` turns them into the fields every result record carries.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_MODEL_NAME = "mf2-base"
"""The short name of the shipped model (also its `config.model_name`)."""

SHORT_NAMES = (DEFAULT_MODEL_NAME, "mf2")
"""Bare names that mean the shipped model (`mf2` is an alias of the shipped default)."""

MODEL_FILES = (
    "config.json",
    "model.safetensors",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "README.md",
)
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
    return Path(__file__).resolve().parents[1] / "models" / DEFAULT_MODEL_NAME  # mf2/models, beside the wings


def check_default_model() -> Path:
    """The shipped model's folder; raises `DefaultModelMissingError` when it is incomplete."""
    path = default_model_path()
    missing = [name for name in MODEL_FILES if not (path / name).is_file()]
    if missing:
        raise DefaultModelMissingError(path, missing)
    return path


def shipped_or_given(name_or_path: Any) -> Any:
    """The shipped folder (as a string) for a bare short name, a `str` equal to one of `SHORT_NAMES`; anything else
    unchanged, except a path object spelling a short name (`Path("mf2-base")`), which becomes the explicit relative
    path `./mf2-base` so that no later step reads it as the short name."""
    if isinstance(name_or_path, str):
        return str(check_default_model()) if name_or_path in SHORT_NAMES else name_or_path
    if isinstance(name_or_path, os.PathLike) and os.fspath(name_or_path) in SHORT_NAMES:
        return os.path.join(os.curdir, os.fspath(name_or_path))
    return name_or_path


def resolve_model(name_or_path: str | os.PathLike | None) -> str:
    """A model argument as a loadable location: None or a short name (`SHORT_NAMES`) → the shipped folder, even when
    the working directory holds a folder of that name (give that one as `./mf2-base`); anything else as given."""
    if name_or_path is None:
        return str(check_default_model())
    return os.fspath(shipped_or_given(name_or_path))


def model_identity(config: Any, name_or_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """`{"model", "model_version", "model_trained"}` of a loaded model, from its config (see module docstring)."""
    return {
        "model": getattr(config, "model_name", None) or (str(name_or_path) if name_or_path is not None else None),
        "model_version": getattr(config, "model_version", None),
        "model_trained": bool(getattr(config, "trained", False)),
    }


def load_pipeline(
    model: str | os.PathLike,
    device: str | None = None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    **options,
):
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


_MARK = "_mf2_short_names"  # set on the wrappers below: wrapping twice is a no-op


def _marked(function: Callable) -> Callable:
    setattr(function, _MARK, True)
    return function


def accept_short_names(owner: type, method: str = "from_pretrained") -> None:
    """Make the classmethod `owner.<method>` (an Auto class's or an MF² class's `from_pretrained`) take the short
    names: its first argument (`pretrained_model_name_or_path`) goes through `shipped_or_given` before the original
    runs, so transformers only ever sees the local folder and makes no Hub call. Idempotent; subclasses inherit it."""
    function = getattr(owner, method).__func__
    if getattr(function, _MARK, False):
        return

    @functools.wraps(function)
    def wrapper(cls, *args, **kwargs):
        if args:
            args = (shipped_or_given(args[0]), *args[1:])
        elif "pretrained_model_name_or_path" in kwargs:
            kwargs["pretrained_model_name_or_path"] = shipped_or_given(kwargs["pretrained_model_name_or_path"])
        return function(cls, *args, **kwargs)

    setattr(owner, method, classmethod(_marked(wrapper)))


PIPELINE_NAME_ARGUMENTS = ("model", "config", "tokenizer", "feature_extractor", "image_processor", "processor")
"""The arguments of `transformers.pipeline` that may name a model folder or Hub id."""


def _wrap_pipeline(function: Callable) -> Callable:
    import inspect

    signature = inspect.signature(function)

    @functools.wraps(function)
    def pipeline(*args, **kwargs):
        try:
            bound = signature.bind_partial(*args, **kwargs)
        except TypeError:  # a wrong call: transformers' own error
            return function(*args, **kwargs)
        for name in PIPELINE_NAME_ARGUMENTS:
            if name in bound.arguments:
                bound.arguments[name] = shipped_or_given(bound.arguments[name])
        return function(*bound.args, **bound.kwargs)

    return _marked(pipeline)


def _wrap_first_argument(function: Callable) -> Callable:
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        if args:
            args = (shipped_or_given(args[0]), *args[1:])
        return function(*args, **kwargs)

    return _marked(wrapper)


def accept_short_names_in_pipelines(pipelines_module: Any) -> None:
    """The same for `transformers.pipeline`: `pipeline("facial-state", model="mf2")` gets the shipped folder. A
    `pipeline` bound before `import mf2` (`from transformers import pipeline` first) keeps the original function; for
    it, the two helpers it passes the bare name to before any Auto class (`resolve_revision`, which asks the Hub for
    the revision, and `find_adapter_config_file`) take the short names too. Idempotent."""
    import transformers

    if not getattr(pipelines_module.pipeline, _MARK, False):
        pipelines_module.pipeline = _wrap_pipeline(pipelines_module.pipeline)
    if "pipeline" in vars(transformers):  # already handed out by transformers' lazy module: swap its copy too
        transformers.pipeline = pipelines_module.pipeline
    for helper in ("resolve_revision", "find_adapter_config_file"):
        function = getattr(pipelines_module, helper, None)
        if function is not None and not getattr(function, _MARK, False):
            setattr(pipelines_module, helper, _wrap_first_argument(function))


__all__ = [
    "DEFAULT_MODEL_NAME",
    "PIPELINE_NAME_ARGUMENTS",
    "SHORT_NAMES",
    "DefaultModelMissingError",
    "accept_short_names",
    "accept_short_names_in_pipelines",
    "check_default_model",
    "default_model_path",
    "load_pipeline",
    "model_identity",
    "resolve_model",
    "shipped_or_given",
    "silence_loading_bars",
]
