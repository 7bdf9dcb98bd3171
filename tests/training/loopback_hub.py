"""A minimal Hugging Face Hub-compatible HTTP server on 127.0.0.1, enough for `upload_folder` / `push_to_hub` and
`from_pretrained` round trips (HF_INTEGRATION.md §10).

Every file is committed "regular" (base64 inline in the commit), so no LFS or Xet endpoints are needed; keep the
uploaded models tiny. State lives in memory: `hub.repos[repo_id]["files"]` maps paths to bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

_REPO = r"(?P<repo>[^/]+/[^/]+)"
ROUTES_POST = {
    "create": re.compile(r"^/api/repos/create$"),
    "validate": re.compile(r"^/api/validate-yaml$"),
    "preupload": re.compile(rf"^/api/models/{_REPO}/preupload/(?P<rev>[^/]+)$"),
    "commit": re.compile(rf"^/api/models/{_REPO}/commit/(?P<rev>[^/]+)$"),
}
ROUTES_GET = {
    "info": re.compile(rf"^/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?$"),
    "tree": re.compile(rf"^/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$"),
    "resolve": re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"),
}


class LoopbackHub:
    """`with LoopbackHub() as hub:` serves on `hub.url` until the block ends."""

    def __init__(self):
        self.repos: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _reply(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _json(self, status: int, payload, head: bool = False):
                self._reply(status, json.dumps(payload).encode(), {"Content-Type": "application/json"}, head)

            def _missing(self, code: str, head: bool = False):
                self._reply(
                    404, b'{"error": "not found"}', {"X-Error-Code": code, "Content-Type": "application/json"}, head
                )

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_POST(self):  # noqa: N802
                path = unquote(urlparse(self.path).path)
                body = self._body()
                hub.requests.append(("POST", path))
                for name, pattern in ROUTES_POST.items():
                    match = pattern.match(path)
                    if match:
                        return getattr(hub, f"_post_{name}")(self, match, body)
                self._missing("RepoNotFound")

            def do_GET(self, head: bool = False):  # noqa: N802
                path = unquote(urlparse(self.path).path)
                self.query = parse_qs(urlparse(self.path).query)
                hub.requests.append(("HEAD" if head else "GET", path))
                for name, pattern in ROUTES_GET.items():
                    match = pattern.match(path)
                    if match:
                        return getattr(hub, f"_get_{name}")(self, match, head)
                self._missing("RepoNotFound", head)

            def do_HEAD(self):  # noqa: N802
                self.do_GET(head=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> LoopbackHub:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> LoopbackHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ routes
    def _repo(self, repo_id: str) -> dict | None:
        return self.repos.get(repo_id)

    def _post_create(self, handler, match, body):
        payload = json.loads(body or b"{}")
        name = payload.get("name", "")
        repo_id = name if "/" in name else f"{payload.get('organization') or 'testuser'}/{name}"
        with self.lock:
            exists = repo_id in self.repos
            self.repos.setdefault(repo_id, {"files": {}, "sha": "0" * 40, "commits": []})
        if exists:
            return handler._json(409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"})
        handler._json(200, {"url": f"{self.url}/{repo_id}", "name": repo_id, "id": repo_id})

    def _post_validate(self, handler, match, body):
        handler._json(200, {"errors": [], "warnings": []})

    def _post_preupload(self, handler, match, body):
        if self._repo(match["repo"]) is None:
            return handler._missing("RepoNotFound")
        files = json.loads(body)["files"]
        handler._json(
            200,
            {
                "files": [
                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files
                ]
            },
        )

    def _post_commit(self, handler, match, body):
        repo = self._repo(match["repo"])
        if repo is None:
            return handler._missing("RepoNotFound")
        digest = hashlib.sha1()
        with self.lock:
            for line in body.decode().splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                value = item.get("value", {})
                if item["key"] == "file":
                    content = value["content"]
                    data = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
                    repo["files"][value["path"]] = data
                    digest.update(value["path"].encode() + data)
                elif item["key"] == "deletedFile":
                    repo["files"].pop(value["path"], None)
                elif item["key"] == "lfsFile":
                    raise NotImplementedError("the loopback hub accepts regular uploads only")
            repo["sha"] = digest.hexdigest()
            repo["commits"].append(repo["sha"])
        handler._json(
            200,
            {
                "commitUrl": f"{self.url}/{match['repo']}/commit/{repo['sha']}",
                "commitOid": repo["sha"],
                "pullRequestUrl": None,
            },
        )

    def _get_info(self, handler, match, head):
        repo = self._repo(match["repo"])
        if repo is None:
            return handler._missing("RepoNotFound", head)
        siblings = [{"rfilename": path, "size": len(data)} for path, data in sorted(repo["files"].items())]
        handler._json(
            200,
            {
                "id": match["repo"],
                "modelId": match["repo"],
                "sha": repo["sha"],
                "private": False,
                "siblings": siblings,
                "tags": [],
                "downloads": 0,
                "likes": 0,
            },
            head,
        )

    def _get_tree(self, handler, match, head):
        repo = self._repo(match["repo"])
        if repo is None:
            return handler._missing("RepoNotFound", head)
        prefix = (match["path"] or "").strip("/")
        recursive = handler.query.get("recursive", [""])[0].lower() == "true"  # every file below: `list_repo_files`
        entries, folders = [], set()
        for path, data in sorted(repo["files"].items()):
            if prefix and not path.startswith(prefix + "/"):
                continue
            rest = path[len(prefix) + 1 :] if prefix else path
            if "/" in rest and not recursive:
                folders.add((prefix + "/" if prefix else "") + rest.split("/")[0])
            else:
                entries.append({"type": "file", "path": path, "size": len(data), "oid": hashlib.sha1(data).hexdigest()})
        entries += [{"type": "directory", "path": folder, "oid": "0" * 40, "size": 0} for folder in sorted(folders)]
        handler._json(200, entries, head)

    def _get_resolve(self, handler, match, head):
        repo = self._repo(match["repo"])
        if repo is None:
            return handler._missing("RepoNotFound", head)
        data = repo["files"].get(match["path"])
        if data is None:
            return handler._missing("EntryNotFound", head)
        etag = hashlib.sha1(data).hexdigest()
        handler._reply(
            200,
            data,
            {"X-Repo-Commit": repo["sha"], "ETag": f'"{etag}"', "Content-Type": "application/octet-stream"},
            head,
        )


__all__ = ["LoopbackHub"]
