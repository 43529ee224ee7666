"""The Hugging Face Hub: publishing a share folder, and ``hf.co/USER/REPO[:QUANT]`` references.

``publish_hf(folder, repo)`` makes a Hub model repo hold the files of a share folder, in
one commit: files whose content the Hub already has (same sha256 for LFS files, same git
blob id for regular ones) are not sent, a rerun with nothing changed makes no commit, and
a repo that holds another model is replaced only with ``force``. The token is the standard
Hugging Face login (``HF_TOKEN`` or ``hf auth login``); it is never printed.

``hf.co/USER/REPO[:QUANT]`` is read as ``ollama run`` reads it: the GGUF whose file name
ends in ``-QUANT.gguf`` (case-insensitive), Q4_K_M by default. :func:`ref_gguf` takes
Ollama's copy when the model was pulled, else the Hub's, through the normal HF cache.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ollama_slim import paths
from ollama_slim.errors import HubError, SlimError, SourceError, UsageError
from ollama_slim.models.tags import OllamaName

DEFAULT_QUANT = "Q4_K_M"  # what Ollama runs for hf.co/USER/REPO without a tag
OLLAMA_HOSTS = ("hf.co", "huggingface.co")
LOGIN_HINT = "log in with `hf auth login` or set HF_TOKEN"
_NAME = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"^{_NAME}/{_NAME}$")
_QUANT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}$")
_HF_PREFIX = re.compile(r"^(?:https?://)?(?:hf\.co|huggingface\.co)/", re.IGNORECASE)
_QUANT_IN_NAME = re.compile(r"[-._](I?Q\d[A-Za-z0-9_]*|BF16|F16|F32)\.gguf$", re.IGNORECASE)
_KEPT_DOTFILES = {".gitattributes", ".gitignore"}
_HUB_OWN = {".gitattributes"}  # written by the Hub when it creates a repo
_NETWORK_MODULES = {"httpx", "httpx2", "httpcore", "httpcore2", "requests", "urllib3"}


# --------------------------------------------------------------------------- hf.co references


@dataclass(frozen=True)
class HfRef:
    """``hf.co/USER/REPO[:QUANT]``: a Hub repo of GGUFs, as ``ollama run`` takes it."""

    repo: str  # USER/REPO
    quant: str | None = None  # None: Ollama's default (Q4_K_M when the repo has it)

    def __str__(self) -> str:
        return f"hf.co/{self.repo}" + (f":{self.quant}" if self.quant else "")


def parse_hf_ref(ref: str) -> HfRef | None:
    """``hf.co/USER/REPO[:QUANT]`` or ``huggingface.co/...`` as an :class:`HfRef`; None for
    any other reference. ``:latest`` is Ollama's default quant. A reference that starts like
    one but is not (``hf.co/USER``) raises :class:`UsageError`."""
    text = str(ref).strip()
    if not _HF_PREFIX.match(text):
        return None
    rest = _HF_PREFIX.sub("", text, count=1)
    repo, colon, quant = rest.partition(":")
    if not _valid_repo_id(repo) or (colon and not _QUANT.match(quant)):
        raise UsageError(
            f"{ref!r} is not a Hugging Face model reference",
            hint="use hf.co/USER/REPO or hf.co/USER/REPO:QUANT, e.g. hf.co/alice/smollm2-slim:Q8_0",
        )
    return HfRef(repo=repo, quant=None if not quant or quant.lower() == "latest" else quant)


def check_repo_id(repo: str) -> str:
    """``repo`` as ``USER/REPO`` (``hf.co/USER/REPO`` and its URL are accepted too)."""
    text = _HF_PREFIX.sub("", str(repo).strip(), count=1)
    if not _valid_repo_id(text):
        raise UsageError(f"{repo!r} is not a Hugging Face repo id", hint="use USER/REPO, e.g. alice/smollm2-slim (letters, digits, '-', '_', '.')")
    return text


def _valid_repo_id(text: str) -> bool:
    return bool(_REPO_ID.match(text)) and "--" not in text and ".." not in text and not text.endswith(".git")


def pick_gguf(files: list[str], quant: str | None, *, where: str = "the repo") -> str:
    """The GGUF of ``files`` that Ollama runs for ``quant``: the file named ``*-QUANT.gguf``
    (or ``.QUANT``/``_QUANT``, any case); without a quant, Q4_K_M when present, else the
    only GGUF. :class:`SourceError` naming the available quants otherwise."""
    ggufs = sorted((f for f in files if f.lower().endswith(".gguf") and not Path(f).name.lower().startswith("mmproj")), key=lambda f: (f.count("/"), f))
    if not ggufs:
        raise SourceError(f"{where} holds no GGUF file", hint="Ollama runs hf.co repos that hold GGUF files; check the repo id")
    found = [f for f in ggufs if _has_quant(f, quant or DEFAULT_QUANT)]
    if found:
        return found[0]
    if quant is None and len(ggufs) == 1:
        return ggufs[0]
    available = gguf_quants(ggufs)
    what = f"no {quant} GGUF" if quant else f"several GGUFs and no {DEFAULT_QUANT}"
    raise SourceError(f"{where} has {what} (available: {', '.join(available)})", hint=f"name one, e.g. {where}:{available[0]}")


def _has_quant(name: str, quant: str) -> bool:
    return name.lower().endswith(tuple(f"{sep}{quant.lower()}.gguf" for sep in "-._"))


def gguf_quants(files: list[str]) -> list[str]:
    """The quant of each GGUF file name (``x-Q8_0.gguf`` -> ``Q8_0``; the name when it has none)."""
    quants = set()
    for f in files:
        m = _QUANT_IN_NAME.search(Path(f).name)
        quants.add(m.group(1).upper() if m else Path(f).name)
    return sorted(quants)


def offline_mode() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for no network."""
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in {"1", "true", "yes", "on"}


def ref_gguf(ref: HfRef, *, offline: bool | None = None) -> tuple[Path, str]:
    """The GGUF ``ref`` names, and its source: ``ollama-store`` when Ollama pulled it, else
    ``hf-gguf`` (the Hub, through the normal Hugging Face cache)."""
    from ollama_slim.models.sources import ollama_blob

    name = ollama_store_name(ref)
    blob = ollama_blob(name) if name is not None else None
    if blob is not None:
        return blob, "ollama-store"
    return hf_gguf(ref, offline=offline_mode() if offline is None else offline), "hf-gguf"


def ollama_store_name(ref: HfRef, models_dir: Path | None = None) -> OllamaName | None:
    """The name Ollama keeps ``ref`` under once pulled (``manifests/hf.co/USER/REPO/QUANT``,
    matched case-insensitively, as Ollama compares names), or None."""
    root = (models_dir or paths.ollama_models_dir()) / "manifests"
    user, model = ref.repo.split("/")
    for host in OLLAMA_HOSTS:
        found = _find_casefold(root, [host, user, model, ref.quant or "latest"])
        if found is not None and found.is_file():
            return OllamaName(*found.relative_to(root).parts)
    return None


def _find_casefold(root: Path, parts: list[str]) -> Path | None:
    for part in parts:
        if not root.is_dir():
            return None
        match = next((p for p in sorted(root.iterdir()) if p.name.lower() == part.lower()), None)
        if match is None:
            return None
        root = match
    return root


def hf_gguf(ref: HfRef, *, offline: bool) -> Path:
    """Download the GGUF ``ref`` names into the Hugging Face cache (or find it there: offline,
    or when the Hub cannot be reached) and return its path."""
    where = f"hf.co/{ref.repo}"
    files = None if offline else _hub_files(ref.repo, where)
    if files is None:
        files = _cached_files(ref.repo)
        if not files:
            if offline:
                raise SourceError(f"{where} is not in the Hugging Face cache and the network is off", hint="unset HF_HUB_OFFLINE, or `ollama pull` the model first")
            raise SourceError(f"{where} is not reachable (offline?)", hint="connect to the network, or `ollama pull` the model first")
        offline = True
    name = pick_gguf(files, ref.quant, where=where)
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(ref.repo, name, local_files_only=offline))
    except Exception as err:
        raise _mapped(err, where, publishing=False) from None


def _hub_files(repo: str, where: str) -> list[str] | None:
    """The files of ``repo`` on the Hub; None when the Hub cannot be reached."""
    from huggingface_hub import HfApi

    try:
        return HfApi().list_repo_files(repo)
    except Exception as err:
        if _is_network(_root(err)):
            return None
        raise _mapped(err, where, publishing=False) from None


def _cached_files(repo: str) -> list[str]:
    """The files of ``repo``'s ``main`` snapshot in the Hugging Face cache (those downloaded before)."""
    from huggingface_hub import constants

    storage = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    ref = storage / "refs" / "main"
    snapshot = storage / "snapshots" / ref.read_text().strip() if ref.is_file() else None
    if snapshot is None or not snapshot.is_dir():
        return []
    return sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- publishing


@dataclass(frozen=True)
class HubPublishResult:
    """What :func:`publish_hf` did: the commit it made (None when nothing changed)."""

    repo: str
    url: str
    commit: str | None
    uploaded: list[str]  # files sent in the commit (new or changed)
    unchanged: bool  # the Hub already held exactly these files: no commit
    created: bool  # the repo was created
    removed: list[str] = field(default_factory=list)  # files of another model deleted (force)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _LocalFile:
    path: Path
    size: int
    sha256: str  # the oid of an LFS file on the Hub
    git_oid: str  # git blob id: the oid of a regular file on the Hub


@dataclass(frozen=True)
class _Plan:
    changed: list[str]  # new or different: sent in the commit
    stale: list[str]  # on the Hub, not in the folder: deleted (force only)


def publish_hf(folder: Path, repo: str, *, private: bool = False, force: bool = False, token: str | None = None, progress: Callable[[str], None] | None = None) -> HubPublishResult:
    """Make the Hub model repo ``repo`` (USER/REPO) hold the files of ``folder`` (subfolders
    included), in one commit. ``private`` applies when the repo is created; ``force``
    replaces a repo that holds other files; ``token`` defaults to the standard login."""
    from huggingface_hub import HfApi

    say = progress or (lambda _message: None)
    repo = check_repo_id(repo)
    secret = _login_token(token)
    say(f"hashing the files of {folder}")
    local = _local_files(Path(folder))
    api = HfApi(token=token)
    url = f"{api.endpoint}/{repo}"
    try:
        remote = _remote_files(api, repo)
        plan = _plan(local, remote, repo=repo, force=force)
        if remote is not None and not plan.changed and not plan.stale:
            say(f"{repo} already holds these files: nothing to upload")
            return HubPublishResult(repo=repo, url=url, commit=None, uploaded=[], unchanged=True, created=False)
        if remote is None:
            say(f"creating {'private' if private else 'public'} repo {repo}")
            api.create_repo(repo, private=private, exist_ok=True)
        say(f"uploading {len(plan.changed)} files ({_megabytes(local, plan.changed)}) to {repo}")
        info = api.create_commit(repo, operations=_operations(local, plan), commit_message=f"Upload {Path(folder).name} with ollama-slim share")
    except SlimError:
        raise
    except Exception as err:
        raise _mapped(err, repo, publishing=True, secret=secret) from None
    return HubPublishResult(repo=repo, url=url, commit=info.oid, uploaded=plan.changed, unchanged=False, created=remote is None, removed=plan.stale)


def _login_token(token: str | None) -> str:
    from huggingface_hub import get_token

    secret = token or get_token()
    if not secret:
        raise HubError("not logged in to Hugging Face", hint=LOGIN_HINT)
    return secret


def _local_files(folder: Path) -> dict[str, _LocalFile]:
    """Every file under ``folder`` by its path in the repo (dot-folders and temp dot-files stay home)."""
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a directory", hint="pass the share folder that `ollama-slim share` writes")
    files = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        hidden = any(p.startswith(".") for p in rel.parts[:-1]) or (rel.name.startswith(".") and rel.name not in _KEPT_DOTFILES)
        if path.is_file() and not hidden:
            files[rel.as_posix()] = _hash_file(path)
    if not files:
        raise HubError(f"{folder} holds no files to publish", hint="write the share folder first (ollama-slim share)")
    return files


def _hash_file(path: Path) -> _LocalFile:
    """sha256 and git blob id (sha1 of ``blob <size>\\0`` + content) in one read."""
    size = path.stat().st_size
    sha, git = hashlib.sha256(), hashlib.sha1(f"blob {size}\0".encode())
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
            git.update(chunk)
    return _LocalFile(path=path, size=size, sha256=sha.hexdigest(), git_oid=git.hexdigest())


def _remote_files(api: Any, repo: str) -> dict[str, str] | None:
    """``{path: oid}`` of the repo's main branch (sha256 for LFS files, git blob id otherwise); None when it does not exist."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.hf_api import RepoFile

    try:
        entries = list(api.list_repo_tree(repo, recursive=True))
    except GatedRepoError:
        raise
    except RepositoryNotFoundError:
        return None
    except RevisionNotFoundError:
        return {}
    return {e.path: e.lfs.sha256 if e.lfs else e.blob_id for e in entries if isinstance(e, RepoFile)}


def _plan(local: dict[str, _LocalFile], remote: dict[str, str] | None, *, repo: str, force: bool) -> _Plan:
    """What to send; a repo holding other files (another model) is an error without ``force``."""
    remote = remote or {}
    differ = [p for p in local if p in remote and remote[p] not in (local[p].sha256, local[p].git_oid)]
    stale = sorted(p for p in remote if p not in local and p not in _HUB_OWN)
    others = differ + stale
    if others and not force:
        names = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise HubError(f"{repo} already holds another model ({names} differ from the share folder)", hint="pass --force to replace it, or publish to another repo")
    return _Plan(changed=[p for p in local if p not in remote or p in differ], stale=stale)


def _operations(local: dict[str, _LocalFile], plan: _Plan) -> list[Any]:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    ops: list[Any] = []
    for path in plan.changed:
        op = CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(local[path].path))
        op.upload_info.sha256 = bytes.fromhex(local[path].sha256)  # hashed once already
        ops.append(op)
    return ops + [CommitOperationDelete(path_in_repo=path) for path in plan.stale]


def _megabytes(local: dict[str, _LocalFile], names: list[str]) -> str:
    return f"{sum(local[n].size for n in names) / 1e6:.1f} MB"


# --------------------------------------------------------------------------- errors


def _mapped(err: BaseException, what: str, *, publishing: bool, secret: str | None = None) -> BaseException:
    """A one-line SlimError for a huggingface_hub or network failure (the error itself if unknown)."""
    from huggingface_hub import errors as hf

    cls = HubError if publishing else SourceError
    root = _root(err)
    status = getattr(getattr(root, "response", None), "status_code", None)
    if isinstance(root, hf.OfflineModeIsEnabled):
        return cls(f"HF_HUB_OFFLINE is set, so {what} cannot be reached", hint="unset HF_HUB_OFFLINE")
    if isinstance(root, hf.GatedRepoError):
        return cls(f"{what} is gated", hint="accept its licence on huggingface.co and set HF_TOKEN (or `hf auth login`)")
    if isinstance(root, hf.RepositoryNotFoundError):
        if publishing:
            return cls(f"cannot write to {what}: it does not exist or this login cannot see it", hint=LOGIN_HINT)
        return cls(f"Hugging Face repo {what} does not exist (or is private)", hint="check the repo id; for a private repo set HF_TOKEN")
    if isinstance(root, hf.LocalEntryNotFoundError):
        return cls(f"{what} is not in the Hugging Face cache and the network is off", hint="unset HF_HUB_OFFLINE, or `ollama pull` the model first")
    if status in (401, 403):
        return cls(f"the Hugging Face Hub refused access to {what} ({status})", hint=LOGIN_HINT + (" with a token that can write there" if status == 403 else ""))
    if isinstance(root, hf.HfHubHTTPError):
        return cls(f"the Hugging Face Hub answered {status} for {what}{_detail(root, secret)}", hint="retry later; OLLAMA_SLIM_DEBUG=1 shows the details")
    if _is_network(root):
        return cls(f"the Hugging Face Hub is not reachable for {what} ({type(root).__name__})", hint="check the network (and HF_ENDPOINT), then rerun")
    if isinstance(root, ValueError) and str(root).startswith("Invalid metadata in README.md"):
        return cls("README.md has invalid model-card metadata", hint="fix the YAML header of README.md")
    return err


def _root(err: BaseException) -> BaseException:
    """The error under huggingface_hub's 'Error while uploading ...' wrapper."""
    while isinstance(err, RuntimeError) and err.__cause__ is not None:
        err = err.__cause__
    return err


def _is_network(err: BaseException) -> bool:
    return isinstance(err, (ConnectionError, TimeoutError)) or type(err).__module__.split(".")[0] in _NETWORK_MODULES


def _detail(err: BaseException, secret: str | None) -> str:
    """The server's own message, one line, with the token blanked should it ever echo it."""
    text = (getattr(err, "server_message", None) or "").strip().splitlines()
    line = text[0][:200] if text else ""
    for token in {secret, os.environ.get("HF_TOKEN")} - {None, ""}:
        line = line.replace(token, "***")
    return f": {line}" if line else ""
