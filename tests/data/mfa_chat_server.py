"""A scripted OpenAI-style chat-completions server on loopback, for testing `LLMCaptioner`.

It answers `POST /v1/chat/completions` with a caption that satisfies the ground truth stated in the prompt, unless a
fault is scripted for that (image, caption type): the faults of `faults[(image_sha256, caption_type)]` are used up
one per request, in order. Every request is logged with its outcome, so tests can count them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from mf2.configuration_mf2 import EMOTION_LABELS
from mf2.data.captions.prompts import PROMPTS
from mf2.facs import ACTION_UNITS

FAULTS = ("500", "400", "timeout", "malformed", "missing_au", "wrong_emotion", "extra_au")


class ChatServer:
    """Start with `start()`, stop with `stop()`; `url` is the API root to give the client."""

    def __init__(self, delay: float = 0.0, slow_seconds: float = 3.0):
        self.delay = delay
        self.slow_seconds = slow_seconds
        self.faults: dict[tuple[str, str], list[str]] = {}
        self.log: list[dict] = []
        self.last_payload: dict | None = None
        self.last_payloads: dict[str, dict] = {}  # by caption type: the types' requests run side by side
        self.last_headers: dict | None = None
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> ChatServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                server._handle(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def outcomes(self, sha: str | None = None, caption_type: str | None = None) -> list[str]:
        with self._lock:
            return [
                entry["outcome"]
                for entry in self.log
                if (sha is None or entry["sha"] == sha) and (caption_type is None or entry["type"] == caption_type)
            ]

    # ---- request handling -----------------------------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        if handler.path != "/v1/chat/completions":
            handler.send_error(404)
            return
        body = handler.rfile.read(int(handler.headers.get("Content-Length", 0)))
        payload = json.loads(body)
        messages = payload["messages"]
        caption_type = next(name for name, prompt in PROMPTS.items() if prompt.role == messages[0]["content"])
        parts = messages[1]["content"]
        text = "\n".join(part["text"] for part in parts if part["type"] == "text")
        url = next(part["image_url"]["url"] for part in parts if part["type"] == "image_url")
        sha = hashlib.sha256(base64.b64decode(url.split(",", 1)[1])).hexdigest()
        emotion = re.search(r"^Emotion: (.+)$", text, re.MULTILINE).group(1).strip()
        active = re.findall(r"\bAU\d+\b", re.search(r"^Active AUs: (.*)$", text, re.MULTILINE).group(1))
        inactive = re.findall(r"\bAU\d+\b", re.search(r"^Inactive AUs: (.*)$", text, re.MULTILINE).group(1))
        with self._lock:
            queue = self.faults.get((sha, caption_type), [])
            fault = queue.pop(0) if queue else None
            self.log.append({"sha": sha, "type": caption_type, "outcome": fault or "ok", "time": time.time()})
            self.last_payload, self.last_headers = payload, dict(handler.headers)
            self.last_payloads[caption_type] = payload
        if self.delay:
            time.sleep(self.delay)
        try:
            if fault == "500":
                handler.send_error(500, "scripted failure")
                return
            if fault == "400":
                handler.send_error(400, "scripted bad request")
                return
            if fault == "timeout":
                time.sleep(self.slow_seconds)
            if fault == "malformed":
                self._send(handler, b'{"choices": [{"message": {"content": "AU1 (inner')
                return
            reply = _reply(caption_type, emotion, active, inactive, fault)
            answer = {
                "id": "x",
                "object": "chat.completion",
                "model": payload.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
            }
            self._send(handler, json.dumps(answer).encode())
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (the scripted timeout)

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, data: bytes) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)


def _reply(caption_type: str, emotion: str, active: list[str], inactive: list[str], fault: str | None) -> str:
    if caption_type == "au":
        codes = active[:-1] if fault == "missing_au" else active
        return "\n".join(
            f"{i}. **{code} ({ACTION_UNITS[code].name})**: On this face the {ACTION_UNITS[code].name} is clear."
            for i, code in enumerate(codes, start=1)
        )
    if fault == "wrong_emotion":
        emotion = next(name for name in EMOTION_LABELS if name not in (emotion, "other", "neutral"))
    emotion = "an expression of the 'other' category" if emotion == "other" else emotion  # as the prompt asks
    if caption_type == "emotion":
        return f"The person appears to feel {emotion}. The brows and the mouth make this plain."
    named = active + inactive[:1] if fault == "extra_au" else active
    return f"The person shows {emotion}. The decisive units are {', '.join(named)}, judging from the image."
