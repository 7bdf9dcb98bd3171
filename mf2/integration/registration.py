"""What MF² registers with transformers, and when.

After `import mf2`:

- `AutoConfig` knows `model_type="mf2"`;
- `AutoModel`, `AutoModelForPreTraining` and `AutoModelForImageClassification` load MF² checkpoints without
  `trust_remote_code`;
- `AutoImageProcessor` and `AutoProcessor` load MF²'s processors;
- `pipeline("facial-state")` exists, its default model the shipped `mf2-base`;
- saved checkpoints carry their code (`register_for_auto_class`), so they load remotely where mf2 is not installed;
- the short names `mf2-base` and `mf2` load the shipped model through `pipeline`, these Auto classes and the MF²
  classes, with no Hub call (`mf2.integration.default_model.accept_short_names`: nothing is written to disk).

Each group runs when transformers' module that it extends is first imported (or the mf2 module defining the classes,
whichever comes first), through `mf2.integration.import_hooks.when_imported`, so `import mf2` itself imports neither
torch nor transformers. The classes are read through the package's lazy name map (`mf2.__init__`), the one place that
says which module defines which name.
"""

from __future__ import annotations

import importlib
from typing import Any

from .import_hooks import when_imported

PIPELINE_TASK = "facial-state"
_PACKAGE = __package__.rpartition(".")[0]  # mf2: this module is in its `integration` wing


def _public(name: str) -> Any:
    """Public name `name` of the mf2 package (imports its module)."""
    return getattr(importlib.import_module(_PACKAGE), name)


def _module_of(name: str) -> str:
    return importlib.import_module(_PACKAGE).module_of(name)


def register_config() -> None:
    """AutoConfig, the remote-code export of the config, and the short names for both."""
    from transformers import AutoConfig

    from .default_model import accept_short_names

    config_class = _public("MF2Config")
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    config_class.register_for_auto_class()
    for owner in (AutoConfig, config_class):
        accept_short_names(owner)


MODEL_AUTO_CLASSES = {
    "MF2Model": "AutoModel",
    "MF2ForPreTraining": "AutoModelForPreTraining",
    # The recogniser is an image classifier with a second (multi-label AU) head; this mapping lets pipelines load it.
    "MF2ForFacialStateRecognition": "AutoModelForImageClassification",
}


def register_models() -> None:
    """The Auto model classes, the models' remote-code export, and the short names for both."""
    import transformers

    from .default_model import accept_short_names

    config_class = _public("MF2Config")
    for name, auto_name in MODEL_AUTO_CLASSES.items():
        model_class, auto_class = _public(name), getattr(transformers, auto_name)
        auto_class.register(config_class, model_class, exist_ok=True)
        model_class.register_for_auto_class(auto_name)
        for owner in (auto_class, model_class):
            accept_short_names(owner)


def register_processors() -> None:
    """AutoImageProcessor (one class for both back-ends: it does its own PIL / numpy work), AutoProcessor, their
    remote-code export, and the short names for all four classes."""
    from transformers import AutoImageProcessor, AutoProcessor

    from .default_model import accept_short_names

    config_class, image_processor, processor = (
        _public(name) for name in ("MF2Config", "MF2ImageProcessor", "MF2Processor")
    )
    AutoImageProcessor.register(
        config_class, image_processor_classes={"pil": image_processor, "torchvision": image_processor}, exist_ok=True
    )
    AutoProcessor.register(config_class, processor, exist_ok=True)
    image_processor.register_for_auto_class("AutoImageProcessor")
    processor.register_for_auto_class()
    for owner in (AutoImageProcessor, AutoProcessor, image_processor, processor):
        accept_short_names(owner)


def register_pipeline() -> None:
    """The `facial-state` task, whose default model is the shipped `mf2-base`, and the short names in `pipeline`."""
    import transformers.pipelines
    from transformers import AutoModelForImageClassification
    from transformers.pipelines import PIPELINE_REGISTRY

    from .default_model import accept_short_names_in_pipelines, default_model_path

    PIPELINE_REGISTRY.register_pipeline(
        PIPELINE_TASK,
        pipeline_class=_public("FacialStatePipeline"),
        pt_model=AutoModelForImageClassification,
        type="image",
        default={"model": (str(default_model_path()), None)},
    )
    accept_short_names_in_pipelines(transformers.pipelines)


# (what, transformers modules that trigger it, mf2 public names whose modules trigger it, function)
REGISTRATIONS = (
    ("config registration", ("transformers.models.auto.configuration_auto",), ("MF2Config",), register_config),
    ("model registration", ("transformers.models.auto.modeling_auto",), tuple(MODEL_AUTO_CLASSES), register_models),
    (
        "processor registration",
        ("transformers.models.auto.processing_auto", "transformers.models.auto.image_processing_auto"),
        ("MF2ImageProcessor", "MF2Processor"),
        register_processors,
    ),
    ("pipeline registration", ("transformers.pipelines",), ("FacialStatePipeline",), register_pipeline),
)


def install() -> None:
    """Arrange every registration to run on first use (called once by `mf2.__init__`)."""
    for name, transformers_modules, public_names, function in REGISTRATIONS:
        triggers = dict.fromkeys([*transformers_modules, *(_module_of(public) for public in public_names)])
        when_imported(name, triggers, function)


__all__ = ["MODEL_AUTO_CLASSES", "PIPELINE_TASK", "REGISTRATIONS", "install"]
