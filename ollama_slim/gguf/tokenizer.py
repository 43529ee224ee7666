"""The tokenizer part of a GGUF: ``tokenizer.ggml.*`` fields for llama.cpp.

Two ways: copy the fields of the GGUF the model came from (exact, including
llama.cpp's pre-tokenizer name), or derive them from a byte-level BPE
``tokenizer.json`` (tokens, token types, merges, special ids) with the
pre-tokenizer name looked up in the rule table of ``_data/gguf_export.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ollama_slim.tables import table
from ollama_slim.errors import ExportError

# llama.cpp token types (gguf.TokenType values)
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


@dataclass(frozen=True)
class GGUFTokenizer:
    """Everything ``tokenizer.*`` in a GGUF: ``fields`` maps key -> (value, type name, sub type name)."""

    fields: dict[str, tuple[Any, str, str | None]]
    origin: str  # "source-gguf" or "tokenizer.json"
    pre: str
    n_tokens: int
    chat_template: str | None = None
    notes: list[str] = field(default_factory=list)


def export_tables() -> dict[str, Any]:
    """``_data/gguf_export.json``."""
    return table("gguf_export", private=True)


def from_source_gguf(gguf_path: Path, *, vocab_size: int) -> GGUFTokenizer | None:
    """Copy the ``tokenizer.*`` fields of ``gguf_path``; None if its vocabulary does not fit."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(gguf_path))
    except Exception:
        return None
    fields: dict[str, tuple[Any, str, str | None]] = {}
    for key, fld in reader.fields.items():
        if not key.startswith("tokenizer.") or key == "tokenizer.chat_template":
            continue
        sub = fld.types[1].name if len(fld.types) > 1 else None
        fields[key] = (fld.contents(), fld.types[0].name, sub)
    tokens = fields.get("tokenizer.ggml.tokens", ([], "", None))[0]
    if len(tokens) != vocab_size or "tokenizer.ggml.model" not in fields:
        return None
    pre = fields.get("tokenizer.ggml.pre", ("default", "", None))[0]
    return GGUFTokenizer(fields=fields, origin=f"source-gguf {gguf_path.name}", pre=pre, n_tokens=len(tokens))


def from_tokenizer_json(model_dir: Path, *, vocab_size: int) -> GGUFTokenizer:
    """Derive gpt2-style BPE fields from ``model_dir/tokenizer.json`` and its HF tokenizer.

    The token list is padded with ``[PAD<i>]`` (type UNUSED) up to ``vocab_size``, the
    number of embedding rows, as llama.cpp requires one token per row.
    """
    from ollama_slim.models.modeling import load_tokenizer

    spec = _read_tokenizer_json(model_dir)
    tokenizer = load_tokenizer(model_dir)
    tokens, types = _token_table(spec, vocab_size=vocab_size)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    pre = pre_tokenizer_name(spec.get("pre_tokenizer"))
    fields: dict[str, tuple[Any, str, str | None]] = {
        "tokenizer.ggml.model": ("gpt2", "STRING", None),
        "tokenizer.ggml.pre": (pre, "STRING", None),
        "tokenizer.ggml.tokens": (tokens, "ARRAY", "STRING"),
        "tokenizer.ggml.token_type": (types, "ARRAY", "INT32"),
        "tokenizer.ggml.merges": (merges, "ARRAY", "STRING"),
    }
    fields.update(_special_ids(tokenizer))
    return GGUFTokenizer(fields=fields, origin="tokenizer.json", pre=pre, n_tokens=len(tokens))


def _read_tokenizer_json(model_dir: Path) -> dict[str, Any]:
    file = model_dir / "tokenizer.json"
    if not file.is_file():
        raise ExportError(f"{model_dir} has no tokenizer.json", hint="save the tokenizer with transformers (a fast tokenizer) or pass --tokenizer-gguf")
    spec = json.loads(file.read_text(encoding="utf-8"))
    if spec.get("model", {}).get("type") != "BPE" or spec["model"].get("byte_fallback"):
        raise ExportError(f"{file}: only byte-level BPE tokenizers (GPT-2 style) can be exported yet", hint="pass --tokenizer-gguf with the GGUF the model came from")
    return spec


def _token_table(spec: dict[str, Any], *, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens by id and their llama.cpp types, ``vocab_size`` long."""
    by_id: dict[int, tuple[str, int]] = {i: (tok, NORMAL) for tok, i in spec["model"]["vocab"].items()}
    for added in spec.get("added_tokens", []):
        by_id[added["id"]] = (added["content"], CONTROL if added.get("special") else USER_DEFINED)
    top = max(by_id) + 1 if by_id else 0
    if top > vocab_size:
        raise ExportError(f"the tokenizer has token id {top - 1} but the model only {vocab_size} embedding rows", hint="the tokenizer does not belong to this model")
    tokens, types = [], []
    for i in range(vocab_size):
        tok, kind = by_id.get(i, (f"[PAD{i}]", UNUSED))
        tokens.append(tok)
        types.append(kind)
    return tokens, types


def _special_ids(tokenizer: Any) -> dict[str, tuple[Any, str, str | None]]:
    """bos/eos/unk/pad ids and whether the tokenizer adds BOS, as the HF tokenizer does."""
    out: dict[str, tuple[Any, str, str | None]] = {}
    for name in ("bos", "eos", "unk", "pad"):
        value = getattr(tokenizer, f"{name}_token_id", None)
        if isinstance(value, int):
            key = "padding" if name == "pad" else ("unknown" if name == "unk" else name)
            out[f"tokenizer.ggml.{key}_token_id"] = (value, "UINT32", None)
    ids = tokenizer("a").input_ids
    adds_bos = bool(ids) and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id
    out["tokenizer.ggml.add_bos_token"] = (adds_bos, "BOOL", None)
    out["tokenizer.ggml.add_eos_token"] = (False, "BOOL", None)
    return out


def pre_tokenizer_steps(pre: dict[str, Any] | None) -> list[str]:
    """A ``tokenizer.json`` pre_tokenizer as a signature, e.g. ``["Digits(individual)", "ByteLevel(regex)"]``."""
    if not pre:
        return []
    kind = pre.get("type")
    if kind == "Sequence":
        return [step for sub in pre.get("pretokenizers", []) for step in pre_tokenizer_steps(sub)]
    if kind == "ByteLevel":
        return ["ByteLevel(regex)" if pre.get("use_regex", True) else "ByteLevel"]
    if kind == "Digits":
        return ["Digits(individual)" if pre.get("individual_digits") else "Digits"]
    if kind == "Split":
        pattern = pre.get("pattern", {})
        return [f"Split({pattern.get('Regex', pattern.get('String', ''))})"]
    return [str(kind)]


def pre_tokenizer_name(pre: dict[str, Any] | None) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` for a ``tokenizer.json`` pre_tokenizer (rule table)."""
    steps = pre_tokenizer_steps(pre)
    for rule in export_tables()["pretokenizers"]["rules"]:
        if rule["steps"] == steps:
            return rule["pre"]
    raise ExportError(
        f"no llama.cpp pre-tokenizer is known for this tokenizer (steps: {' + '.join(steps) or 'none'})",
        hint="pass --tokenizer-gguf with the GGUF the model came from, or add a rule to ollama_slim/_data/gguf_export.json",
    )
