"""MF²: a Hugging Face-native multimodal foundation model for facial Action Units and emotions.

Importing `mf2` registers the MF² classes with transformers' Auto* factories, so `AutoConfig`, `AutoModel`,
`AutoModelForPreTraining` and `AutoModelForImageClassification` load MF² checkpoints without `trust_remote_code`.
Saved checkpoints also carry the modeling code (`auto_map`), so they load with `trust_remote_code=True` where this
package is not installed. It also registers the `facial-state` pipeline, whose default model is the trained `mf2-base`
shipped inside the package (`mf2.default_model`), and makes the short name `mf2-base` loadable offline.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
    AutoProcessor,
)
from transformers.pipelines import PIPELINE_REGISTRY

from .au_regions import au_boxes_from_landmarks, canonical_landmarks, default_au_boxes
from .configuration_mf2 import AU_NAMES, EMOTION_LABELS, LOSS_NAMES, MF2Config
from .default_model import DEFAULT_MODEL_NAME, default_model_path, register_in_hub_cache
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
from .processing_mf2 import MF2ImageProcessor, MF2Processor, visualize

__version__ = "0.1.0"

AutoConfig.register(MF2Config.model_type, MF2Config, exist_ok=True)
AutoModel.register(MF2Config, MF2Model, exist_ok=True)
AutoModelForPreTraining.register(MF2Config, MF2ForPreTraining, exist_ok=True)
# The recogniser is an image classifier with a second (multi-label AU) head; this mapping lets pipelines load it.
AutoModelForImageClassification.register(MF2Config, MF2ForFacialStateRecognition, exist_ok=True)

# One class for both backends: the processor does its own PIL/numpy work, torchvision or not.
AutoImageProcessor.register(
    MF2Config, image_processor_classes={"pil": MF2ImageProcessor, "torchvision": MF2ImageProcessor}, exist_ok=True
)
AutoProcessor.register(MF2Config, MF2Processor, exist_ok=True)

PIPELINE_REGISTRY.register_pipeline(
    "facial-state", pipeline_class=FacialStatePipeline, pt_model=AutoModelForImageClassification, type="image",
    default={"model": (str(default_model_path()), None)},
)  # fmt: skip
register_in_hub_cache()

MF2Config.register_for_auto_class()
MF2Model.register_for_auto_class("AutoModel")
MF2ForPreTraining.register_for_auto_class("AutoModelForPreTraining")
MF2ForFacialStateRecognition.register_for_auto_class("AutoModelForImageClassification")
MF2ImageProcessor.register_for_auto_class("AutoImageProcessor")
MF2Processor.register_for_auto_class()

__all__ = [
    "DEFAULT_MODEL_NAME",
    "FacialStatePipeline",
    "AU_NAMES",
    "EMOTION_LABELS",
    "LOSS_NAMES",
    "MF2Config",
    "MF2ForFacialStateRecognition",
    "MF2ForPreTraining",
    "MF2ImageProcessor",
    "MF2Processor",
    "MF2Model",
    "MF2ModelOutput",
    "MF2PreTrainedModel",
    "MF2PreTrainingOutput",
    "MF2RecognitionOutput",
    "au_boxes_from_landmarks",
    "canonical_landmarks",
    "default_au_boxes",
    "default_model_path",
    "visualize",
]
