"""LLMCaptioner against a real chat-completions server on loopback, with scripted faults."""

import hashlib

import pytest
from mfa_fixtures import png_bytes

from mf2.configuration_mf2 import AU_NAMES, EMOTION_LABELS
from mf2.data.captions.base import CaptionRequest
from mf2.data.captions.cache import CaptionCache
from mf2.data.captions.llm import LLMCaptioner
from mf2.data.captions.prompts import PROMPTS
from mf2.data.captions.template import au_sentence
from mf2.facs import find_au_codes, names_emotion


def labels(active: list[str]) -> tuple[int, ...]:
    return tuple(1 if code in active else 0 for code in AU_NAMES)


REQUESTS = [
    CaptionRequest(labels(["AU1", "AU2", "AU25", "AU26"]), 6),  # 0: HTTP 500 twice on the AU caption
    CaptionRequest(labels(["AU6", "AU12"]), 4),  # 1: the emotion reply is too slow (client timeout)
    CaptionRequest(labels(["AU4", "AU7"]), 1),  # 2: malformed JSON body for the key-AU caption
    CaptionRequest(labels(["AU1", "AU4", "AU15"]), 5),  # 3: AU reply misses an AU
    CaptionRequest(labels(["AU10"]), 2),  # 4: emotion reply names the wrong emotion
    CaptionRequest(labels(["AU1", "AU2", "AU4"]), 3),  # 5: key-AU reply names an inactive AU
    CaptionRequest(labels(["AU12", "AU25"]), 7),  # 6: the AU reply is always wrong → reported failure
    CaptionRequest(labels([]), 0),  # 7: no active AU: only the emotion caption is asked for
    CaptionRequest((-1,) * 6 + (1,) + (-1,) * 5, -1),  # 8: unknown emotion, one known AU
    CaptionRequest(labels(["AU23"]), 1),  # 9: HTTP 400 (not retried) → reported failure
]
FAULTS = {
    (0, "au"): ["500", "500"],
    (1, "emotion"): ["timeout"],
    (2, "key_au"): ["malformed"],
    (3, "au"): ["missing_au"],
    (4, "emotion"): ["wrong_emotion"],
    (5, "key_au"): ["extra_au"],
    (6, "au"): ["missing_au"] * 10,
    (9, "emotion"): ["400"],
}


def requests_with_images():
    return [CaptionRequest(r.au, r.emotion, png_bytes(i), id=f"row{i}") for i, r in enumerate(REQUESTS)]


def sha(index: int) -> str:
    return hashlib.sha256(png_bytes(index)).hexdigest()


def make_captioner(server, cache, **options):
    defaults = dict(cache=cache, workers=4, timeout=1.0, max_retries=3, backoff=0.01, show_progress=False)
    return LLMCaptioner(server.url, "test-model", "test-key", **{**defaults, **options})


def test_faults_retries_validation_and_cache(chat_server, tmp_path):
    for (index, caption_type), faults in FAULTS.items():
        chat_server.faults[(sha(index), caption_type)] = list(faults)
    cache_path = tmp_path / "cache.jsonl"
    captioner = make_captioner(chat_server, cache_path)
    results = captioner.caption_batch(requests_with_images())

    # Exactly one accepted answer per caption that was needed, however many faults came first.
    needed = {(i, t) for i, r in enumerate(REQUESTS) for t in LLMCaptioner._caption_types(r)}
    for index, caption_type in needed:
        outcomes = chat_server.outcomes(sha(index), caption_type)
        expected_ok = 0 if (index, caption_type) in {(6, "au"), (9, "emotion")} else 1
        assert outcomes.count("ok") == expected_ok, (index, caption_type, outcomes)
        assert outcomes[-1] != "ok" or outcomes.index("ok") == len(outcomes) - 1  # nothing asked after success
    assert chat_server.outcomes(sha(7), "au") == [] and chat_server.outcomes(sha(7), "key_au") == []
    assert chat_server.outcomes(sha(8)) == ["ok"]  # only the AU caption: the emotion is unknown
    for (index, caption_type), faults in FAULTS.items():
        if (index, caption_type) not in {(6, "au"), (9, "emotion")}:
            assert chat_server.outcomes(sha(index), caption_type) == [*faults, "ok"], (index, caption_type)
    assert captioner.stats["rejected"] >= 3 + 4 and captioner.stats["errors"] >= 4  # 500 x2, timeout, malformed
    assert chat_server.outcomes(sha(6), "au") == ["missing_au"] * 4  # first attempt + 3 retries
    assert chat_server.outcomes(sha(9), "emotion") == ["400"]  # a client error is not retried

    for index, (request, captions) in enumerate(zip(REQUESTS, results)):
        for code, label, caption in zip(AU_NAMES, request.au, captions.au_caption):
            if label == 1 and index != 6:
                assert caption.startswith(f"{code} (") and find_au_codes(caption) == [code]
            elif label != 1:
                assert caption == au_sentence(code, label)
        if request.emotion >= 0 and index != 9:
            assert names_emotion(captions.emotion_caption, request.emotion)
        active = {code for code, label in zip(AU_NAMES, request.au) if label == 1}
        assert set(find_au_codes(captions.key_au_caption)) <= active
    # Failures are reported and left empty, never kept.
    assert results[6].au_caption[6] == "" and results[6].au_caption[10] == ""
    assert results[9].emotion_caption == ""
    failures = {(f.image_sha256, f.caption_type): f for f in captioner.failures}
    assert set(failures) == {(sha(6), "au"), (sha(9), "emotion")}
    assert "rejected reply" in failures[(sha(6), "au")].reason and failures[(sha(6), "au")].attempts == 4
    assert failures[(sha(6), "au")].request_ids == ["row6"] and "HTTP 400" in failures[(sha(9), "emotion")].reason
    assert results[8].emotion_caption == "" and results[8].key_au_caption == ""
    assert results[7].key_au_caption and not find_au_codes(results[7].key_au_caption)

    # The request itself: three-part prompt, image as a data URL, model and key.
    payload, headers = chat_server.last_payload, chat_server.last_headers
    assert payload["model"] == "test-model" and headers["Authorization"] == "Bearer test-key"
    system, user = payload["messages"]
    prompt = next(p for p in PROMPTS.values() if p.role == system["content"])
    assert user["content"][0]["text"] == prompt.output_format
    assert user["content"][2]["image_url"]["url"].startswith("data:image/png;base64,")

    failures_file = tmp_path / "failures.jsonl"
    captioner.write_failures(failures_file)
    assert len(failures_file.read_text().splitlines()) == 2
    captioner.cache.close()

    # A second run with the same cache asks only for what failed.
    asked_before = len(chat_server.log)
    again = make_captioner(chat_server, cache_path)
    second = again.caption_batch(requests_with_images())
    new = chat_server.log[asked_before:]
    assert {(entry["sha"], entry["type"]) for entry in new} == {(sha(6), "au"), (sha(9), "emotion")}
    assert [c for i, c in enumerate(second) if i not in (6, 9)] == [c for i, c in enumerate(results) if i not in (6, 9)]
    assert second[9].emotion_caption and again.stats["cache_hits"] == len(needed) - 2
    again.cache.close()


def test_a_run_with_another_model_does_not_take_the_cached_captions_of_the_first(chat_server, tmp_path):
    """A trial with a cheap model, then the real run with another `--model` into the same cache: asked again."""
    request = CaptionRequest(labels(["AU6", "AU12"]), 4, png_bytes(0))
    first = make_captioner(chat_server, tmp_path / "cache.jsonl")
    first.caption_batch([request])
    first.cache.close()
    asked = len(chat_server.log)
    other = LLMCaptioner(
        chat_server.url, "other-model", "test-key", cache=tmp_path / "cache.jsonl", show_progress=False
    )
    other.caption_batch([request])
    assert len(chat_server.log) == 2 * asked and other.stats["cache_hits"] == 0
    other.cache.close()
    same = make_captioner(chat_server, tmp_path / "cache.jsonl")
    same.caption_batch([request])  # the first model again: the later entries, the other model's, are not its own
    assert same.stats["cache_hits"] == 0
    same.cache.close()


def test_duplicate_images_are_asked_once(chat_server):
    request = CaptionRequest(labels(["AU6", "AU12"]), 4, png_bytes(0))
    captioner = make_captioner(chat_server, None)
    first, second = captioner.caption_batch([request, request])
    assert first == second and len(chat_server.log) == 3


def test_settings_come_from_the_environment(monkeypatch):
    for name in ("MF2_LLM_BASE_URL", "MF2_LLM_MODEL", "MF2_LLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://example.invalid/v1/")
    monkeypatch.setenv("OPENAI_MODEL", "fallback-model")
    captioner = LLMCaptioner(show_progress=False)
    assert captioner.endpoint == "http://example.invalid/v1/chat/completions" and captioner.model == "fallback-model"
    monkeypatch.setenv("MF2_LLM_BASE_URL", "http://127.0.0.1:9/v1/chat/completions")
    monkeypatch.setenv("MF2_LLM_MODEL", "mf2-model")
    captioner = LLMCaptioner(show_progress=False)
    assert captioner.endpoint == "http://127.0.0.1:9/v1/chat/completions" and captioner.model == "mf2-model"
    assert LLMCaptioner("http://h/v1", "m", show_progress=False).model == "m"


def test_cache_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "cache.jsonl"
    with CaptionCache(path) as cache:
        cache.put("a", {"reply": "x"})
    with open(path, "a") as handle:
        handle.write('{"key": "b", "reply": "cut sho')  # a write interrupted by a kill
    with CaptionCache(path) as cache:
        assert cache.keys() == ["a"] and cache.skipped_lines == 1
        cache.put("c", {"reply": "y"})
        with open(path, "a") as other:  # another process sharing the file appends after it was read: kept
            other.write('{"key": "d", "reply": "z"}\n')
    with CaptionCache(path) as cache:  # the torn line is a line of its own, skipped; nothing was cut
        assert sorted(cache.keys()) == ["a", "c", "d"] and cache.skipped_lines == 1


def test_a_caption_holding_a_unicode_line_separator_is_kept(tmp_path):
    """JSON writes U+2028 and U+0085 raw: the cache reads its entries at "\\n" alone, so a reply holding one is not
    dropped as two damaged halves (and paid for again)."""
    path = tmp_path / "cache.jsonl"
    reply = "brows raised\u2028mouth open\u0085lips parted"
    with CaptionCache(path) as cache:
        cache.put("a", {"reply": reply})
        cache.put("b", {"reply": "x"})
    with CaptionCache(path) as cache:
        assert cache.keys() == ["a", "b"] and cache.get("a")["reply"] == reply and cache.skipped_lines == 0


def test_other_emotion_prompt_asks_for_the_label_word(chat_server):
    request = CaptionRequest(labels(["AU12"]), EMOTION_LABELS.index("other"), png_bytes(3))
    make_captioner(chat_server, None).caption_batch([request])
    payload = chat_server.last_payloads["emotion"]  # not the last request: the AU one may come after it
    text = "\n".join(p["text"] for p in payload["messages"][1]["content"] if p["type"] == "text")
    assert "Emotion: other" in text and "'other' category" in text


@pytest.mark.parametrize("reply", ["AU6 (cheek raiser): cheeks up.", "AU6: a\nAU12: b\nAU25: c"])
def test_au_validation_rejects_wrong_sets(reply):
    from mf2.data.captions.validate import validate_au_reply

    assert not validate_au_reply(reply, labels(["AU6", "AU12"])).ok
    assert validate_au_reply("1. **AU6 (Cheek Raiser)**: up\n- AU12 - pulled", labels(["AU6", "AU12"])).ok


@pytest.mark.parametrize(
    "reply, emotion, ok",
    [
        ("The person appears angry: the brows are drawn together, one lower than the other.", "anger", True),
        ("The person appears angry: the brows are drawn together, one lower than the other.", "other", False),
        ("The face falls into the 'other' category. The brows are raised.", "other", True),
        ("The person is clearly not happy; this is a face of sadness.", "happiness", False),
        ("The person shows happiness. Compared with a neutral face, the cheeks are raised.", "happiness", True),
    ],
)
def test_emotion_validation_rejects_a_reply_that_names_another_emotion(reply, emotion, ok):
    from mf2.data.captions.validate import validate_emotion_reply, validate_key_au_reply

    index = EMOTION_LABELS.index(emotion)
    assert validate_emotion_reply(reply, index).ok is ok
    assert validate_key_au_reply(reply, labels([]), index).ok is ok
