"""MF²: a Hugging Face-native multimodal foundation model for facial Action Units and emotions.

Importing `mf2` registers the MF² classes with transformers' Auto* factories, so `AutoConfig`, `AutoModel`,
`AutoModelForPreTraining` and `AutoModelForImageClassification` load MF² checkpoints without `trust_remote_code`.
Saved checkpoints also carry the modeling code (`auto_map`), so they load with `trust_remote_code=True` where this
package is not installed. It also registers the `facial-state` pipeline, whose default model is the trained `mf2-base`
shipped inside the package (`mf2.integration.default_model`), and makes the short names `mf2-base` and `mf2` load that
model with no Hub call (nothing is written to disk).

The package is lazy (`mf2.integration.lazy_module`): a public name imports its module when first used, and each
registration runs when transformers' module it extends is imported (`mf2.integration.registration`), so `import mf2` and
`mf2 --help` import neither torch nor transformers.
"""

import sys
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# The one map of public names to the modules that define them (submodules relative to this package). A name added
# here is importable as `from mf2 import NAME` and listed in `mf2.__all__`; `mf2.integration.registration` finds classes
# here.
_import_structure: dict[str, list[str]] = {
    "integration.default_model": ["DEFAULT_MODEL_NAME", "default_model_path"],
    "pipeline_mf2": ["FacialStatePipeline"],
    "configuration_mf2": ["AU_NAMES", "EMOTION_LABELS", "LOSS_NAMES", "MF2Config"],
    "modeling_mf2": [
        "MF2ForFacialStateRecognition",
        "MF2ForPreTraining",
        "MF2Model",
        "MF2ModelOutput",
        "MF2PreTrainedModel",
        "MF2PreTrainingOutput",
        "MF2RecognitionOutput",
    ],
    "image_processing_mf2": ["MF2ImageProcessor"],
    "processing_mf2": ["MF2Processor"],
    "visualization": ["visualize"],
    "au_regions": ["au_boxes_from_landmarks", "canonical_landmarks", "default_au_boxes"],
}

if TYPE_CHECKING:  # what static tools see: the same names, imported eagerly
    # ruff: noqa: F401
    from .au_regions import au_boxes_from_landmarks, canonical_landmarks, default_au_boxes
    from .configuration_mf2 import AU_NAMES, EMOTION_LABELS, LOSS_NAMES, MF2Config
    from .image_processing_mf2 import MF2ImageProcessor
    from .integration.default_model import DEFAULT_MODEL_NAME, default_model_path
    from .modeling_mf2 import (
        MF2ForFacialStateRecognition,
        MF2ForPreTraining,
        MF2Model,
        MF2ModelOutput,
        MF2PreTrainedModel,
        MF2PreTrainingOutput,
        MF2RecognitionOutput,
    )
    from .pipeline_mf2 import FacialStatePipeline
    from .processing_mf2 import MF2Processor
    from .visualization import visualize
else:
    from .integration.lazy_module import LazyModule

    sys.modules[__name__] = LazyModule(
        __name__, __file__, _import_structure, module_spec=__spec__, extra_objects={"__version__": __version__}
    )
    from .integration import registration

    # Registering at once would import transformers (seconds), so `registration.install()` puts a finder on
    # `sys.meta_path` (`mf2.integration.import_hooks`) that runs each registration when transformers' module it extends
    # is imported, then removes itself. It only wraps loaders in memory and writes nothing to disk; the short names
    # resolve to the shipped folder at their first use, in memory too (`mf2.integration.default_model`), so `import mf2`
    # creates no file (tests/test_package_imports.py checks the Hugging Face caches and `MF2_HOME`).
    registration.install()
