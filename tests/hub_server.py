"""A stand-in Hugging Face Hub for the tests: the Hub's HTTP API on 127.0.0.1.

It answers exactly what the installed huggingface_hub (2.x) calls for model repos:
``POST /api/repos/create``, model info (``/api/models/R``, ``/revision/REV``), the tree
(``/tree/REV[/PATH]``) and ``/paths-info/REV``, ``/api/validate-yaml``, ``/preupload/REV``
(upload mode per file: LFS for ``.gitattributes`` patterns, binary samples and files of
10 MiB or more; ``shouldIgnore`` from ``.gitignore``; the remote ``oid`` of files it holds),
the git-LFS batch API (``R.git/info/lfs/objects/batch``, basic transfer) with its upload
to a second origin that plays the storage bucket and ``verify``, the NDJSON commit
(``header``, ``file`` base64, ``lfsFile``, ``deletedFile``, ``deletedFolder``),
``/api/agent-harnesses`` (read once for the user agent; empty), and
``/R/resolve/REV/PATH`` (HEAD and GET; LFS files redirect to the storage origin with
``X-Linked-Etag``/``X-Linked-Size``, as the Hub redirects to its CDN). It checks what the
Hub checks: the token (Bearer; 401/403 as the Hub words them), private repos, sha256 and
size of LFS uploads, that ``lfsFile`` objects were uploaded, that regular files are not
binary, the parent commit. Repos live in memory; every commit is kept, so tests can
assert that a rerun made none.

Not stood in for: Xet storage (its CAS protocol; the fixture turns Xet off, so uploads
take the LFS route huggingface_hub keeps for that), multipart LFS uploads (the tests'
files are small), pull requests, pagination, ``expand``. Written from huggingface_hub's
client code (hf_api.py, _commit_api.py, lfs.py, file_download.py) and the git-lfs batch
API spec; no code of theirs is copied.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

LFS_THRESHOLD = 10 * 1024 * 1024
LFS_JSON = "application/vnd.git-lfs+json"
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*", "*.mlmodel", "*.model",
    "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar",
    "*.safetensors", "saved_model/**/*", "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
))
_REPO = r"(?P<repo>[^/]+/[^/]+)"
_NAME = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?$")


class ApiError(Exception):
    """An error answer: status, message (body and ``X-Error-Message``), the Hub's ``X-Error-Code``."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


# --------------------------------------------------------------------------- repos


@dataclass(frozen=True)
class Blob:
    """A file at a commit: regular (``data``) or an LFS pointer to ``sha256``."""

    size: int
    data: bytes | None = None
    sha256: str | None = None

    @property
    def pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n".encode()

    @property
    def git_oid(self) -> str:
        body = self.data if self.sha256 is None else self.pointer
        return hashlib.sha1(f"blob {len(body)}\0".encode() + body).hexdigest()

    @property
    def oid(self) -> str:
        """What preupload compares with the client's: sha256 for LFS files, git blob id otherwise."""
        return self.sha256 or self.git_oid


@dataclass
class Commit:
    oid: str
    title: str
    files: dict[str, Blob]
    date: str


@dataclass
class HubRepo:
    id: str
    owner: str
    private: bool
    commits: list[Commit] = field(default_factory=list)

    @property
    def head(self) -> Commit:
        return self.commits[-1]

    def at(self, revision: str) -> Commit:
        for commit in reversed(self.commits):
            if revision in ("main", commit.oid):
                return commit
        raise ApiError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _binary(sample: bytes) -> bool:
    """The Hub's test on a file's first 512 bytes: a NUL byte or bytes that are not UTF-8."""
    if b"\0" in sample:
        return True
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as err:
        return err.start < len(sample) - 3  # a character cut at the sample's end is fine
    return False


def _matches(path: str, pattern: str) -> bool:
    """A .gitattributes/.gitignore pattern: on the file name without '/', on the path with one."""
    pattern = pattern.strip().lstrip("/")
    if "/" not in pattern.rstrip("/"):
        return fnmatch.fnmatch(path.rsplit("/", 1)[-1], pattern) or any(fnmatch.fnmatch(part, pattern.rstrip("/")) for part in path.split("/")[:-1])
    return fnmatch.fnmatch(path, pattern.replace("**/", "*"))


# --------------------------------------------------------------------------- HTTP


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        app, origin = self.server.app, self.server.origin
        app.requests.append((origin, method, self.path, self.headers.get("authorization")))
        found = app.route(origin, method, urlsplit(self.path).path)
        self._body: bytes | None = None
        try:
            if found is None:
                raise ApiError(404, "Sorry, we can't find the page you are looking for.")
            handler, params = found
            handler(self, **params)
        except ApiError as err:
            self.body()  # drained, so the kept-alive connection stays in step
            self.send(err.status, {"error": err.message}, headers={**err.headers, **({"X-Error-Code": err.code} if err.code else {}), "X-Error-Message": err.message})

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.path).query)

    def body(self) -> bytes:
        """The request body (read once: Content-Length or chunked)."""
        if self._body is None:
            self._body = self._read_body()
        return self._body

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(parts)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def json_body(self) -> Any:
        try:
            return json.loads(self.body() or b"null")
        except ValueError as err:
            raise ApiError(400, f"invalid JSON: {err}") from None

    def send(self, status: int, obj: Any = None, *, raw: bytes | None = None, headers: dict[str, str] | None = None, content_type: str = "application/json; charset=utf-8") -> None:
        data = raw if raw is not None else json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    app: "HubStandIn"
    origin: str  # "hub" or "storage"


class HubStandIn:
    """The stand-in: ``with HubStandIn(tokens={"hf_x": ("alice", "write")}) as hub: hub.url``."""

    def __init__(self, *, tokens: dict[str, tuple[str, str]] | None = None) -> None:
        self.tokens = dict(tokens or {})  # token -> (user, "write" | "read")
        self.repos: dict[str, HubRepo] = {}
        self.objects: dict[str, bytes] = {}  # the LFS bucket: sha256 -> content
        self.requests: list[tuple[str, str, str, str | None]] = []  # (origin, method, path, authorization)
        self.lock = threading.RLock()
        self._servers: dict[str, _Server] = {}
        self._counter = 0

    # lifecycle
    def start(self) -> "HubStandIn":
        for origin in ("hub", "storage"):
            server = _Server(("127.0.0.1", 0), _Handler)
            server.app, server.origin = self, origin
            self._servers[origin] = server
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        for server in self._servers.values():
            server.shutdown()
            server.server_close()
        self._servers.clear()

    def __enter__(self) -> "HubStandIn":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._servers['hub'].server_address[1]}"

    @property
    def storage_url(self) -> str:
        return f"http://127.0.0.1:{self._servers['storage'].server_address[1]}"

    # seeding and looking (for the tests)
    def add_repo(self, repo_id: str, files: dict[str, bytes], *, private: bool = False) -> HubRepo:
        """A repo as if its owner had created it and committed ``files`` (binary ones as LFS)."""
        repo = self._create(repo_id, private=private)
        blobs = {path: self._blob(data) for path, data in files.items()}
        self._commit(repo, "Upload files", {**repo.head.files, **blobs})
        return repo

    def repo(self, repo_id: str) -> HubRepo:
        return self.repos[repo_id.lower()]

    def content(self, repo_id: str, path: str) -> bytes:
        blob = self.repo(repo_id).head.files[path]
        return blob.data if blob.sha256 is None else self.objects[blob.sha256]

    def _blob(self, data: bytes) -> Blob:
        if _binary(data[:512]) or len(data) >= LFS_THRESHOLD:
            sha = hashlib.sha256(data).hexdigest()
            self.objects[sha] = data
            return Blob(size=len(data), sha256=sha)
        return Blob(size=len(data), data=data)

    def _create(self, repo_id: str, *, private: bool) -> HubRepo:
        repo = HubRepo(id=repo_id, owner=repo_id.split("/")[0], private=private)
        self.repos[repo_id.lower()] = repo
        self._commit(repo, "initial commit", {".gitattributes": Blob(size=len(GITATTRIBUTES), data=GITATTRIBUTES.encode())})
        return repo

    def _commit(self, repo: HubRepo, title: str, files: dict[str, Blob]) -> Commit:
        self._counter += 1
        oid = hashlib.sha1(f"{repo.id}\0{self._counter}\0{title}".encode()).hexdigest()
        commit = Commit(oid=oid, title=title, files=files, date=_now())
        repo.commits.append(commit)
        return commit

    # routing
    def route(self, origin: str, method: str, path: str) -> tuple[Callable[..., None], dict[str, str]] | None:
        table = self._storage_routes() if origin == "storage" else self._hub_routes()
        for methods, pattern, handler in table:
            m = re.fullmatch(pattern, path)
            if m and method in methods:
                return handler, {k: unquote(v) for k, v in m.groupdict().items() if v is not None}
        return None

    def _hub_routes(self) -> list[tuple[tuple[str, ...], str, Callable[..., None]]]:
        return [
            (("POST",), r"/api/repos/create", self._create_repo),
            (("POST",), r"/api/validate-yaml", self._validate_yaml),
            (("GET",), r"/api/agent-harnesses", self._agent_harnesses),
            (("GET",), rf"/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?", self._model_info),
            (("GET",), rf"/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<sub>.+))?", self._tree),
            (("POST",), rf"/api/models/{_REPO}/paths-info/(?P<rev>[^/]+)", self._paths_info),
            (("POST",), rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)", self._preupload),
            (("POST",), rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)", self._commit_route),
            (("POST",), rf"/{_REPO}\.git/info/lfs/objects/batch", self._lfs_batch),
            (("POST",), rf"/{_REPO}\.git/info/lfs/objects/verify", self._lfs_verify),
            (("GET", "HEAD"), rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", self._resolve),
        ]

    def _storage_routes(self) -> list[tuple[tuple[str, ...], str, Callable[..., None]]]:
        return [
            (("PUT",), r"/upload/(?P<oid>[0-9a-f]{64})", self._storage_put),
            (("GET", "HEAD"), r"/lfs/(?P<oid>[0-9a-f]{64})", self._storage_get),
        ]

    # auth and access
    def _user(self, h: _Handler) -> tuple[str, str] | None:
        header = h.headers.get("authorization") or ""
        if not header:
            return None
        token = header.removeprefix("Bearer ").strip()
        if token not in self.tokens:
            raise ApiError(401, "Invalid credentials in Authorization header")
        return self.tokens[token]

    def _readable(self, h: _Handler, repo_id: str) -> HubRepo:
        user = self._user(h)
        repo = self.repos.get(repo_id.lower())
        if repo is None or (repo.private and (user is None or user[0] != repo.owner)):
            raise ApiError(404 if user else 401, "Repository not found", code="RepoNotFound")
        return repo

    def _writable(self, h: _Handler, repo_id: str) -> HubRepo:
        user = self._user(h)
        if user is None:
            raise ApiError(401, "Invalid username or password.")
        repo = self._readable(h, repo_id)
        if user[0] != repo.owner or user[1] != "write":
            raise ApiError(403, f"You don't have the rights to write to {repo.id}: this token has {user[1]} access to {user[0]}'s repos")
        return repo

    # repos
    def _create_repo(self, h: _Handler) -> None:
        req = h.json_body() or {}
        user = self._user(h)
        if user is None:
            raise ApiError(401, "Invalid username or password.")
        owner, name = req.get("organization") or user[0], str(req.get("name") or "")
        if not _NAME.match(name) or req.get("type", "model") != "model":
            raise ApiError(400, "repository name or type is invalid")
        if owner != user[0] or user[1] != "write":
            raise ApiError(403, f'You don\'t have the rights to create a model under the namespace "{owner}"')
        repo_id = f"{owner}/{name}"
        with self.lock:
            if repo_id.lower() in self.repos:
                return h.send(409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}, headers={"X-Error-Message": "You already created this model repo"})
            self._create(repo_id, private=req.get("visibility", "public") == "private" or bool(req.get("private")))
        h.send(200, {"url": f"{self.url}/{repo_id}", "name": repo_id, "id": hashlib.md5(repo_id.encode()).hexdigest()[:24]})

    def _agent_harnesses(self, h: _Handler) -> None:
        """The registry huggingface_hub reads once to name an AI agent in its user agent: empty."""
        h.send(200, {"standardEnvVars": [], "harnesses": {}})

    def _model_info(self, h: _Handler, repo: str, rev: str = "main") -> None:
        found = self._readable(h, repo)
        commit = found.at(rev)
        siblings = [{"rfilename": p} for p in sorted(commit.files)]
        h.send(200, {"_id": hashlib.md5(found.id.encode()).hexdigest()[:24], "id": found.id, "author": found.owner, "sha": commit.oid,
                     "lastModified": commit.date, "createdAt": found.commits[0].date, "private": found.private, "disabled": False,
                     "gated": False, "downloads": 0, "likes": 0, "tags": [], "library_name": "gguf", "siblings": siblings})

    # listing
    def _entry(self, path: str, blob: Blob) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": blob.git_oid, "size": blob.size, "path": path}
        if blob.sha256:
            entry["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": len(blob.pointer)}
        return entry

    def _folder(self, path: str, files: dict[str, Blob]) -> dict[str, Any]:
        inside = sorted(f"{p}:{b.git_oid}" for p, b in files.items() if p.startswith(path + "/"))
        return {"type": "directory", "oid": hashlib.sha1("\n".join(inside).encode()).hexdigest(), "path": path}

    def _tree(self, h: _Handler, repo: str, rev: str, sub: str = "") -> None:
        files = self._readable(h, repo).at(rev).files
        recursive = (h.query.get("recursive") or ["false"])[0].lower() == "true"
        prefix = f"{sub.strip('/')}/" if sub else ""
        if sub and not any(p.startswith(prefix) for p in files):
            raise ApiError(404, f"{sub} does not exist on main", code="EntryNotFound")
        entries, folders = [], set()
        for path in sorted(p for p in files if p.startswith(prefix)):
            parts = path[len(prefix):].split("/")
            for depth in range(1, len(parts)):
                if recursive or depth == 1:
                    folders.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                entries.append(self._entry(path, files[path]))
        h.send(200, [self._folder(f, files) for f in sorted(folders)] + entries)

    def _paths_info(self, h: _Handler, repo: str, rev: str) -> None:
        form = parse_qs(h.body().decode())
        files = self._readable(h, repo).at(rev).files
        out = []
        for path in form.get("paths", []):
            if path in files:
                out.append(self._entry(path, files[path]))
            elif any(p.startswith(path.rstrip("/") + "/") for p in files):
                out.append(self._folder(path.rstrip("/"), files))
        h.send(200, out)

    # uploading
    def _validate_yaml(self, h: _Handler) -> None:
        import yaml

        content = str((h.json_body() or {}).get("content") or "")
        m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, re.S)
        try:
            meta = yaml.safe_load(m.group(1)) if m else {}
        except yaml.YAMLError as err:
            return h.send(400, {"errors": [{"message": f"YAML header is not valid: {str(err).splitlines()[0]}"}], "warnings": []})
        if meta is not None and not isinstance(meta, dict):
            return h.send(400, {"errors": [{"message": "YAML header must be a mapping"}], "warnings": []})
        h.send(200, {"errors": [], "warnings": []})

    def _preupload(self, h: _Handler, repo: str, rev: str) -> None:
        found = self._writable(h, repo)
        req = h.json_body() or {}
        files = found.at(rev).files
        attributes = (files.get(".gitattributes") or Blob(size=0, data=b"")).data.decode()
        lfs_patterns = [line.split()[0] for line in attributes.splitlines() if "filter=lfs" in line]
        ignore = req.get("gitIgnore")
        if ignore is None and ".gitignore" in files:
            ignore = files[".gitignore"].data.decode()
        ignored = [line.strip() for line in (ignore or "").splitlines() if line.strip() and not line.startswith("#")]
        out = []
        for item in req.get("files") or []:
            path, size, sample = item["path"], int(item["size"]), base64.b64decode(item["sample"])
            lfs = size >= LFS_THRESHOLD or _binary(sample) or any(_matches(path, p) for p in lfs_patterns)
            entry = {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": any(_matches(path, p) for p in ignored)}
            if path in files:
                entry["oid"] = files[path].oid
            out.append(entry)
        h.send(200, {"files": out, "commitOid": found.at(rev).oid})

    def _lfs_batch(self, h: _Handler, repo: str) -> None:
        if LFS_JSON not in (h.headers.get("Accept") or ""):
            raise ApiError(406, f"Accept must be {LFS_JSON}")
        found = self._writable(h, repo)
        req = h.json_body() or {}
        if req.get("operation") != "upload" or "basic" not in (req.get("transfers") or ["basic"]):
            raise ApiError(422, "only the basic upload transfer is supported")
        h.send(200, {"transfer": "basic", "objects": [self._lfs_object(found, o) for o in req.get("objects") or []]}, content_type=LFS_JSON)

    def _lfs_object(self, repo: HubRepo, obj: dict[str, Any]) -> dict[str, Any]:
        oid, size = str(obj.get("oid")), obj.get("size")
        if not re.fullmatch(r"[0-9a-f]{64}", oid) or not isinstance(size, int) or size < 0:
            return {"oid": oid, "size": size if isinstance(size, int) else 0, "error": {"code": 422, "message": "Invalid object"}}
        if oid in self.objects:
            return {"oid": oid, "size": size, "authenticated": True}  # no actions: the bucket has it
        return {"oid": oid, "size": size, "authenticated": True, "actions": {
            "upload": {"href": f"{self.storage_url}/upload/{oid}?size={size}&X-Amz-Signature=stand-in"},
            "verify": {"href": f"{self.url}/{repo.id}.git/info/lfs/objects/verify"},
        }}

    def _storage_put(self, h: _Handler, oid: str) -> None:
        data = h.body()
        size = int((h.query.get("size") or ["-1"])[0])
        if hashlib.sha256(data).hexdigest() != oid or len(data) != size:
            raise ApiError(400, "BadDigest: the content does not match the signed sha256 and size")
        self.objects[oid] = data
        h.send(200, raw=b"", headers={"ETag": f'"{hashlib.md5(data).hexdigest()}"'})

    def _lfs_verify(self, h: _Handler, repo: str) -> None:
        self._writable(h, repo)
        req = h.json_body() or {}
        data = self.objects.get(str(req.get("oid")))
        if data is None or len(data) != req.get("size"):
            raise ApiError(404, "Object not found or of another size")
        h.send(200, {"message": "Object verified"}, content_type=LFS_JSON)

    def _commit_route(self, h: _Handler, repo: str, rev: str) -> None:
        found = self._writable(h, repo)
        if h.query.get("create_pr"):
            raise ApiError(400, "the stand-in does not do pull requests")
        lines = [json.loads(line) for line in h.body().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise ApiError(400, "the first line of a commit must be its header")
        header = lines[0]["value"]
        with self.lock:
            parent = found.at(rev)
            if header.get("parentCommit") not in (None, parent.oid):
                raise ApiError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(parent.files)
            for line in lines[1:]:
                self._apply(files, line.get("key"), line.get("value") or {})
            commit = self._commit(found, str(header.get("summary") or ""), files)
        h.send(200, {"success": True, "commitOid": commit.oid, "commitUrl": f"{self.url}/{found.id}/commit/{commit.oid}", "hookOutput": ""})

    def _apply(self, files: dict[str, Blob], key: str | None, value: dict[str, Any]) -> None:
        path = str(value.get("path") or "")
        if not path or path.startswith("/") or ".." in path.split("/") or path.split("/")[0] == ".git":
            raise ApiError(400, f"invalid path {path!r}")
        if key == "file":
            data = base64.b64decode(value["content"]) if value.get("encoding") == "base64" else str(value["content"]).encode()
            if _binary(data[:512]):
                raise ApiError(400, "Your push was rejected because it contains binary files. Please use https://huggingface.co/docs/hub/xet to store binary files.")
            files[path] = Blob(size=len(data), data=data)
        elif key == "lfsFile":
            data = self.objects.get(str(value.get("oid")))
            if data is None or value.get("size") not in (None, len(data)):
                raise ApiError(422, f"LFS file {path} was not uploaded (oid {value.get('oid')})")
            files[path] = Blob(size=len(data), sha256=value["oid"])
        elif key == "deletedFile":
            if files.pop(path, None) is None:
                raise ApiError(404, f"A file with this name doesn't exist: {path}", code="EntryNotFound")
        elif key == "deletedFolder":
            inside = [p for p in files if p.startswith(path.rstrip("/") + "/")]
            if not inside:
                raise ApiError(404, f"A folder with this name doesn't exist: {path}", code="EntryNotFound")
            for p in inside:
                del files[p]
        else:
            raise ApiError(400, f"unknown commit operation {key!r}")

    # downloading
    def _resolve(self, h: _Handler, repo: str, rev: str, path: str) -> None:
        commit = self._readable(h, repo).at(rev)
        blob = commit.files.get(path)
        common = {"X-Repo-Commit": commit.oid, "Accept-Ranges": "bytes"}
        if blob is None:
            raise ApiError(404, "Entry not found", code="EntryNotFound", headers=common)
        if blob.sha256 is None:
            return h.send(200, raw=blob.data, headers={**common, "ETag": f'"{blob.git_oid}"'}, content_type="text/plain; charset=utf-8")
        location = f"{self.storage_url}/lfs/{blob.sha256}?X-Amz-Signature=stand-in"
        h.send(302, raw=f"Found. Redirecting to {location}".encode(), content_type="text/plain; charset=utf-8", headers={
            **common, "Location": location, "ETag": f'"{blob.git_oid}"', "X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(blob.size)})

    def _storage_get(self, h: _Handler, oid: str) -> None:
        data = self.objects.get(oid)
        if data is None:
            raise ApiError(404, "NoSuchKey")
        m = re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range") or "")
        start = int(m.group(1)) if m else 0
        headers = {"ETag": f'"{oid}"', "Accept-Ranges": "bytes"}
        if m:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        h.send(206 if m else 200, raw=data[start:], headers=headers, content_type="application/octet-stream")

    # counts (for the tests)
    def count(self, origin: str, method: str, fragment: str) -> int:
        return sum(1 for o, m, p, _ in self.requests if o == origin and m == method and fragment in p)


# --------------------------------------------------------------------------- fixture


WRITE_TOKEN = "hf_secretWRITEtoken0123456789"
READ_TOKEN = "hf_secretREADtoken0123456789"


@pytest.fixture()
def hf_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubStandIn]:
    """A running stand-in Hub that huggingface_hub talks to, online, with ``HF_TOKEN`` set to
    alice's write token; the HF cache and stored-token file are this test's. Stops by itself.

    huggingface_hub reads HF_ENDPOINT, HF_HUB_OFFLINE, HF_HUB_DISABLE_XET, the cache and
    token paths into ``huggingface_hub.constants`` when first imported, so those are patched
    there as well as in the environment.
    """
    import huggingface_hub.constants as constants

    with HubStandIn(tokens={WRITE_TOKEN: ("alice", "write"), READ_TOKEN: ("alice", "read")}) as hub:
        cache = tmp_path / "hf" / "hub"
        for key, value in {
            "ENDPOINT": hub.url, "HUGGINGFACE_CO_URL_TEMPLATE": hub.url + "/{repo_id}/resolve/{revision}/{filename}",
            "HF_HUB_OFFLINE": False, "HF_HUB_DISABLE_XET": True, "HF_HUB_CACHE": str(cache),
            "HF_TOKEN_PATH": str(tmp_path / "hf" / "token"), "HF_STORED_TOKENS_PATH": str(tmp_path / "hf" / "stored_tokens"),
            "AGENT_HARNESSES_PATH": str(tmp_path / "hf" / ".agent_harnesses.json"),
        }.items():
            monkeypatch.setattr(constants, key, value)
        for key, value in {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1", "HF_HUB_CACHE": str(cache), "HF_TOKEN": WRITE_TOKEN}.items():
            monkeypatch.setenv(key, value)
        yield hub
