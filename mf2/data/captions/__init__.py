"""The three MFA caption types (per-AU, emotion, key-AU) and the captioners that write them."""

from ...facs import (
    ACTION_UNITS,
    EMOTION_PROTOTYPES,
    ActionUnit,
    explain,
    find_au_codes,
    key_aus,
    names_emotion,
)
from .base import CAPTION_TYPES, Captioner, CaptionRequest, Captions
from .cache import CaptionCache, cache_key
from .llm import CaptionFailure, LLMCaptioner, endpoint_configured
from .prompts import PROMPT_VERSION, PROMPTS, Prompt, build_messages
from .template import TemplateCaptioner, au_captions, au_sentence, emotion_sentence
from .validate import Verdict, validate_reply

__all__ = [
    "ACTION_UNITS",
    "CAPTION_TYPES",
    "EMOTION_PROTOTYPES",
    "PROMPTS",
    "PROMPT_VERSION",
    "ActionUnit",
    "CaptionCache",
    "CaptionFailure",
    "CaptionRequest",
    "Captioner",
    "Captions",
    "LLMCaptioner",
    "Prompt",
    "TemplateCaptioner",
    "Verdict",
    "au_captions",
    "au_sentence",
    "build_messages",
    "cache_key",
    "emotion_sentence",
    "endpoint_configured",
    "explain",
    "find_au_codes",
    "key_aus",
    "names_emotion",
    "validate_reply",
]
