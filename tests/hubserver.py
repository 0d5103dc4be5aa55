"""A local Hub-compatible HTTP server for tests: what huggingface_hub really calls, in memory.

Implements, for model repos: repo info, file tree, paths-info, ``resolve`` (HEAD/GET with
byte ranges and the ``X-Repo-Commit`` / ``ETag`` / ``X-Linked-*`` headers), repo create,
branch create, YAML validation, preupload, the LFS batch API with upload and verify, and the
ndjson commit endpoint.  Auth is by bearer token; repos may be private or gated.  The server
counts the bytes it sends in ``resolve`` GET bodies, which is what the streaming tests measure.

Run the real client against it with ``HF_ENDPOINT`` pointing here and ``HF_HUB_DISABLE_XET=1``.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from hubfaults import FAULT_KINDS, Fault, answer_with_fault

LFS_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".gguf", ".h5", ".msgpack")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob with this content."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(path: str) -> bool:
    """Whether the Hub would store `path` with LFS (weights and other binaries)."""
    return path.endswith(LFS_SUFFIXES)


@dataclass
class Repo:
    """A model repo: commits are whole snapshots {path: bytes}; refs map names to commit ids."""

    repo_id: str
    private: bool = False
    gated: bool = False
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    commit_messages: list[str] = field(default_factory=list)

    def resolve(self, revision: str) -> str | None:
        """The commit id a branch, tag or full commit id names, or None."""
        if revision in self.branches:
            return self.branches[revision]
        if revision in self.tags:
            return self.tags[revision]
        return revision if revision in self.commits else None

    def commit(self, files: dict[str, bytes], branch: str = "main", message: str = "commit") -> str:
        """Record a snapshot as a new commit on `branch`; return its id."""
        digest = hashlib.sha1(repr((self.repo_id, branch, len(self.commits), sorted(
            (p, hashlib.sha256(d).hexdigest()) for p, d in files.items()))).encode()).hexdigest()
        self.commits[digest] = dict(files)
        self.branches[branch] = digest
        self.commit_messages.append(message)
        return digest


class FakeHub:
    """State of the fake Hub plus the HTTP server around it (start with :meth:`start`)."""

    def __init__(self, users: dict[str, str] | None = None) -> None:
        self.users = users or {"hf_writer_token": "me"}  # token -> user name
        self.repos: dict[str, Repo] = {}
        self.lfs_store: dict[str, bytes] = {}
        self.log: list[tuple[str, str, int]] = []  # (method, path, body bytes sent)
        self.bytes_sent = 0
        self.faults: list[Fault] = []
        self.faults_served: list[tuple[str, str]] = []  # (kind, path) of every fault injected
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- set-up helpers used by tests -------------------------------------------------------
    def add_repo(self, repo_id: str, folder: Path | None = None, *, files: dict[str, bytes] | None = None,
                 branch: str = "main", private: bool = False, gated: bool = False) -> str:
        """Create (or extend) a repo with the files of `folder` and/or `files`; return the commit id."""
        repo = self.repos.setdefault(repo_id, Repo(repo_id, private=private, gated=gated))
        content: dict[str, bytes] = {}
        if folder is not None:
            content.update({p.relative_to(folder).as_posix(): p.read_bytes()
                            for p in sorted(Path(folder).rglob("*")) if p.is_file()})
        content.update(files or {})
        return repo.commit(content, branch=branch, message="seed")

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The snapshot a revision of a repo names."""
        repo = self.repos[repo_id]
        return repo.commits[repo.resolve(revision)]  # type: ignore[index]

    def inject(self, kind: str, pattern: str = "*.safetensors", times: int = 1, **options: Any) -> Fault:
        """Make the next `times` resolve answers for files matching `pattern` fail this way."""
        assert kind in FAULT_KINDS, kind
        fault = Fault(kind, pattern, times, **options)
        with self.lock:
            self.faults.append(fault)
        return fault

    def take_fault(self, method: str, path: str) -> Fault | None:
        """The fault to inject into this answer, if one is pending."""
        with self.lock:
            for fault in self.faults:
                if fault.times > 0 and method in fault.methods and fnmatch.fnmatch(path, fault.pattern):
                    fault.times -= 1
                    self.faults_served.append((fault.kind, path))
                    return fault
        return None

    def reset_counters(self) -> None:
        """Forget the request log and the byte count."""
        with self.lock:
            self.log.clear()
            self.bytes_sent = 0

    def downloads(self) -> list[str]:
        """Paths fetched with GET on `resolve` since the last reset."""
        return [path for method, path, _ in self.log if method == "GET" and "/resolve/" in path]

    @property
    def url(self) -> str:
        """The endpoint to put in HF_ENDPOINT."""
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeHub":
        """Serve on 127.0.0.1 on a free port, in a daemon thread."""
        hub = self

        class Handler(_Handler):
            state = hub

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Shut the server down."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up (a timeout, an injected fault) is not an error of the server."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class HubError(Exception):
    """An HTTP error answer: status, X-Error-Code, message."""

    def __init__(self, status: int, code: str | None, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


_REPO = r"(?P<repo>[^/]+/[^/]+)"
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    (m, re.compile(p), name) for m, p, name in [
        ("GET", rf"^/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?$", "info"),
        ("GET", rf"^/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$", "tree"),
        ("POST", rf"^/api/models/{_REPO}/paths-info/(?P<rev>[^/]+)$", "paths_info"),
        ("HEAD", rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", "resolve"),
        ("GET", rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", "resolve"),
        ("POST", r"^/api/repos/create$", "create"),
        ("POST", rf"^/api/models/{_REPO}/branch/(?P<rev>[^/]+)$", "branch"),
        ("POST", r"^/api/validate-yaml$", "validate_yaml"),
        ("POST", rf"^/api/models/{_REPO}/preupload/(?P<rev>[^/]+)$", "preupload"),
        ("POST", r"^/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch$", "lfs_batch"),
        ("PUT", r"^/_lfs/upload/(?P<oid>[0-9a-f]{64})$", "lfs_upload"),
        ("POST", r"^/_lfs/verify$", "lfs_verify"),
        ("POST", rf"^/api/models/{_REPO}/commit/(?P<rev>[^/]+)$", "commit"),
    ]
]


class _Handler(BaseHTTPRequestHandler):
    """Routes requests to FakeHub state; every answer carries a Content-Length."""

    protocol_version = "HTTP/1.1"
    state: FakeHub

    def log_message(self, format: str, *args: Any) -> None:  # silence stderr
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    # -- plumbing ----------------------------------------------------------------------------
    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        self.query = parse_qs(split.query)
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        for route_method, pattern, name in _ROUTES:
            match = pattern.match(split.path)
            if route_method == method and match:
                args = {k: unquote(v) if v is not None else None for k, v in match.groupdict().items()}
                try:
                    getattr(self, f"_{name}")(method, **args)
                except HubError as err:
                    self._send(err.status, {"error": err.message, **err.extra}, headers={
                        **({"X-Error-Code": err.code} if err.code else {}), "X-Error-Message": err.message})
                return
        self._send(404, {"error": f"no route for {method} {split.path}"})

    def _send(self, status: int, payload: Any = None, *, raw: bytes | None = None,
              headers: dict[str, str] | None = None, head: bool = False, count: bool = False) -> None:
        body = raw if raw is not None else json.dumps(payload).encode() if payload is not None else b""
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if raw is None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        sent = 0 if head else len(body)
        if not head:
            self.wfile.write(body)
        with self.state.lock:
            self.state.log.append((self.command, self.path, sent))
            if count:
                self.state.bytes_sent += sent

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return None
        token = auth[len("Bearer "):]
        if token not in self.state.users:
            raise HubError(401, None, "Invalid credentials in Authorization header")
        return self.state.users[token]

    def _repo(self, repo_id: str, *, write: bool = False) -> Repo:
        user = self._user()
        repo = self.state.repos.get(repo_id)
        if repo is None or (repo.private and user != repo_id.split("/")[0]):
            raise HubError(401 if user is None else 404, "RepoNotFound", "Repository not found")
        if repo.gated and user is None:
            raise HubError(401, "GatedRepo", "Access to this gated repo is restricted; you must be authenticated")
        if repo.gated and user != repo_id.split("/")[0]:
            raise HubError(403, "GatedRepo", "Access to this gated repo is restricted and you are not in the list")
        if write and user != repo_id.split("/")[0]:
            raise HubError(401 if user is None else 403, None, "You don't have the rights to write to this repo")
        return repo

    def _commit_id(self, repo: Repo, rev: str | None) -> str:
        commit = repo.resolve(rev or "main")
        if commit is None:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return commit

    @staticmethod
    def _entry(path: str, data: bytes) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "path": path, "size": len(data), "oid": git_blob_sha1(data)}
        if is_lfs(path):
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry

    # -- read API ----------------------------------------------------------------------------
    def _info(self, method: str, repo: str, rev: str | None) -> None:
        r = self._repo(repo)
        commit = self._commit_id(r, rev)
        files = r.commits[commit]
        self._send(200, {"id": repo, "_id": repo, "sha": commit, "private": r.private, "gated": r.gated,
                         "lastModified": "2026-01-01T00:00:00.000Z", "tags": [], "downloads": 0,
                         "siblings": [{"rfilename": p} for p in sorted(files)]})

    def _tree(self, method: str, repo: str, rev: str, path: str | None) -> None:
        r = self._repo(repo)
        files = r.commits[self._commit_id(r, rev)]
        prefix = f"{path.strip('/')}/" if path else ""
        recursive = self.query.get("recursive", ["false"])[0].lower() == "true"
        out: dict[str, dict[str, Any]] = {}
        for name in sorted(files):
            if not name.startswith(prefix):
                continue
            parts = name[len(prefix):].split("/")
            for depth in range(1, len(parts)):  # folders on the way
                folder = prefix + "/".join(parts[:depth])
                if recursive or depth == 1:
                    out.setdefault(folder, {"type": "directory", "path": folder, "oid": git_blob_sha1(folder.encode())})
            if recursive or len(parts) == 1:
                out[name] = self._entry(name, files[name])
        if path and not out:
            raise HubError(404, "EntryNotFound", f"{path} does not exist")
        self._send(200, list(out.values()))

    def _paths_info(self, method: str, repo: str, rev: str) -> None:
        r = self._repo(repo)
        files = r.commits[self._commit_id(r, rev)]
        form = parse_qs(self.body.decode())
        paths = form.get("paths", [])
        out = [self._entry(p, files[p]) for p in paths if p in files]
        out += [{"type": "directory", "path": p, "oid": git_blob_sha1(p.encode())} for p in paths
                if p not in files and any(f.startswith(p.rstrip("/") + "/") for f in files)]
        self._send(200, out)

    def _resolve(self, method: str, repo: str, rev: str, path: str) -> None:
        r = self._repo(repo)
        commit = self._commit_id(r, rev)
        data = r.commits[commit].get(path)
        if data is None:
            raise HubError(404, "EntryNotFound", f"{path} does not exist at {rev}")
        etag = hashlib.sha256(data).hexdigest() if is_lfs(path) else git_blob_sha1(data)
        headers = {"X-Repo-Commit": commit, "ETag": f'"{etag}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if is_lfs(path):
            headers.update({"X-Linked-Size": str(len(data)), "X-Linked-ETag": f'"{etag}"'})
        status, body = 200, data
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            end = min(int(match.group(2)) if match.group(2) else len(data) - 1, len(data) - 1)
            if start >= len(data):
                raise HubError(416, None, "Requested range not satisfiable")
            status, body = 206, data[start:end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        fault = self.state.take_fault(method, path)
        if fault is None:
            self._send(status, raw=body, headers=headers, head=method == "HEAD", count=True)
        else:
            answer_with_fault(self, fault, status, body, headers, head=method == "HEAD")


    # -- write API ---------------------------------------------------------------------------
    def _create(self, method: str) -> None:
        user = self._user()
        if user is None:
            raise HubError(401, None, "You must be authenticated to create a repo")
        payload = json.loads(self.body)
        namespace = payload.get("organization") or user
        if namespace != user:
            raise HubError(403, None, f"You don't have the rights to create a repo under {namespace}")
        repo_id = f"{namespace}/{payload['name']}"
        if repo_id in self.state.repos:
            raise HubError(409, None, "You already created this model repo", url=f"{self.state.url}/{repo_id}")
        private = payload.get("private") or payload.get("visibility") == "private"
        repo = self.state.repos[repo_id] = Repo(repo_id, private=bool(private))
        repo.commit({".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}, message="initial commit")
        self._send(200, {"url": f"{self.state.url}/{repo_id}", "name": repo_id})

    def _branch(self, method: str, repo: str, rev: str) -> None:
        r = self._repo(repo, write=True)
        if rev in r.branches:
            raise HubError(409, None, f"Reference already exists: refs/heads/{rev}")
        start = json.loads(self.body or b"{}").get("startingPoint")
        r.branches[rev] = self._commit_id(r, start)
        self._send(200, {})

    def _validate_yaml(self, method: str) -> None:
        self._send(200, {"errors": [], "warnings": []})

    def _preupload(self, method: str, repo: str, rev: str) -> None:
        r = self._repo(repo, write=True)
        files = r.commits[self._commit_id(r, rev)]
        out = []
        for item in json.loads(self.body)["files"]:
            path = item["path"]
            old = files.get(path)
            mode = "lfs" if is_lfs(path) else "regular"
            oid = None if old is None else hashlib.sha256(old).hexdigest() if mode == "lfs" else git_blob_sha1(old)
            out.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        self._send(200, {"files": out, "commitOid": r.branches.get(rev)})

    def _lfs_batch(self, method: str, repo: str) -> None:
        self._repo(repo, write=True)
        objects = []
        for obj in json.loads(self.body)["objects"]:
            entry: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.state.lfs_store:
                entry["actions"] = {
                    "upload": {"href": f"{self.state.url}/_lfs/upload/{obj['oid']}"},
                    "verify": {"href": f"{self.state.url}/_lfs/verify"},
                }
            objects.append(entry)
        self._send(200, {"transfer": "basic", "objects": objects})

    def _lfs_upload(self, method: str, oid: str) -> None:
        if hashlib.sha256(self.body).hexdigest() != oid:
            raise HubError(400, None, "sha256 of the uploaded body does not match the oid")
        self.state.lfs_store[oid] = self.body
        self._send(200, {})

    def _lfs_verify(self, method: str) -> None:
        payload = json.loads(self.body)
        blob = self.state.lfs_store.get(payload["oid"])
        if blob is None or len(blob) != payload["size"]:
            raise HubError(404, None, "object not found")
        self._send(200, {"message": "verified"})

    def _commit(self, method: str, repo: str, rev: str) -> None:
        r = self._repo(repo, write=True)
        if rev not in r.branches:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        files = dict(r.commits[r.branches[rev]])
        summary = ""
        for line in self.body.splitlines():
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                summary = value["summary"]
            elif key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                blob = self.state.lfs_store.get(value["oid"])
                if blob is None:
                    raise HubError(400, None, f"LFS object {value['oid']} was never uploaded")
                files[value["path"]] = blob
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                files = {p: d for p, d in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
            else:
                raise HubError(400, None, f"unknown commit operation {key}")
        commit = r.commit(files, branch=rev, message=summary)
        self._send(200, {"commitUrl": f"{self.state.url}/{repo}/commit/{commit}", "commitOid": commit,
                         "pullRequestUrl": None})
