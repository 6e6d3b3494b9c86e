"""A small Hugging Face Hub-compatible HTTP server on 127.0.0.1, for offline round-trip tests.

    from hub_server import LocalHub
    with LocalHub() as hub:                      # threaded server on a free port, storage in a temp dir
        env = hub.client_environment(hf_home)    # HF_ENDPOINT, HF_TOKEN, HF_HUB_DISABLE_XET=1, HF_HUB_OFFLINE=0, HF_HOME
        hub.fail("commit", status=500)           # the next commit request answers 500
        hub.refuse_token("hf_bad")               # requests with this token answer 401

It speaks the parts of the Hub protocol that ``huggingface_hub`` 1.x/2.x (with Xet disabled),
``transformers`` ``push_to_hub``/``from_pretrained``, PEFT and ``datasets`` ``push_to_hub``/``load_dataset``
use, as read from ``huggingface_hub`` (``hf_api.py``, ``_commit_api.py``, ``lfs.py``, ``file_download.py``,
``utils/_http.py``):

- ``POST /api/repos/create`` (409 when the repository exists; a first commit holds ``.gitattributes``);
- ``POST /api/validate-yaml``; ``GET /api/whoami-v2``;
- ``GET /api/{type}s/{repo}[/revision/{rev}]`` (repository info with ``sha``, ``siblings``, ``cardData``);
- ``GET /api/{type}s/{repo}/tree/{rev}[/{path}]`` (``recursive``, ``expand``), ``POST .../paths-info/{rev}``,
  ``GET .../refs``;
- ``POST /api/{type}s/{repo}/preupload/{rev}`` (``regular`` or ``lfs`` per file, remote ``oid``);
- ``POST /{prefix}{repo}.git/info/lfs/objects/batch`` then ``PUT`` of each object to the returned ``href``
  (size and SHA-256 checked);
- ``POST /api/{type}s/{repo}/commit/{rev}``: the NDJSON payload (header, base64 ``file``, ``lfsFile`` pointers,
  ``deletedFile``, ``deletedFolder``), applied atomically: a commit either lands whole or not at all;
- ``GET``/``HEAD /{prefix}{repo}/resolve/{rev}/{path}``: regular files with ``ETag`` (git blob id),
  ``X-Repo-Commit`` and ``Content-Length``; LFS files as a 302 to the object store with ``X-Linked-Etag``
  (SHA-256) and ``X-Linked-Size``; ``Range`` requests.

Errors carry the Hub's headers: ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``),
``X-Error-Message`` and a JSON ``{"error": ...}`` body, so ``huggingface_hub`` raises its own
``RepositoryNotFoundError`` etc. Commit ids are SHA-1 hex digests of the commit's content and parent, and blob
ids are real git blob ids. Nothing but the standard library (and PyYAML, a package dependency, for card data).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

__all__ = ["ENDPOINTS", "HubError", "LocalHub"]

#: Names of the endpoints, as used by :meth:`LocalHub.fail` and :attr:`LocalHub.requests`.
ENDPOINTS = (
    "create_repo", "validate_yaml", "whoami", "info", "tree", "paths_info", "refs", "preupload", "commit",
    "lfs_batch", "lfs_upload", "lfs_download", "resolve",
)  # fmt: skip

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
#: Files above this size always go to LFS (the Hub's limit for regular git blobs is 10 MB).
LFS_THRESHOLD = 10 * 1000 * 1000
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in ("*.bin", "*.safetensors", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.npy", "*.npz", "*.onnx",
                    "*.parquet", "*.arrow", "*.msgpack", "*.pkl", "*.zip", "*.gz", "*.tar", "*tfevents*")
)  # fmt: skip
_LFS_SUFFIXES = tuple(line.split()[0][1:] for line in DEFAULT_GITATTRIBUTES.splitlines() if line.startswith("*."))
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_REPO_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


class HubError(Exception):
    """An error answered to the client: status, ``X-Error-Code`` (or None) and message."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None,
                 body: dict[str, Any] | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.body = body or {}


def git_blob_id(content: bytes) -> str:
    """The git object id of a blob (``sha1("blob <size>\\0" + content)``)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-LFS pointer file committed in place of an LFS object."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class StoredFile:
    """One file of a commit: its size, SHA-256 (the object in the store), git blob id, and whether it is LFS."""

    size: int
    sha256: str
    blob_id: str
    lfs: bool

    def tree_entry(self, path: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": self.blob_id, "size": self.size, "path": path}
        if self.lfs:
            entry["lfs"] = {
                "oid": self.sha256,
                "size": self.size,
                "pointerSize": len(lfs_pointer(self.sha256, self.size)),
            }
        return entry


@dataclass(frozen=True)
class Commit:
    oid: str
    parent: str | None
    title: str
    description: str
    date: str
    files: dict[str, StoredFile]


@dataclass
class Repository:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit:
        revision = revision.removeprefix("refs/heads/")
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        if _COMMIT_RE.match(revision) and revision in self.commits:
            return self.commits[revision]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _card_data(content: bytes) -> dict[str, Any] | None:
    """The YAML front matter of a README, or None."""
    text = content.decode("utf-8", errors="replace")
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, flags=re.S)
    if not match:
        return None
    data = yaml.safe_load(match.group(1))
    return data if isinstance(data, dict) else None


class LocalHub:
    """A threaded Hub-compatible server on ``127.0.0.1`` storing repositories under a temporary folder.

    Attributes:
        url: the endpoint, ``http://127.0.0.1:<port>``.
        storage_url: the object store's origin (LFS uploads and downloads), another port of 127.0.0.1.
        storage: folder of the content-addressed objects (deleted by :meth:`stop` when the hub created it).
        requests: ``(method, endpoint name, path)`` of every request received, in order.
        token: the token that :meth:`client_environment` hands to clients.
    """

    def __init__(self, storage: str | os.PathLike | None = None, *, token: str = "hf_local_test_token"):
        self._owns_storage = storage is None
        self.storage = Path(storage) if storage is not None else Path(tempfile.mkdtemp(prefix="local-hub-"))
        (self.storage / "objects").mkdir(parents=True, exist_ok=True)
        self.token = token
        self.requests: list[tuple[str, str, str]] = []
        self._repos: dict[tuple[str, str], Repository] = {}
        self._failures: Counter = Counter()
        self._failure_status: dict[str, int] = {}
        self._refused_tokens: set[str] = set()
        self._lock = threading.RLock()
        self._servers: list[ThreadingHTTPServer] = []
        self.url = ""
        self.storage_url = ""

    # ---- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> LocalHub:
        """Start the API server and the object store (a second origin, like the Hub's CDN) on free ports."""
        handler = type("BoundHubHandler", (_HubHandler,), {"hub": self})
        for _ in range(2):
            httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
            httpd.daemon_threads = True
            threading.Thread(target=httpd.serve_forever, name="local-hub", daemon=True).start()
            self._servers.append(httpd)
        self.url = f"http://127.0.0.1:{self._servers[0].server_address[1]}"
        self.storage_url = f"http://127.0.0.1:{self._servers[1].server_address[1]}"
        return self

    def stop(self) -> None:
        for httpd in self._servers:
            httpd.shutdown()
            httpd.server_close()
        self._servers.clear()
        if self._owns_storage:
            shutil.rmtree(self.storage, ignore_errors=True)

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---- test controls -------------------------------------------------------------------------------

    def client_environment(self, hf_home: str | os.PathLike, *, token: str | None = None) -> dict[str, str]:
        """Environment variables that point ``huggingface_hub`` (and libraries on it) at this server.

        Set them in ``os.environ`` before ``huggingface_hub`` is imported (a fresh process), or patch
        ``huggingface_hub.constants`` in a running one (see ``tests/test_hub.py``).
        """
        return {
            "HF_ENDPOINT": self.url,
            "HF_TOKEN": token if token is not None else self.token,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_OFFLINE": "0",
            "HF_DATASETS_OFFLINE": "0",
            "TRANSFORMERS_OFFLINE": "0",
            "HF_HOME": str(hf_home),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_DISABLE_IMPLICIT_TOKEN": "0",
            "NO_PROXY": "127.0.0.1,localhost",
        }

    def fail(self, endpoint: str, *, status: int = 500, times: int = 1) -> None:
        """Answer the next ``times`` requests to ``endpoint`` (a name in :data:`ENDPOINTS`) with ``status``."""
        if endpoint not in ENDPOINTS:
            raise ValueError(f"Unknown endpoint {endpoint!r}; choose from {ENDPOINTS}.")
        with self._lock:
            self._failures[endpoint] = times
            self._failure_status[endpoint] = status

    def refuse_token(self, token: str) -> None:
        """Answer 401 ("Invalid credentials in Authorization header") to every request that carries ``token``."""
        with self._lock:
            self._refused_tokens.add(token)

    def reset(self) -> None:
        """Forget injected failures, refused tokens and the request log (repositories are kept)."""
        with self._lock:
            self._failures.clear()
            self._failure_status.clear()
            self._refused_tokens.clear()
            self.requests.clear()

    def repo_files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        """Path -> content of every file of ``repo_id`` at ``revision`` (raises KeyError if there is no such repo)."""
        with self._lock:
            commit = self._repos[(repo_type, repo_id)].resolve(revision)
            return {path: self._read_object(entry.sha256) for path, entry in commit.files.items()}

    def commit_history(self, repo_id: str, repo_type: str = "model", branch: str = "main") -> list[Commit]:
        """The commits of ``branch``, newest first."""
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            history, oid = [], repo.branches[branch]
            while oid is not None:
                history.append(repo.commits[oid])
                oid = repo.commits[oid].parent
            return history

    # ---- storage -------------------------------------------------------------------------------------

    def _object_path(self, sha256: str) -> Path:
        return self.storage / "objects" / sha256

    def _store_object(self, content: bytes) -> str:
        sha256 = hashlib.sha256(content).hexdigest()
        path = self._object_path(sha256)
        if not path.exists():
            partial = path.with_suffix(f".{threading.get_ident()}.part")
            partial.write_bytes(content)
            partial.replace(path)
        return sha256

    def _read_object(self, sha256: str) -> bytes:
        return self._object_path(sha256).read_bytes()

    def _repo(self, repo_type: str, repo_id: str, *, writing: bool = False, token: str | None = None) -> Repository:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None or (repo.private and token is None and not writing):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _new_commit(self, repo: Repository, parent: str | None, title: str, description: str,
                    files: dict[str, StoredFile]) -> Commit:  # fmt: skip
        listing = json.dumps({p: (f.blob_id, f.size) for p, f in sorted(files.items())}).encode()
        date = _now()
        digest = hashlib.sha1(b"\0".join([listing, (parent or "").encode(), title.encode(), description.encode(),
                                          date.encode(), str(time.perf_counter_ns()).encode()]))  # fmt: skip
        commit = Commit(digest.hexdigest(), parent, title, description, date, files)
        repo.commits[commit.oid] = commit
        return commit

    def _stored_regular(self, content: bytes) -> StoredFile:
        return StoredFile(len(content), self._store_object(content), git_blob_id(content), lfs=False)

    # ---- endpoint logic (called under the lock) ------------------------------------------------------

    def create_repo(self, payload: dict[str, Any], token: str | None) -> dict[str, Any]:
        _require_token(token)
        name, organization = payload.get("name"), payload.get("organization") or "user"
        repo_type = payload.get("type") or "model"
        if repo_type not in URL_PREFIXES:
            raise HubError(400, f"Invalid repo type {repo_type!r}")
        if not isinstance(name, str) or not _REPO_NAME_RE.match(name) or not _REPO_NAME_RE.match(organization):
            raise HubError(400, f"Invalid repo name {organization}/{name}")
        repo_id = f"{organization}/{name}"
        url = f"{self.url}/{URL_PREFIXES[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self._repos:
            raise HubError(409, f"You already created this {repo_type} repo", body={"url": url})
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        repo = Repository(repo_type, repo_id, private, _now())
        first = self._new_commit(repo, None, "initial commit", "", {".gitattributes": self._stored_regular(
            DEFAULT_GITATTRIBUTES.encode())})  # fmt: skip
        repo.branches["main"] = first.oid
        self._repos[(repo_type, repo_id)] = repo
        return {"url": url, "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]}

    def info(self, repo: Repository, revision: str) -> dict[str, Any]:
        commit = repo.resolve(revision)
        organization, _ = repo.repo_id.split("/")
        info: dict[str, Any] = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id, "author": organization,
            "sha": commit.oid, "lastModified": commit.date, "createdAt": repo.created_at, "private": repo.private,
            "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [],
            "siblings": [
                {"rfilename": path, "size": f.size, "blobId": f.blob_id,
                 **({"lfs": {"sha256": f.sha256, "size": f.size,
                             "pointerSize": len(lfs_pointer(f.sha256, f.size))}} if f.lfs else {})}
                for path, f in sorted(commit.files.items())
            ],
        }  # fmt: skip
        if "README.md" in commit.files:
            card = _card_data(self._read_object(commit.files["README.md"].sha256))
            if card:
                info["cardData"] = card
                info["tags"] = list(card.get("tags") or [])
                for key in ("library_name", "pipeline_tag"):
                    if key in card and repo.repo_type == "model":
                        info[key] = card[key]
        return info

    def tree(self, repo: Repository, revision: str, path: str, recursive: bool, expand: bool) -> list[dict[str, Any]]:
        commit = repo.resolve(revision)
        path = path.strip("/")
        prefix = f"{path}/" if path else ""
        if path and path in commit.files:
            raise HubError(404, f"{path} is a file, not a folder", "EntryNotFound")
        below = {p: f for p, f in commit.files.items() if p.startswith(prefix)}
        if path and not below:
            raise HubError(404, f"Path {path} not found at revision {revision}", "EntryNotFound")
        entries: dict[str, dict[str, Any]] = {}
        for file_path, stored in sorted(below.items()):
            parts = file_path[len(prefix) :].split("/")
            for depth in range(1, len(parts)):
                folder = prefix + "/".join(parts[:depth])
                if depth == 1 or recursive:
                    entries.setdefault(folder, self._folder_entry(commit, folder))
                if not recursive:
                    break
            if len(parts) == 1 or recursive:
                entries[file_path] = stored.tree_entry(file_path)
        listing = [entries[key] for key in sorted(entries)]
        if expand:
            last = {"id": commit.oid, "title": commit.title, "date": commit.date}
            for entry in listing:
                entry["lastCommit"] = last
                if entry["type"] == "file":
                    entry["securityFileStatus"] = {"status": "safe", "avScan": {"status": "safe"},
                                                   "pickleImportScan": {"status": "safe"}}  # fmt: skip
        return listing

    @staticmethod
    def _folder_entry(commit: Commit, folder: str) -> dict[str, Any]:
        listing = sorted((p, f.blob_id) for p, f in commit.files.items() if p.startswith(folder + "/"))
        return {"type": "directory", "oid": hashlib.sha1(json.dumps(listing).encode()).hexdigest(), "path": folder}

    def paths_info(self, repo: Repository, revision: str, paths: list[str], expand: bool) -> list[dict[str, Any]]:
        commit = repo.resolve(revision)
        found = []
        for path in paths:
            path = path.strip("/")
            if path in commit.files:
                found.append(commit.files[path].tree_entry(path))
            elif any(p.startswith(path + "/") for p in commit.files):
                found.append(self._folder_entry(commit, path))
        if expand:
            for entry in found:
                entry["lastCommit"] = {"id": commit.oid, "title": commit.title, "date": commit.date}
        return found

    def preupload(self, repo: Repository, revision: str, payload: dict[str, Any]) -> dict[str, Any]:
        commit = repo.resolve(revision)
        files = payload.get("files")
        if not isinstance(files, list):
            raise HubError(400, "preupload payload needs a 'files' list")
        answer = []
        for item in files:
            path, size, sample = item["path"], int(item["size"]), base64.b64decode(item.get("sample", ""))
            lfs = size >= LFS_THRESHOLD or path.endswith(_LFS_SUFFIXES) or b"\0" in sample
            existing = commit.files.get(path)
            oid = None if existing is None else (existing.sha256 if existing.lfs else existing.blob_id)
            answer.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        return {"files": answer, "commitOid": commit.oid}

    def lfs_batch(self, repo: Repository, payload: dict[str, Any]) -> dict[str, Any]:
        if payload.get("operation") != "upload":
            raise HubError(400, "Only the 'upload' operation is supported by the LFS batch endpoint")
        objects = []
        for item in payload.get("objects", []):
            oid, size = str(item["oid"]), int(item["size"])
            if not re.fullmatch(r"[0-9a-f]{64}", oid):
                objects.append({"oid": oid, "size": size, "error": {"code": 422, "message": "oid is not a sha256"}})
                continue
            entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            path = self._object_path(oid)
            if not (path.exists() and path.stat().st_size == size):
                entry["actions"] = {
                    "upload": {"href": f"{self.storage_url}/__lfs/{oid}?size={size}", "expires_in": 3600}
                }
            objects.append(entry)
        return {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}

    def lfs_upload(self, oid: str, expected_size: int | None, content: bytes) -> None:
        if hashlib.sha256(content).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match its sha256 {oid}")
        if expected_size is not None and len(content) != expected_size:
            raise HubError(400, f"Uploaded {len(content)} bytes, announced {expected_size}")
        self._store_object(content)

    def commit(self, repo: Repository, revision: str, lines: list[dict[str, Any]], create_pr: bool) -> dict[str, Any]:
        if create_pr:
            raise HubError(400, "Pull requests are not supported by this local Hub")
        branch = revision.removeprefix("refs/heads/")
        if branch not in repo.branches:
            raise HubError(404, f"Invalid rev id: {revision} (commits go to a branch)", "RevisionNotFound")
        head = repo.commits[repo.branches[branch]]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first line of a commit payload must be its header")
        header = lines[0]["value"]
        parent = header.get("parentCommit")
        if parent is not None and parent != head.oid:
            raise HubError(412, f"A commit has happened since {parent}; the branch is at {head.oid}")
        files = dict(head.files)
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value", {})
            path = str(value.get("path", "")).strip("/")
            if not path or ".." in path.split("/"):
                raise HubError(400, f"Invalid path {value.get('path')!r}")
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, f"Unsupported encoding {value.get('encoding')!r} for {path}")
                files[path] = self._stored_regular(base64.b64decode(value["content"]))
            elif key == "lfsFile":
                oid, size = value["oid"], value.get("size")
                stored = self._object_path(oid)
                if not stored.exists():
                    raise HubError(422, f"Your push was rejected: LFS object {oid} for {path} was never uploaded")
                actual = stored.stat().st_size
                if size is not None and int(size) != actual:
                    raise HubError(422, f"LFS object {oid} has {actual} bytes, the commit says {size}")
                files[path] = StoredFile(actual, oid, git_blob_id(lfs_pointer(oid, actual)), lfs=True)
            elif key == "deletedFile":
                if path not in files:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                del files[path]
            elif key == "deletedFolder":
                for existing in [p for p in files if p.startswith(path + "/")]:
                    del files[existing]
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")
        commit = self._new_commit(repo, head.oid, header.get("summary") or "Upload", header.get("description") or "",
                                  files)  # fmt: skip
        repo.branches[branch] = commit.oid
        url = f"{self.url}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}/commit/{commit.oid}"
        return {"success": True, "commitOid": commit.oid, "commitUrl": url, "pullRequestUrl": None}


def _require_token(token: str | None) -> None:
    if token is None:
        raise HubError(401, "You must be authenticated to write to the Hub (no token was sent)")


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, stop) of a ``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` range, or None for the whole content."""
    if not header:
        return None
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if not match or match.group(1) == match.group(2) == "":
        raise HubError(416, f"Unsupported range {header!r}")
    first, last = match.groups()
    if first == "":
        start, stop = max(0, size - int(last)), size
    else:
        start, stop = int(first), size if last == "" else min(size, int(last) + 1)
    if start >= size and size > 0:
        raise HubError(416, f"Range {header!r} starts beyond the {size} bytes of the file")
    return start, stop


_API_RE = re.compile(r"^/api/(models|datasets|spaces)/([^/]+/[^/]+?)(?:/(revision|tree|preupload|commit|paths-info|refs)"
                     r"(?:/(.*))?)?/?$")  # fmt: skip
_RESOLVE_RE = re.compile(r"^/(datasets/|spaces/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_LFS_BATCH_RE = re.compile(r"^/(datasets/|spaces/)?([^/]+/[^/]+)\.git/info/lfs/objects/batch$")
_LFS_OBJECT_RE = re.compile(r"^/__lfs/([0-9a-f]{64})$")


class _HubHandler(BaseHTTPRequestHandler):
    hub: LocalHub
    protocol_version = "HTTP/1.1"
    server_version = "LocalHub/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the request log is LocalHub.requests
        return

    # ---- plumbing ------------------------------------------------------------------------------------

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _token(self) -> str | None:
        authorization = self.headers.get("Authorization", "")
        return authorization[7:].strip() or None if authorization.lower().startswith("bearer ") else None

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json", length: int | None = None) -> None:  # fmt: skip
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.send_header("X-Request-Id", hashlib.sha1(f"{time.perf_counter_ns()}".encode()).hexdigest()[:16])
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)

    def _error(self, error: HubError) -> None:
        headers = {"X-Error-Message": error.message.replace("\n", " "), **error.headers}
        if error.code:
            headers["X-Error-Code"] = error.code
        self._json({"error": error.message, **error.body}, error.status, headers)

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        body = self._body() if self.command in ("POST", "PUT") else b""
        try:
            name, action = self._route(split.path, query, body)
            with self.hub._lock:
                self.hub.requests.append((self.command, name, self.path))
                token = self._token()
                if token is not None and token in self.hub._refused_tokens:
                    raise HubError(401, "Invalid username or password.",
                                   headers={"X-Error-Message": "Invalid credentials in Authorization header"})  # fmt: skip
                if self.hub._failures[name] > 0:
                    self.hub._failures[name] -= 1
                    raise HubError(self.hub._failure_status[name], f"Injected failure of the {name} endpoint")
                action(token)
        except HubError as error:
            self._error(error)
        except (KeyError, ValueError, TypeError, json.JSONDecodeError) as error:
            self._error(HubError(400, f"Malformed request: {type(error).__name__}: {error}"))

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    # ---- routing -------------------------------------------------------------------------------------

    def _route(self, path: str, query: dict[str, str], body: bytes):
        hub, method = self.hub, self.command
        if path == "/api/repos/create" and method == "POST":
            return "create_repo", lambda token: self._json(hub.create_repo(json.loads(body), token))
        if path == "/api/validate-yaml" and method == "POST":
            return "validate_yaml", lambda token: self._validate_yaml(json.loads(body))
        if path == "/api/whoami-v2" and method == "GET":
            return "whoami", self._whoami
        if match := _API_RE.match(path):
            repo_type, repo_id = REPO_TYPES[match.group(1)], unquote(match.group(2))
            kind, rest = match.group(3), match.group(4) or ""
            revision, _, sub_path = rest.partition("/")
            revision, sub_path = unquote(revision or "main"), unquote(sub_path)

            def repo_of(token: str | None, writing: bool = False) -> Repository:
                return hub._repo(repo_type, repo_id, writing=writing, token=token)

            if kind in (None, "revision") and method == "GET":
                return "info", lambda token: self._json(hub.info(repo_of(token), revision))
            if kind == "tree" and method == "GET":
                recursive, expand = _flag(query.get("recursive")), _flag(query.get("expand"))
                return "tree", lambda token: self._json(hub.tree(repo_of(token), revision, sub_path, recursive, expand))
            if kind == "paths-info" and method == "POST":
                return "paths_info", lambda token: self._paths_info(repo_of(token), revision, body)
            if kind == "refs" and method == "GET":
                return "refs", lambda token: self._refs(repo_of(token))
            if kind == "preupload" and method == "POST":
                return "preupload", lambda token: (
                    _require_token(token),
                    self._json(hub.preupload(repo_of(token, True), revision, json.loads(body))),
                )
            if kind == "commit" and method == "POST":
                lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                create_pr = _flag(query.get("create_pr"))
                return "commit", lambda token: (
                    _require_token(token),
                    self._json(hub.commit(repo_of(token, True), revision, lines, create_pr)),
                )
        if (match := _LFS_BATCH_RE.match(path)) and method == "POST":
            repo_type = {"datasets/": "dataset", "spaces/": "space"}.get(match.group(1) or "", "model")
            repo_id = unquote(match.group(2))
            return "lfs_batch", lambda token: (
                _require_token(token),
                self._json(hub.lfs_batch(hub._repo(repo_type, repo_id, writing=True), json.loads(body)),
                           headers={"Content-Type": "application/vnd.git-lfs+json"}),
            )  # fmt: skip
        if match := _LFS_OBJECT_RE.match(path):
            oid = match.group(1)
            if method == "PUT":
                size = int(query["size"]) if "size" in query else None
                return "lfs_upload", lambda token: (hub.lfs_upload(oid, size, body), self._send(200, b""))
            if method in ("GET", "HEAD"):
                return "lfs_download", lambda token: self._object(oid, {})
        if (match := _RESOLVE_RE.match(path)) and method in ("GET", "HEAD"):
            repo_type = {"datasets/": "dataset", "spaces/": "space"}.get(match.group(1) or "", "model")
            repo_id, revision, file_path = unquote(match.group(2)), unquote(match.group(3)), unquote(match.group(4))
            return "resolve", lambda token: self._resolve(
                hub._repo(repo_type, repo_id, token=token), revision, file_path
            )
        raise HubError(404, f"No such endpoint: {method} {path}")

    # ---- responses -----------------------------------------------------------------------------------

    def _validate_yaml(self, payload: dict[str, Any]) -> None:
        try:
            _card_data(str(payload.get("content", "")).encode())
        except yaml.YAMLError as error:
            self._json({"errors": [{"message": f"Invalid YAML metadata: {error}"}], "warnings": []}, 400)
            return
        self._json({"errors": [], "warnings": []})

    def _whoami(self, token: str | None) -> None:
        if token is None:
            raise HubError(401, "Invalid username or password.")
        self._json({"type": "user", "id": "0" * 24, "name": "user", "fullname": "Local Hub user", "orgs": [],
                    "auth": {"type": "access_token", "accessToken": {"displayName": "local", "role": "write"}}})  # fmt: skip

    def _paths_info(self, repo: Repository, revision: str, body: bytes) -> None:
        content_type = self.headers.get("Content-Type", "")
        if content_type.startswith("application/json"):
            payload = json.loads(body)
            paths, expand = list(payload.get("paths", [])), bool(payload.get("expand"))
        else:
            form = parse_qs(body.decode(), keep_blank_values=True)
            paths, expand = form.get("paths", []), _flag((form.get("expand") or ["false"])[-1])
        self._json(self.hub.paths_info(repo, revision, paths, expand))

    def _refs(self, repo: Repository) -> None:
        branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": oid} for n, oid in repo.branches.items()]
        self._json({"branches": branches, "converts": [], "tags": [], "pullRequests": []})

    def _resolve(self, repo: Repository, revision: str, path: str) -> None:
        commit = repo.resolve(revision)
        stored = commit.files.get(path)
        if stored is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", headers={"X-Repo-Commit": commit.oid})
        headers = {"X-Repo-Commit": commit.oid, "Accept-Ranges": "bytes"}
        if stored.lfs:
            headers |= {"ETag": f'"{stored.sha256}"', "X-Linked-Etag": f'"{stored.sha256}"',
                        "X-Linked-Size": str(stored.size), "Location": f"{self.hub.storage_url}/__lfs/{stored.sha256}"}  # fmt: skip
            self._send(302, b"", headers, content_type="text/plain")
            return
        self._object(stored.sha256, {**headers, "ETag": f'"{stored.blob_id}"'})

    def _object(self, sha256: str, headers: dict[str, str]) -> None:
        path = self.hub._object_path(sha256)
        if not path.exists():
            raise HubError(404, f"No object {sha256}", "EntryNotFound")
        content = path.read_bytes()
        span = _parse_range(self.headers.get("Range"), len(content))
        if span is None:
            self._send(200, content, {"ETag": f'"{sha256}"', **headers}, content_type="application/octet-stream")
            return
        start, stop = span
        headers = {"ETag": f'"{sha256}"', **headers, "Content-Range": f"bytes {start}-{stop - 1}/{len(content)}"}
        self._send(206, content[start:stop], headers, content_type="application/octet-stream")


def _flag(value: str | None) -> bool:
    return str(value).lower() in ("1", "true", "yes")
