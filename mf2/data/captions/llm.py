"""Captions from any OpenAI-compatible chat-completions endpoint (GPT-4o in the MF² paper).

Each labelled image needs up to three requests (AU, emotion, key-AU caption), sent concurrently. Every reply is
validated against the ground truth (`validate.py`); accepted replies go to an on-disk cache keyed by image hash,
caption type, prompt version and labels, so an interrupted run resumes without asking again. Failed or rejected
requests are retried with exponential back-off, then reported in `LLMCaptioner.failures`, never kept as captions.

Which requests are sent:

- AU caption: only when at least one AU is active. The LLM writes one line per active AU; inactive AUs get the
  template's "absent" sentence and unknown AUs `""`, so the 12 slots always follow the labels.
- Emotion caption: only when the emotion is known.
- Key-AU caption: only when the emotion is known and at least one AU is active; with no active AU there is nothing
  to decide, and the template explanation (`facs.explain`) is used instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from http.client import HTTPException
from pathlib import Path

from ...configuration_mf2 import AU_NAMES
from ...facs import explain
from ..schema import UNKNOWN, map_emotion
from .base import CaptionRequest, Captions
from .cache import CaptionCache, cache_key
from .prompts import PROMPT_VERSION, build_messages
from .template import au_captions
from .validate import Verdict, validate_reply

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o"
BASE_URL_VARIABLES = ("MF2_LLM_BASE_URL", "OPENAI_BASE_URL")
MODEL_VARIABLES = ("MF2_LLM_MODEL", "OPENAI_MODEL")
API_KEY_VARIABLES = ("MF2_LLM_API_KEY", "OPENAI_API_KEY")
_RETRIABLE_STATUS = {408, 409, 425, 429}
_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}


def _from_env(names: Sequence[str]) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def endpoint_configured() -> bool:
    """Whether an LLM endpoint is set in the environment (`MF2_LLM_BASE_URL` or `OPENAI_BASE_URL`)."""
    return _from_env(BASE_URL_VARIABLES) is not None


@dataclass
class CaptionFailure:
    """A caption that could not be obtained: which image and type, why, after how many attempts, and the last
    rejected reply (truncated) if there was one."""

    caption_type: str
    image_sha256: str
    reason: str
    attempts: int
    request_ids: list[str]
    reply: str = ""


class _Transient(Exception):
    """Worth retrying: server errors, timeouts, dropped connections, malformed bodies."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class _Permanent(Exception):
    """Not worth retrying: the server refused the request itself (bad key, bad model, bad request)."""


@dataclass
class _Task:
    key: str
    caption_type: str
    image_sha256: str
    request: CaptionRequest
    indices: list[int]
    ids: list[str]


class LLMCaptioner:
    """Captioner that asks an OpenAI-compatible chat-completions endpoint, with the paper's three-part prompts.

    Args:
        base_url: API root such as `"https://api.openai.com/v1"` (`/chat/completions` is appended), or the full
            endpoint URL. Defaults to `$MF2_LLM_BASE_URL`, then `$OPENAI_BASE_URL`, then OpenAI's API.
        model: Model name; defaults to `$MF2_LLM_MODEL`, then `$OPENAI_MODEL`, then `"gpt-4o"`.
        api_key: Bearer token; defaults to `$MF2_LLM_API_KEY`, then `$OPENAI_API_KEY` (none is sent if unset).
        cache: A `CaptionCache`, a path for one, or `None` for an in-memory cache (nothing survives the process).
        workers: Concurrent requests.
        timeout: Seconds before a request is abandoned (and retried).
        max_retries: Retries after the first attempt, for transport errors and rejected replies alike.
        backoff: First retry delay in seconds; doubles each retry (with jitter), capped by `max_backoff`.
        temperature, max_tokens: Sampling settings sent with every request.
        image_detail: Optional `detail` of the image part (`"low"`, `"high"`, `"auto"`).
        prompt_version: Part of the cache key; bump it when the prompts change.
        show_progress: Show a tqdm bar when `caption_batch` is not given one.

    Example:

    ```python
    >>> captioner = LLMCaptioner(base_url="http://localhost:8000/v1", model="my-vlm", cache="captions.jsonl")
    >>> captions = captioner.caption(open("face.png", "rb").read(), au=[1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1],
    ...                              emotion="surprise")
    ```
    """

    needs_images = True

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        *,
        cache: CaptionCache | str | os.PathLike | None = None,
        workers: int = 8,
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        temperature: float = 0.2,
        max_tokens: int = 512,
        image_detail: str | None = None,
        prompt_version: str = PROMPT_VERSION,
        show_progress: bool = True,
    ):
        self.base_url = base_url or _from_env(BASE_URL_VARIABLES) or DEFAULT_BASE_URL
        self.model = model or _from_env(MODEL_VARIABLES) or DEFAULT_MODEL
        self._api_key = api_key or _from_env(API_KEY_VARIABLES)
        self.cache = cache if isinstance(cache, CaptionCache) else CaptionCache(cache)
        self.workers = max(1, int(workers))
        self.timeout = float(timeout)
        self.max_retries = max(0, int(max_retries))
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.image_detail = image_detail
        self.prompt_version = prompt_version
        self.show_progress = show_progress
        self.failures: list[CaptionFailure] = []
        self.stats = {"requests": 0, "accepted": 0, "rejected": 0, "errors": 0, "cache_hits": 0}
        self._stats_lock = threading.Lock()
        self._opener = self._make_opener()

    @property
    def endpoint(self) -> str:
        """Full chat-completions URL."""
        base = self.base_url.rstrip("/")
        return base if base.endswith("/chat/completions") else f"{base}/chat/completions"

    def _make_opener(self) -> urllib.request.OpenerDirector:
        host = urllib.parse.urlsplit(self.endpoint).hostname or ""
        # Loopback servers must never be reached through an HTTP proxy from the environment.
        if host in _LOOPBACK_HOSTS:
            return urllib.request.build_opener(urllib.request.ProxyHandler({}))
        return urllib.request.build_opener()

    def _count(self, name: str) -> None:
        with self._stats_lock:
            self.stats[name] += 1

    # ---- public API -------------------------------------------------------------------------------------------

    def caption(self, image: bytes, au: Sequence[int], emotion: int | str | None) -> Captions:
        """Captions of one encoded image with its 12 AU labels and emotion (index, name, or `None`)."""
        request = CaptionRequest(au=tuple(au), emotion=map_emotion(emotion), image=image)
        return self.caption_batch([request])[0]

    def caption_batch(self, requests: Sequence[CaptionRequest], *, progress=None) -> list[Captions]:
        """Captions of many images, in order. Requests that fail are reported in `self.failures` and their
        caption fields are left `""` (a later run with the same cache asks only for those)."""
        tasks, per_request = self._plan(requests)
        results: dict[str, Verdict] = {}
        pending: list[_Task] = []
        for key, task in tasks.items():
            verdict = self._cached(task)
            if verdict is not None:
                results[key] = verdict
                self._count("cache_hits")
            else:
                pending.append(task)

        own_bar = None
        if progress is None and self.show_progress:
            from tqdm.auto import tqdm

            own_bar = progress = tqdm(total=len(requests), desc="LLM captions", unit="image")
        remaining = [len(keys) for keys in per_request]

        def advance(indices: list[int]) -> None:
            # An image counts as done once all of its caption requests are.
            for index in indices:
                remaining[index] -= 1
                if remaining[index] == 0 and progress is not None:
                    progress.update(1)

        try:
            if progress is not None:
                progress.update(sum(1 for count in remaining if count == 0))
            for key in results:
                advance(tasks[key].indices)
            with ThreadPoolExecutor(max_workers=self.workers) as pool:
                futures = {pool.submit(self._run_task, task): task for task in pending}
                try:
                    for future in as_completed(futures):
                        task = futures[future]
                        verdict = future.result()
                        if verdict is not None:
                            results[task.key] = verdict
                        advance(task.indices)
                except BaseException:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
        finally:
            if own_bar is not None:
                own_bar.close()
        return [
            self._assemble(request, {kind: results.get(key) for kind, key in keys.items()})
            for request, keys in zip(requests, per_request)
        ]

    def write_failures(self, path: str | os.PathLike) -> None:
        """Write `self.failures` as JSON lines (the file is replaced; nothing is written when there are none)."""
        path = Path(path)
        if not self.failures:
            path.unlink(missing_ok=True)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            for failure in self.failures:
                handle.write(json.dumps(asdict(failure), ensure_ascii=False) + "\n")

    # ---- planning and assembly --------------------------------------------------------------------------------

    def _plan(self, requests: Sequence[CaptionRequest]) -> tuple[dict[str, _Task], list[dict[str, str]]]:
        """One task per distinct (image, caption type, labels), so duplicate images share a single request; also
        each request's caption type → task key."""
        tasks: dict[str, _Task] = {}
        per_request: list[dict[str, str]] = []
        for index, request in enumerate(requests):
            keys: dict[str, str] = {}
            per_request.append(keys)
            types = self._caption_types(request)
            if not types:
                continue
            if request.image is None:
                raise ValueError(f"LLMCaptioner needs the image bytes of request {request.id or index}.")
            digest = hashlib.sha256(request.image).hexdigest()
            labels = _label_signature(request)
            for caption_type in types:
                key = keys[caption_type] = cache_key(digest, caption_type, self.prompt_version, labels)
                if key in tasks:
                    tasks[key].indices.append(index)
                    tasks[key].ids.append(request.id or str(index))
                else:
                    tasks[key] = _Task(key, caption_type, digest, request, [index], [request.id or str(index)])
        return tasks, per_request

    @staticmethod
    def _caption_types(request: CaptionRequest) -> list[str]:
        any_active = any(label == 1 for label in request.au)
        types = ["au"] if any_active else []
        if request.emotion != UNKNOWN:
            types.append("emotion")
            if any_active:
                types.append("key_au")
        return types

    @staticmethod
    def _assemble(request: CaptionRequest, by_type: dict[str, Verdict | None]) -> Captions:
        au_caption = au_captions(request.au)
        au_verdict = by_type.get("au")
        for slot, code in enumerate(AU_NAMES):
            if request.au[slot] == 1:
                # A failed AU request leaves the active slots empty rather than filling in a template sentence.
                au_caption[slot] = au_verdict.au_texts[code] if au_verdict is not None else ""
        emotion_caption = by_type["emotion"].text if by_type.get("emotion") is not None else ""
        if "key_au" in by_type:
            key_au_caption = by_type["key_au"].text if by_type["key_au"] is not None else ""
        elif request.emotion != UNKNOWN and any(label != UNKNOWN for label in request.au):
            unknown = [code for code, label in zip(AU_NAMES, request.au) if label == UNKNOWN]
            key_au_caption = explain(request.emotion, [], unknown)
        else:
            key_au_caption = ""
        return Captions(au_caption=au_caption, emotion_caption=emotion_caption, key_au_caption=key_au_caption)

    def _cached(self, task: _Task) -> Verdict | None:
        record = self.cache.get(task.key)
        if record is None or record.get("model", self.model) != self.model:
            return None  # another model's caption is not this model's: a run with a new --model asks again
        # Re-check on reuse: a cache written by an older, laxer validator must not leak bad captions.
        verdict = validate_reply(task.caption_type, record.get("reply", ""), task.request.au, task.request.emotion)
        return verdict if verdict.ok else None

    # ---- requests ---------------------------------------------------------------------------------------------

    def _run_task(self, task: _Task) -> Verdict | None:
        """Ask until a reply is accepted or the retries run out; accepted replies are cached before returning."""
        messages = build_messages(
            task.caption_type, task.request.au, task.request.emotion, task.request.image, self.image_detail
        )
        payload = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        reason, reply, retry_after = "", "", None
        attempts = 0
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self._delay(attempt, retry_after))
            attempts += 1
            retry_after = None
            try:
                reply = self._post(payload)
            except _Permanent as error:
                reason = str(error)
                break
            except _Transient as error:
                reason, retry_after = str(error), error.retry_after
                self._count("errors")
                continue
            verdict = validate_reply(task.caption_type, reply, task.request.au, task.request.emotion)
            if verdict.ok:
                self.cache.put(
                    task.key,
                    {
                        "image_sha256": task.image_sha256,
                        "caption_type": task.caption_type,
                        "prompt_version": self.prompt_version,
                        "model": self.model,
                        "reply": reply,
                        "time": time.time(),
                    },
                )
                self._count("accepted")
                return verdict
            reason = f"rejected reply: {verdict.reason}"
            self._count("rejected")
        failure = CaptionFailure(task.caption_type, task.image_sha256, reason, attempts, list(task.ids), reply[:1000])
        with self._stats_lock:
            self.failures.append(failure)
        return None

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        delay = min(self.backoff * 2 ** (attempt - 1), self.max_backoff)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff))
        # Jitter spreads retries of concurrent workers so they do not hit a recovering server together.
        return delay * (0.5 + random.random() / 2)

    def _post(self, payload: dict) -> str:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(
            self.endpoint, data=json.dumps(payload).encode("utf-8"), headers=headers, method="POST"
        )
        self._count("requests")
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as error:
            detail = error.read()[:300].decode("utf-8", errors="replace")
            if error.code >= 500 or error.code in _RETRIABLE_STATUS:
                raise _Transient(f"HTTP {error.code}: {detail}", _retry_after(error.headers)) from error
            raise _Permanent(f"HTTP {error.code}: {detail}") from error
        except (urllib.error.URLError, TimeoutError, ConnectionError, HTTPException, OSError) as error:
            raise _Transient(f"{type(error).__name__}: {error}") from error
        try:
            content = json.loads(body)["choices"][0]["message"]["content"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError) as error:
            raise _Transient(f"malformed response body: {body[:200]!r}") from error
        if isinstance(content, list):  # some servers return content parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if not isinstance(content, str):
            raise _Transient(f"malformed message content: {content!r:.200}")
        return content


def _retry_after(headers) -> float | None:
    try:
        return float(headers.get("Retry-After")) if headers is not None and headers.get("Retry-After") else None
    except ValueError:
        return None


def _label_signature(request: CaptionRequest) -> str:
    aus = "".join("x" if label == UNKNOWN else str(label) for label in request.au)
    return f"{request.emotion}-{aus}"


__all__ = [
    "API_KEY_VARIABLES",
    "BASE_URL_VARIABLES",
    "CaptionFailure",
    "DEFAULT_BASE_URL",
    "DEFAULT_MODEL",
    "LLMCaptioner",
    "MODEL_VARIABLES",
    "endpoint_configured",
]
