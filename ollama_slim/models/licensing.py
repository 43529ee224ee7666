"""The original model's licence, and what a derivative has to carry of it (design §7).

The licence of a slim model is its original's. It is found, most faithful first, in the
Ollama store's licence layer of the original tag, in the Hugging Face twin's card
(``license:``) or ``LICENSE`` file, and in the tag table (``_data/tags.json``); the
licence table (``_data/licenses.json``) adds what each licence requires of a
derivative: the Llama licences a name prefix, a "Built with Llama" line and an
attribution notice. ``export`` writes it into every GGUF, ``share`` into the card,
``LICENSE`` and the Modelfile.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ollama_slim.tables import table
from ollama_slim.tables import text as data_text
from ollama_slim import paths
from ollama_slim.errors import SlimError, UsageError

LICENSE_MEDIA_TYPE = "application/vnd.ollama.image.license"
_LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE")
SHARE_TAGS = ("gguf", "ollama", "recommendation", "layer-pruning", "ollama-slim")


@dataclass(frozen=True)
class License:
    """A licence as a derivative carries it."""

    id: str  # the licence table's id, or what the user gave with --license
    name: str
    hf_id: str  # the Hub card's `license` (``other`` when the Hub has no id for it)
    link: str | None = None
    text: str | None = None  # the full text, when one was found
    notice: str | None = None  # attribution a derivative must keep
    name_prefix: str | None = None  # a derivative's name must begin with this
    attribution: str | None = None  # "Built with Llama"
    source: str = "tag table"

    def file_text(self) -> str:
        """What ``LICENSE`` holds: the full text, else a notice that names and links it."""
        if self.text:
            return self.text if self.text.endswith("\n") else self.text + "\n"
        lines = [f"This model is a derivative of a model licensed under the {self.name}."]
        if self.link:
            lines.append(f"The full licence text: {self.link}")
        lines += [line for line in (self.notice, self.attribution) if line]
        return "\n\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["text"] = None if self.text is None else f"{len(self.text)} characters"
        return d


def _table() -> dict[str, dict[str, Any]]:
    return table("licenses")


def known_licenses() -> list[str]:
    return list(_table())


def license_by_id(license_id: str, *, source: str, text: str | None = None) -> License:
    """The licence table's row for ``license_id``; an id it does not know is taken as given."""
    row = _table().get(license_id.lower())
    if row is None:
        return License(id=license_id, name=license_id, hf_id=license_id.lower(), text=text, source=source)
    if text is None and row.get("text"):
        text = data_text(row["text"])
    return License(id=license_id.lower(), name=row["name"], hf_id=row["hf_id"], link=row.get("link"), text=text, notice=row.get("notice"),
                   name_prefix=row.get("name_prefix"), attribution=row.get("attribution"), source=source)


def detect(text: str) -> str | None:
    """The id of the licence a LICENSE text is, by the table's phrases; None if unknown."""
    folded = " ".join(text.split()).lower()
    for license_id, row in _table().items():
        phrases = row.get("detect") or []
        if phrases and all(p.lower() in folded for p in phrases):
            return license_id
    return None


def original_license(source: dict[str, Any], *, override: str | None = None) -> License | None:
    """The licence of the original model described by ``source`` (``resolve.json`` or the
    ``source`` record of ``slim.json``), or None when nothing says what it is.

    ``override`` (``--license``) names the licence; its text is still taken from the
    original's files when they hold that licence.
    """
    found = _found_texts(source)
    card_id = _card_license(source)
    text, text_source = found[0] if found else (None, None)
    table_id = _tag_license(source.get("tag"))
    license_id = override or card_id or (detect(text) if text else None) or table_id
    if license_id is None:
        return None
    where = "--license" if override else ("the HF card" if card_id else (text_source if text and detect(text) else "tag table"))
    if text is not None and detect(text) not in (None, _table_key(license_id)):
        text = None  # the file holds another licence than the one given: do not mix them
    return license_by_id(license_id, source=where, text=text)


def _table_key(license_id: str) -> str | None:
    return license_id.lower() if license_id.lower() in _table() else None


def require_license(source: dict[str, Any], *, override: str | None = None) -> License:
    """:func:`original_license`, or one line asking for ``--license``."""
    found = original_license(source, override=override)
    if found is None:
        origin = source.get("tag") or source.get("hf_repo") or source.get("origin") or source.get("ref") or "the original model"
        raise UsageError(f"the licence of {origin} could not be determined (no Ollama licence layer, HF card or LICENSE file, not in the tag table)",
                         hint="pass --license ID (e.g. apache-2.0, mit, llama3.2), the licence of the original model")
    return found


# --- where licences are found -----------------------------------------------------------


def _tag_license(tag: str | None) -> str | None:
    from ollama_slim.models.tags import lookup, parse_name

    if not tag:
        return None
    try:
        entry = lookup(parse_name(tag))
    except SlimError:
        return None
    return entry.license if entry else None


def _found_texts(source: dict[str, Any]) -> list[tuple[str, str]]:
    """``(text, where)`` of each licence text found for the original, most faithful first."""
    found = []
    store = _store_license(source.get("tag"))
    if store:
        found.append((store, "the Ollama store's licence layer"))
    for directory in _model_dirs(source):
        for name in _LICENSE_FILES:
            file = directory / name
            if file.is_file():
                found.append((file.read_text(encoding="utf-8", errors="replace"), f"{file}"))
                break
    for file in _cached_hub_files(source.get("hf_repo"), _LICENSE_FILES):
        found.append((file.read_text(encoding="utf-8", errors="replace"), f"{file}"))
    return found


def _store_license(tag: str | None) -> str | None:
    """The text of the licence layers of ``tag`` in the user's Ollama store, if pulled."""
    from ollama_slim.models.tags import parse_name

    if not tag:
        return None
    try:
        name = parse_name(tag)
    except SlimError:
        return None
    root = paths.ollama_models_dir()
    manifest = root / "manifests" / Path(*name.manifest_parts())
    try:
        layers = json.loads(manifest.read_text(encoding="utf-8"))["layers"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    texts = []
    for layer in layers:
        blob = root / "blobs" / str(layer.get("digest", "")).replace(":", "-")
        if layer.get("mediaType") == LICENSE_MEDIA_TYPE and blob.is_file():
            texts.append(blob.read_text(encoding="utf-8", errors="replace"))
    return "\n\n".join(texts) or None


def _model_dirs(source: dict[str, Any]) -> list[Path]:
    """Local directories of the original's files (an ``--hf`` directory, a resolved snapshot)."""
    dirs = []
    for key in ("model_dir", "origin"):
        value = source.get(key)
        if key == "origin" and source.get("source") != "hf-dir":
            continue
        if value and Path(value).is_dir():
            dirs.append(Path(value))
    return dirs


def _cached_hub_files(repo: str | None, names: tuple[str, ...]) -> list[Path]:
    """Files of ``repo`` already in the Hugging Face cache (never downloaded here)."""
    if not repo:
        return []
    from huggingface_hub import try_to_load_from_cache

    out = []
    for name in names:
        try:
            hit = try_to_load_from_cache(repo, name)
        except Exception:  # noqa: BLE001 - a malformed repo id or cache is just a miss
            hit = None
        if isinstance(hit, str):
            out.append(Path(hit))
    return out


def _card_license(source: dict[str, Any]) -> str | None:
    """``license:`` of the original's model card (README.md metadata), when one is at hand."""
    from huggingface_hub.repocard import metadata_load

    cards = [d / "README.md" for d in _model_dirs(source)] + _cached_hub_files(source.get("hf_repo"), ("README.md",))
    for card in cards:
        if not card.is_file():
            continue
        try:
            meta = metadata_load(card) or {}
        except Exception:  # noqa: BLE001 - a card with broken YAML says nothing
            continue
        value = meta.get("license")
        if value == "other" and meta.get("license_name"):
            value = meta["license_name"]
        if isinstance(value, str) and value:
            return value
    return None


# --- base model and tags ----------------------------------------------------------------


@dataclass(frozen=True)
class BaseModel:
    """The Hugging Face twin a slim model derives from."""

    repo: str  # "HuggingFaceTB/SmolLM2-135M-Instruct"

    @property
    def organization(self) -> str:
        return self.repo.split("/", 1)[0]

    @property
    def name(self) -> str:
        """``SmolLM2 135M Instruct``: GGUF's ``general.base_model.0.name`` convention."""
        return self.repo.split("/", 1)[-1].replace("-", " ")

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo}"


def base_model_of(source: dict[str, Any]) -> BaseModel | None:
    """The HF twin recorded for the original (tag table or ``--hf`` repo id), if any."""
    repo = source.get("hf_repo")
    if not repo and source.get("source") == "hf-hub" and str(source.get("origin", "")).count("/") == 1:
        repo = source["origin"]
    return BaseModel(repo=repo) if repo else None


def share_tags(arch: str | None) -> list[str]:
    """The tags a shared slim model carries (GGUF ``general.tags`` and the card)."""
    return list(SHARE_TAGS) + ([arch] if arch and arch not in SHARE_TAGS else [])
