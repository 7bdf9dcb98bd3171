"""MFA-style datasets for MF²: one schema, builders for Aff-Wild2 / FER+ / CK+ / image folders, and captioning.

The captioning command lives in `mf2.data.caption_dataset` (`from mf2.data.caption_dataset import caption_dataset`);
it is not imported here, so `python -m mf2.data.caption_dataset` runs that module only once.
"""

from .affwild2 import build_affwild2_mfa, iter_affwild2_frames
from .balance import balance_classes
from .captions import LLMCaptioner, TemplateCaptioner, explain, key_aus
from .folder import LABELS_FILE, find_labels_file, load_image_folder
from .group_split import split_by_group
from .schema import DEFAULT_EMOTION_MAP, MFA_FEATURES, DataError, MissingDataError, active_aus, au_vector, map_emotion
from .sources import load_ckplus, load_ferplus

__all__ = [
    "DEFAULT_EMOTION_MAP",
    "LABELS_FILE",
    "MFA_FEATURES",
    "DataError",
    "LLMCaptioner",
    "MissingDataError",
    "TemplateCaptioner",
    "active_aus",
    "au_vector",
    "balance_classes",
    "build_affwild2_mfa",
    "explain",
    "find_labels_file",
    "iter_affwild2_frames",
    "key_aus",
    "load_ckplus",
    "load_ferplus",
    "load_image_folder",
    "map_emotion",
    "split_by_group",
]
