"""The three-part prompts (role setup, output format with an example, output signal) of the MFA captions.

Following the MF² paper (appendix A-B), each caption type has its own prompt in three parts: the role the model
takes on, the output format illustrated by an example, and the signal that hands over this image's ground-truth
labels and asks for the answer. The prompts are sent with the image as an OpenAI-style vision message.

`PROMPT_VERSION` is part of every cache key: change it whenever a prompt text changes, so cached captions written
with the old prompts are not reused.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass

from ...configuration_mf2 import AU_NAMES
from ...facs import ACTION_UNITS, emotion_name
from ..schema import UNKNOWN

PROMPT_VERSION = "mfa-v1"


@dataclass(frozen=True)
class Prompt:
    """One caption type's prompt: `role` (system message), `output_format` (with an example) and `signal`."""

    role: str
    output_format: str
    signal: str


PROMPTS: dict[str, Prompt] = {
    "au": Prompt(
        role=(
            "You are an action unit description expert, trained in the Facial Action Coding System (FACS). You are "
            "shown a face image together with its ground-truth action unit (AU) labels, coded by certified FACS "
            "annotators; treat them as correct even when a movement is subtle. Your task is to describe, for each "
            "active AU, how that muscle movement shows on this particular face."
        ),
        output_format=(
            "Output format: write exactly one line per active AU and nothing else: no introduction, no summary, no "
            "blank lines. Each line has the form\n"
            "AU<number> (<FACS name>): <one or two sentences on how the movement appears on this face and what it "
            "adds to the expression>\n"
            "A line mentions only its own AU, and no line may mention an AU outside the active list.\n"
            "Example for the active AUs AU6 and AU12:\n"
            "AU6 (cheek raiser): The cheeks are lifted and the skin under the eyes bunches up, narrowing the eyes "
            "and creasing their outer corners.\n"
            "AU12 (lip corner puller): The corners of the mouth are drawn up and outwards, giving the face a clear "
            "smile."
        ),
        signal="{ground_truth}\nNow write the {count} line(s), one for each active AU, in the order listed.",
    ),
    "emotion": Prompt(
        role=(
            "You are an emotion description expert. You look at a face image and explain in fluent natural language "
            "which emotion it expresses and which visible facial cues (brows, eyes, cheeks, nose, mouth, jaw) "
            "support that reading. You are given the ground-truth emotion label; it is correct, and your "
            "description must agree with it."
        ),
        output_format=(
            "Output format: one paragraph of two to four sentences in the third person. The first sentence names "
            "the emotion with the ground-truth label word. The following sentences point to the facial cues "
            "visible in this image. Do not use AU codes, lists or headings.\n"
            "Example for the label surprise:\n"
            "The person appears to be in a state of surprise. The eyebrows are raised high and the eyes are wide "
            "open, while the lips are parted and the jaw has dropped a little, as if reacting to something "
            "unexpected."
        ),
        signal="{ground_truth}\n{note}Now write the paragraph for this image.",
    ),
    "key_au": Prompt(
        role=(
            "You are an expert in facial expression analysis who links facial action units (AUs) to emotions. Given "
            "a face image, its ground-truth emotion and its ground-truth active AUs, you decide which of the active "
            "AUs play the decisive role in conveying that emotion, and explain why. Both labels are correct."
        ),
        output_format=(
            "Output format: one paragraph of two to four sentences. First state the emotion with the ground-truth "
            "label word. Then name the active AUs that decide this emotion, each written as AU<number> (<FACS "
            "name>), and explain how together they convey it. Name only AUs from the active list, and leave out "
            "active AUs that do not help convey the emotion. If none of the active AUs is characteristic of the "
            "emotion, say so without naming any AU.\n"
            "Example for happiness with the active AUs AU6, AU7, AU12 and AU25:\n"
            "The person appears to be experiencing happiness. The AUs that decide this judgement are AU6 (cheek "
            "raiser) and AU12 (lip corner puller): the lifted cheeks and the upward-pulled lip corners form a "
            "genuine smile, the clearest sign of happiness."
        ),
        signal="{ground_truth}\n{note}Now write the paragraph for this image.",
    ),
}
"""Prompt of each caption type (`"au"`, `"emotion"`, `"key_au"`)."""

_OTHER_NOTE = (
    "The label 'other' means the expression is none of neutral, anger, disgust, fear, happiness, sadness or surprise; "
    "say that it falls into the 'other' category.\n"
)


def ground_truth_block(au: Sequence[int], emotion: int) -> str:
    """The labels as the signal part states them, one `Name: value` line each."""

    def listing(value: int) -> str:
        codes = [ACTION_UNITS[code].label for code, label in zip(AU_NAMES, au) if label == value]
        return ", ".join(codes) if codes else "none"

    lines = ["Ground truth for the attached face image:"]
    lines.append(f"Emotion: {emotion_name(emotion) if emotion != UNKNOWN else 'not labelled'}")
    lines.append(f"Active AUs: {listing(1)}")
    lines.append(f"Inactive AUs: {listing(0)}")
    if any(label == UNKNOWN for label in au):
        lines.append(f"Unlabelled AUs: {listing(UNKNOWN)}")
    return "\n".join(lines)


def image_data_url(image: bytes) -> str:
    """`data:` URL of an encoded image; formats other than PNG/JPEG/GIF/WebP are re-encoded as PNG."""
    if image.startswith(b"\x89PNG\r\n\x1a\n"):
        mime = "image/png"
    elif image.startswith(b"\xff\xd8"):
        mime = "image/jpeg"
    elif image.startswith(b"GIF8"):
        mime = "image/gif"
    elif image[:4] == b"RIFF" and image[8:12] == b"WEBP":
        mime = "image/webp"
    else:
        from PIL import Image

        buffer = io.BytesIO()
        Image.open(io.BytesIO(image)).save(buffer, format="PNG")
        image, mime = buffer.getvalue(), "image/png"
    return f"data:{mime};base64,{base64.b64encode(image).decode('ascii')}"


def build_messages(
    caption_type: str, au: Sequence[int], emotion: int, image: bytes, detail: str | None = None
) -> list[dict]:
    """Chat-completions `messages` for one caption: the role as system message, then the output format, the
    signal and the image in one user message."""
    prompt = PROMPTS[caption_type]
    note = _OTHER_NOTE if emotion != UNKNOWN and emotion_name(emotion) == "other" else ""
    signal = prompt.signal.format(
        ground_truth=ground_truth_block(au, emotion), count=sum(1 for label in au if label == 1), note=note
    )
    image_url: dict[str, str] = {"url": image_data_url(image)}
    if detail:
        image_url["detail"] = detail
    return [
        {"role": "system", "content": prompt.role},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": prompt.output_format},
                {"type": "text", "text": signal},
                {"type": "image_url", "image_url": image_url},
            ],
        },
    ]


__all__ = ["PROMPTS", "PROMPT_VERSION", "Prompt", "build_messages", "ground_truth_block", "image_data_url"]
