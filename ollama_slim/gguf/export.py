"""The ``export`` stage: a Hugging Face directory -> one GGUF that llama.cpp and Ollama run.

Design §7. Tensors are renamed (and split, transposed or norm-shifted) with the family
table's ``gguf.tensors``, Q/K rows are permuted where llama.cpp's rope layout differs from transformers' (``llama``),
metadata comes from ``_data/gguf_export.json``, the tokenizer from the source GGUF
or ``tokenizer.json``. f32/f16/bf16/q8_0 are written directly; K-quants are made
from an f32 GGUF by llama.cpp's own quantizer. Every export is accepted only after
:func:`check_gguf` has compared llama.cpp's logits with transformers'.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ollama_slim import __version__, paths
from ollama_slim.slimming.build import read_provenance
from ollama_slim.errors import ExportError, UsageError
from ollama_slim.models.families import Family, TensorMap, check_config, config_value, family
from ollama_slim.gguf.check import CheckResult, check_gguf, check_thresholds
from ollama_slim.gguf.tokenizer import GGUFTokenizer, export_tables, from_source_gguf, from_tokenizer_json
from ollama_slim.models.licensing import BaseModel, License, base_model_of, original_license, share_tags
from ollama_slim.quiet import native_output

__all__ = ["CheckResult", "ExportConfig", "ExportResult", "check_gguf", "export_gguf", "outtypes"]

PROVENANCE_PREFIX = "ollama_slim."


def outtypes() -> list[str]:
    """The ``--outtype`` names, direct ones first."""
    return list(export_tables()["outtypes"])


@dataclass(frozen=True)
class ExportConfig:
    """What to export: a HF directory (usually a ``build`` output) and how."""

    model_dir: Path
    outtype: str = "f16"
    out: Path | None = None
    force: bool = False
    check: bool = True
    prompts: tuple[str, ...] | None = None
    tokenizer_gguf: Path | None = None  # copy tokenizer.* from this GGUF (default: slim.json's source GGUF)
    origin: dict[str, Any] | None = None  # the original's source record (default: slim.json's); licence and base model come from it
    license: str | None = None  # the licence id to record (default: the original's, when it can be found)
    name: str | None = None  # general.name (default: "<original> slim (K of N layers)")


@dataclass(frozen=True)
class ExportResult:
    """A GGUF on disk and how it was checked."""

    path: Path
    outtype: str
    size_bytes: int
    n_tensors: int
    tokenizer: str
    pre_tokenizer: str
    check: CheckResult | None
    seconds: float

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        d["check"] = self.check.to_json() if self.check else None
        return d


# --- the stage ------------------------------------------------------------------------


def default_out(model_dir: Path, outtype: str) -> Path:
    """``runs/s10`` + ``q8_0`` -> ``runs/s10-q8_0.gguf`` (beside the directory)."""
    model_dir = Path(model_dir).resolve()
    return model_dir.with_name(f"{model_dir.name}-{outtype}.gguf")


def export_gguf(config: ExportConfig) -> ExportResult:
    """Write ``config.model_dir`` as a GGUF of ``config.outtype``, checked by llama.cpp.

    Nothing half-written survives: the file is built and checked under a temp name,
    then renamed. An existing output is kept unless ``force``.
    """
    start = time.perf_counter()
    spec = _outtype_spec(config.outtype)
    model_dir = Path(config.model_dir)
    hf_config = _read_config(model_dir)
    out = Path(config.out) if config.out else default_out(model_dir, config.outtype)
    if out.exists() and not config.force:
        raise UsageError(f"{out} already exists", hint="pass --force to replace it, or choose another --out")
    sharing = sharing_metadata(model_dir, origin=config.origin, license=config.license, name=config.name)
    with paths.atomic_path(out, suffix=".gguf") as tmp:
        if "llama_ftype" in spec:  # llama.cpp quantizes an f32 GGUF written beside the target
            with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as work:
                base = Path(work) / "f32.gguf"
                tok, n_tensors = write_gguf(model_dir=model_dir, hf_config=hf_config, outtype="f32", path=base, tokenizer_gguf=config.tokenizer_gguf, sharing=sharing)
                quantize_gguf(src=base, dst=tmp, llama_ftype=spec["llama_ftype"])
        else:
            tok, n_tensors = write_gguf(model_dir=model_dir, hf_config=hf_config, outtype=config.outtype, path=tmp, tokenizer_gguf=config.tokenizer_gguf, sharing=sharing)
        check = None
        if config.check:
            check = check_gguf(tmp, model_dir, config.prompts, thresholds=check_thresholds(config.outtype))
            if not check.passed:
                raise ExportError(f"llama.cpp disagrees with transformers on the {config.outtype} export: {check.reason}", hint="the GGUF was not written; try a less lossy --outtype, or report the model")
        size = tmp.stat().st_size
    return ExportResult(path=out, outtype=config.outtype, size_bytes=size, n_tensors=n_tensors, tokenizer=tok.origin, pre_tokenizer=tok.pre, check=check, seconds=time.perf_counter() - start)


def _outtype_spec(outtype: str) -> dict[str, Any]:
    table = export_tables()["outtypes"]
    if outtype not in table:
        raise UsageError(f"unknown outtype {outtype!r}", hint=f"choose one of: {', '.join(table)}")
    return table[outtype]


def _read_config(model_dir: Path) -> dict[str, Any]:
    """``config.json`` of ``model_dir``, with ``head_dim`` filled in; clear errors otherwise."""
    if not model_dir.is_dir():
        raise UsageError(f"{model_dir} is not a directory", hint="pass the directory `ollama-slim build` wrote")
    file = model_dir / "config.json"
    if not file.is_file() or not list(model_dir.glob("*.safetensors")):
        raise ExportError(f"{model_dir} is not a Hugging Face model directory (config.json and *.safetensors needed)", hint="pass the directory `ollama-slim build` wrote")
    cfg = json.loads(file.read_text(encoding="utf-8"))
    check_config(cfg)  # unsupported architectures and configs llama.cpp cannot run fail here, clearly
    if not cfg.get("head_dim"):
        cfg["head_dim"] = cfg["hidden_size"] // cfg["num_attention_heads"]
    return cfg


# --- writing --------------------------------------------------------------------------


def write_gguf(*, model_dir: Path, hf_config: dict[str, Any], outtype: str, path: Path, tokenizer_gguf: Path | None = None, sharing: Sharing | None = None) -> tuple[GGUFTokenizer, int]:
    """Write metadata, tokenizer and tensors of ``model_dir`` to ``path`` (one GGUF).

    ``tokenizer_gguf``: a GGUF whose ``tokenizer.*`` fields to copy (default: the source
    GGUF named in ``slim.json``, if any; else they are derived from ``tokenizer.json``).
    ``sharing``: licence, base model, tags and data set (default: from ``slim.json``).
    """
    import gguf

    fam = family(hf_config["model_type"])
    spec = _outtype_spec(outtype)
    if spec.get("experts_only") and fam.mlp != "experts":
        raise UsageError(f"--outtype {outtype} is for mixture-of-experts models; {fam.name} has none", hint="use q8_0, f16 or a k-quant")
    tok = _tokenizer(model_dir, hf_config, tokenizer_gguf=tokenizer_gguf)
    writer = gguf.GGUFWriter(str(path), fam.gguf_arch)
    sharing = sharing if sharing is not None else sharing_metadata(model_dir)
    _add_general(writer, model_dir=model_dir, hf_config=hf_config, spec=spec, name=sharing.name)
    _add_sharing(writer, sharing)
    _add_hparams(writer, fam=fam, hf_config=hf_config)
    _add_tokenizer(writer, tok)
    plan = _plan_tensors(model_dir=model_dir, fam=fam, hf_config=hf_config, spec=spec)
    for item in plan:  # tensor infos first (shapes and sizes only) ...
        writer.add_tensor_info(item.gguf_name, item.info_shape, item.info_dtype, item.nbytes, raw_dtype=item.raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for item in plan:  # ... then the data, one tensor in memory at a time
        writer.write_tensor_data(_encode(_load(item, fam=fam, hf_config=hf_config), qtype=item.qtype))
    writer.close()
    return tok, len(plan)


def _add_general(writer: Any, *, model_dir: Path, hf_config: dict[str, Any], spec: dict[str, Any], name: str | None = None) -> None:
    """``general.*`` and the provenance under ``ollama_slim.*``."""
    import gguf

    prov = read_provenance(model_dir)
    source = prov.get("source") or {}
    base = source.get("tag") or source.get("hf_repo") or source.get("ref") or model_dir.name
    kept = prov.get("kept")
    writer.add_name(name or (f"{base} slim ({len(kept)} of {prov.get('num_layers')} layers)" if kept else str(base)))
    writer.add_file_type(getattr(gguf.LlamaFileType, spec.get("file_type", "ALL_F32")))
    if spec.get("tensor_type") not in (None, "F32", "F16", "BF16"):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_string(PROVENANCE_PREFIX + "version", __version__)
    writer.add_string(PROVENANCE_PREFIX + "source", str(source.get("tag") or source.get("origin") or model_dir))
    if kept:
        writer.add_array(PROVENANCE_PREFIX + "kept_layers", [int(i) for i in kept])
        writer.add_uint32(PROVENANCE_PREFIX + "original_layers", int(prov.get("num_layers") or 0))
    writer.add_string(PROVENANCE_PREFIX + "bridge", str((prov.get("bridge") or {}).get("kind", "none")))
    writer.add_string(PROVENANCE_PREFIX + "data", json.dumps(prov.get("data")))
    writer.add_string(PROVENANCE_PREFIX + "provenance", json.dumps(prov, sort_keys=True, default=str))


@dataclass(frozen=True)
class Sharing:
    """What a GGUF says about where it comes from, for people it is shared with."""

    license: License | None
    base_model: BaseModel | None
    tags: tuple[str, ...]
    datasets: tuple[str, ...]
    name: str | None = None  # general.name, when the sharer chose one


def sharing_metadata(model_dir: Path, *, origin: dict[str, Any] | None = None, license: str | None = None, name: str | None = None) -> Sharing:
    """Licence, base model, tags and data set of ``model_dir`` (from ``origin`` or ``slim.json``)."""
    prov = read_provenance(model_dir)
    source = origin if origin is not None else (prov.get("source") or {})
    data = prov.get("data")
    return Sharing(license=original_license(source, override=license), base_model=base_model_of(source),
                   tags=tuple(share_tags(source.get("arch"))), datasets=(Path(str(data)).name,) if data else (), name=name)


def _add_sharing(writer: Any, sharing: Sharing) -> None:
    """``general.license*``, ``general.base_model.*``, ``general.tags`` and ``general.dataset.*``."""
    lic = sharing.license
    if lic is not None:
        writer.add_license(lic.hf_id if lic.hf_id != "other" else lic.id)
        writer.add_license_name(lic.name)
        if lic.link:
            writer.add_license_link(lic.link)
    if sharing.base_model is not None:
        writer.add_base_model_count(1)
        writer.add_base_model_name(0, sharing.base_model.name)
        writer.add_base_model_organization(0, sharing.base_model.organization)
        writer.add_base_model_repo_url(0, sharing.base_model.url)
    writer.add_tags(list(sharing.tags))
    if sharing.datasets:
        writer.add_dataset_count(len(sharing.datasets))
        for i, name in enumerate(sharing.datasets):
            writer.add_dataset_name(i, name)


_config_value = config_value


def _metadata_rows(fam: Family) -> list[dict[str, Any]]:
    """The common metadata rows, each replaced by the family's row of the same key, then the family's new rows."""
    own = {row["key"]: row for row in fam.gguf.metadata}
    rows = [own.pop(row["key"], row) for row in export_tables()["metadata"]]
    return rows + list(own.values())


def _add_hparams(writer: Any, *, fam: Family, hf_config: dict[str, Any]) -> None:
    """``<arch>.*`` hyper-parameters from the metadata tables, rope scaling and the layer-type pattern."""
    arch = fam.gguf_arch
    for row in _metadata_rows(fam):
        value = next((v for v in (_config_value(hf_config, p) for p in row["from"]) if v is not None), None)
        if value is None:
            if row.get("optional"):
                continue
            raise ExportError(f"config.json has none of {', '.join(row['from'])} (needed for {arch}.{row['key']})", hint="the model config is incomplete")
        if row["type"] == "uint32":
            writer.add_uint32(f"{arch}.{row['key']}", int(value))
        else:
            writer.add_float32(f"{arch}.{row['key']}", float(value))
    rope = _rope(hf_config, fam)
    params = _config_value(hf_config, fam.gguf.rope_parameters) or {}
    if rope.get("scaling_type"):
        writer.add_string(f"{arch}.rope.scaling.type", rope["scaling_type"])
        writer.add_float32(f"{arch}.rope.scaling.factor", float(params.get("factor") or 1.0))
    for key, name in rope.get("keys", {}).items():
        if params.get(name) is not None:
            writer.add_uint32(f"{arch}.{key}", int(params[name])) if key.endswith("_length") else writer.add_float32(f"{arch}.{key}", float(params[name]))
    _add_layer_pattern(writer, fam=fam, hf_config=hf_config)


def _add_layer_pattern(writer: Any, *, fam: Family, hf_config: dict[str, Any]) -> None:
    """The window and the per-layer ``sliding_window_pattern`` array, which llama.cpp reads instead of its index rule.

    With no sliding layer, llama.cpp aborts on a windowed GGUF: the window is then left out
    (every layer is plain causal), or refused where the architecture requires one.
    """
    pattern = fam.layer_pattern
    if pattern is None:
        return
    types = pattern.types_of(hf_config)
    sliding = [t == pattern.sliding for t in types]
    if not any(sliding):
        if pattern.require_sliding:
            raise ExportError(f"{fam.name}: no kept layer uses sliding-window attention; llama.cpp cannot run such a {fam.gguf_arch} GGUF", hint="keep at least one sliding-window layer")
        return
    writer.add_uint32(f"{fam.gguf_arch}.attention.sliding_window", int(hf_config[pattern.window]))
    writer.add_array(f"{fam.gguf_arch}.attention.sliding_window_pattern", sliding)


def _rope(hf_config: dict[str, Any], fam: Family | None = None) -> dict[str, Any]:
    """The rope-type row of the table for this config; a clear error for unsupported kinds."""
    at = fam.gguf.rope_parameters if fam is not None else "rope_parameters"
    params = _config_value(hf_config, at) or hf_config.get("rope_scaling") or {}
    kind = params.get("rope_type") or params.get("type") or "default"
    table = export_tables()["rope_types"]
    if kind not in table or kind.startswith("_"):
        raise ExportError(f"rope type {kind!r} cannot be exported yet", hint=f"supported: {', '.join(k for k in table if not k.startswith('_'))}")
    return table[kind]


def _tokenizer(model_dir: Path, hf_config: dict[str, Any], *, tokenizer_gguf: Path | None) -> GGUFTokenizer:
    """Tokenizer fields: copied from the given or source GGUF when there is one, else derived."""
    vocab = int(hf_config["vocab_size"])
    if tokenizer_gguf is not None:
        copied = from_source_gguf(Path(tokenizer_gguf), vocab_size=vocab)
        if copied is None:
            raise ExportError(f"{tokenizer_gguf} has no tokenizer for a {vocab}-token vocabulary", hint="pass the GGUF the model came from, or leave the tokenizer to tokenizer.json")
        return _with_template(copied, model_dir)
    source = (read_provenance(model_dir).get("source") or {}).get("gguf_path")
    copied = from_source_gguf(Path(source), vocab_size=vocab) if source and Path(source).is_file() else None
    if copied is not None:
        return _with_template(copied, model_dir)
    return _with_template(from_tokenizer_json(model_dir, vocab_size=vocab), model_dir)


def _with_template(tok: GGUFTokenizer, model_dir: Path) -> GGUFTokenizer:
    """Attach the chat template saved with the model (``chat_template.jinja`` or tokenizer_config)."""
    jinja = model_dir / "chat_template.jinja"
    template = jinja.read_text(encoding="utf-8") if jinja.is_file() else None
    config_file = model_dir / "tokenizer_config.json"
    if template is None and config_file.is_file():
        template = json.loads(config_file.read_text(encoding="utf-8")).get("chat_template")
    if isinstance(template, list):  # several named templates: llama.cpp takes the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return GGUFTokenizer(fields=tok.fields, origin=tok.origin, pre=tok.pre, n_tokens=tok.n_tokens, chat_template=template, notes=tok.notes)


def _add_tokenizer(writer: Any, tok: GGUFTokenizer) -> None:
    from gguf import GGUFValueType

    for key, (value, vtype, sub) in tok.fields.items():
        writer.add_key_value(key, value, GGUFValueType[vtype], sub_type=GGUFValueType[sub] if sub else None)
    if tok.chat_template:
        writer.add_chat_template(tok.chat_template)


# --- tensors --------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _Planned:
    """One GGUF tensor: where it comes from and how it is stored (``qtype``: a GGML type name).

    ``ops`` (the family table's transforms) and ``part`` (which output of a split) turn the
    Hugging Face tensor into this one; ``shape`` is the shape after them.
    """

    gguf_name: str
    hf_name: str | None  # None: computed (rope_freqs)
    file: Path | None
    shape: tuple[int, ...]  # the stored shape in numpy order, e.g. (out_features, in_features)
    qtype: str
    ops: tuple[str, ...] = ()
    part: int = 0

    @property
    def raw_dtype(self) -> Any:
        import gguf

        return None if self.qtype in ("F32", "F16") else gguf.GGMLQuantizationType[self.qtype]

    @property
    def info_dtype(self) -> Any:
        import numpy as np

        return {"F32": np.float32, "F16": np.float16}.get(self.qtype, np.uint8)

    @property
    def info_shape(self) -> tuple[int, ...]:
        import gguf

        return self.shape if self.raw_dtype is None else tuple(gguf.quant_shape_to_byte_shape(self.shape, self.raw_dtype))

    @property
    def nbytes(self) -> int:
        import numpy as np

        return int(np.prod(self.info_shape)) * np.dtype(self.info_dtype).itemsize


def _plan_tensors(*, model_dir: Path, fam: Family, hf_config: dict[str, Any], spec: dict[str, Any]) -> list[_Planned]:
    """Every GGUF tensor in file order, from the safetensors headers (no weights read)."""
    from safetensors import safe_open

    tied = bool(hf_config.get("tie_word_embeddings", False))
    plan = []
    rope = _rope(hf_config, fam)
    if "freqs_tensor" in rope:
        shape = (int(hf_config["head_dim"]) // 2,)
        plan.append(_Planned(gguf_name=rope["freqs_tensor"], hf_name=None, file=None, shape=shape, qtype="F32"))
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for hf_name in f.keys():
                if tied and hf_name == f"{fam.lm_head}.weight":
                    continue  # llama.cpp reuses token_embd when output.weight is absent
                shape = tuple(f.get_slice(hf_name).get_shape())
                mapping, template, layer = _gguf_map(fam, hf_name)
                out_shape = _shape_after(shape, mapping.ops)
                for part, target in enumerate(mapping.to):
                    gguf_name = target.format(i=layer) if layer is not None else target
                    qtype = _tensor_type(out_shape, spec=spec, kind=_kind(fam, target))
                    plan.append(_Planned(gguf_name=gguf_name, hf_name=hf_name, file=file, shape=out_shape, qtype=qtype, ops=mapping.ops, part=part))
    return plan


def _kind(fam: Family, template: str) -> str:
    """``"float"`` (never quantized: biases, even 2-D expert ones, and the table's list), ``"expert"`` (a 3-D expert tensor) or ``"tensor"``."""
    if template in fam.gguf.keep_float or template.endswith(".bias"):
        return "float"
    return "expert" if template in fam.gguf.expert_tensors else "tensor"


def _shape_after(shape: tuple[int, ...], ops: tuple[str, ...]) -> tuple[int, ...]:
    out = list(shape)
    for op in ops:
        if op == "split_even_odd_last":
            out[-1] //= 2
        elif op == "swap_last2":
            out[-1], out[-2] = out[-2], out[-1]
    return tuple(out)


def _apply_ops(array: Any, ops: tuple[str, ...], part: int) -> Any:
    """The family table's transforms: ``split_even_odd_last`` (part 0: even columns, 1: odd), ``swap_last2``."""
    for op in ops:
        if op == "split_even_odd_last":
            array = array[..., part::2]
        elif op == "swap_last2":
            array = array.swapaxes(-1, -2)
    return array


def _tensor_type(shape: tuple[int, ...], *, spec: dict[str, Any], kind: str = "tensor") -> str:
    """The outtype's type for matrices whose rows fit its blocks; f32 for vectors and float-only tensors, as llama.cpp wants."""
    import gguf

    qtype = spec.get("expert_type", spec.get("tensor_type", "F32")) if kind == "expert" else spec.get("tensor_type", "F32")
    if len(shape) < 2 or qtype == "F32" or kind == "float":
        return "F32"
    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]][0]
    return qtype if shape[-1] % block == 0 else spec.get("fallback", "F16")


def _load(item: _Planned, *, fam: Family, hf_config: dict[str, Any]) -> Any:
    """The float32 array of ``item`` in llama.cpp's layout (transformed, Q/K rows permuted, norms shifted where needed)."""
    import numpy as np

    from safetensors import safe_open

    if item.hf_name is None:
        return _rope_freqs(hf_config)
    with safe_open(str(item.file), framework="pt") as f:
        array = f.get_tensor(item.hf_name).float().numpy()
    array = np.ascontiguousarray(_apply_ops(array, item.ops, item.part))
    if fam.gguf.norm_shift and item.hf_name.endswith("norm.weight"):
        array = array + np.float32(fam.gguf.norm_shift)  # x * (1 + w): llama.cpp multiplies by the stored 1 + w
    return _permute_for_rope(array, hf_name=item.hf_name, fam=fam, hf_config=hf_config)


def _gguf_map(fam: Family, hf_name: str) -> tuple[TensorMap, str, int | None]:
    """``model.layers.3.mlp.up_proj.weight`` -> (its map ``blk.{i}.ffn_up.weight``, the template, 3)."""
    match = re.match(rf"^{re.escape(fam.layers)}\.(\d+)\.(.+)$", hf_name)
    template = f"{fam.layers}.{{i}}.{match[2]}" if match else hf_name
    mapping = fam.gguf.tensors.get(template)
    if mapping is None:
        raise ExportError(f"tensor {hf_name} has no GGUF name in the family table", hint="this model has modules the exporter does not know; add them to ollama_slim/_data/families.json")
    return mapping, template, int(match[1]) if match else None


def _permute_for_rope(array: Any, *, hf_name: str, fam: Family, hf_config: dict[str, Any]) -> Any:
    """Reorder Q/K rows from transformers' half-split rope to llama.cpp's interleaved one.

    Per head, the ``head_dim`` rows ``[x_0..x_{h/2-1}, y_0..y_{h/2-1}]`` become
    ``[x_0, y_0, x_1, y_1, ...]``. ``array``: ``(heads * head_dim, d)`` or bias ``(heads * head_dim,)``.
    """
    if not fam.gguf.permute_qk:
        return array
    q_name, k_name = fam.attn_in[0], fam.attn_in[1]
    if f".{q_name}." in hf_name:
        heads = int(hf_config["num_attention_heads"])
    elif f".{k_name}." in hf_name:
        heads = int(hf_config.get("num_key_value_heads") or hf_config["num_attention_heads"])
    else:
        return array
    rows = array.shape[0]
    rest = array.shape[1:]
    return array.reshape(heads, 2, rows // heads // 2, *rest).swapaxes(1, 2).reshape(rows, *rest).copy()


def _encode(array: Any, *, qtype: str) -> Any:
    """``array`` as stored: f32/f16 arrays, or the quantized bytes of gguf-py (bf16, q8_0)."""
    import gguf
    import numpy as np

    if qtype in ("F32", "F16"):
        return np.ascontiguousarray(array, dtype=np.float32 if qtype == "F32" else np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), gguf.GGMLQuantizationType[qtype])


def _rope_freqs(hf_config: dict[str, Any]) -> Any:
    """Llama-3 rope: per-frequency divisors of the base frequencies, shape ``(head_dim / 2,)``."""
    import numpy as np

    p = hf_config.get("rope_parameters") or hf_config.get("rope_scaling") or {}
    theta = float(_config_value(hf_config, "rope_parameters.rope_theta") or hf_config.get("rope_theta") or 10000.0)
    dim = int(hf_config["head_dim"])
    factor, low, high = float(p["factor"]), float(p["low_freq_factor"]), float(p["high_freq_factor"])
    original = float(p["original_max_position_embeddings"])
    inv_freq = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    wavelen = 2 * math.pi / inv_freq
    smooth = (original / wavelen - low) / (high - low)
    mid = 1.0 / ((1 - smooth) / factor + smooth)
    out = np.where(wavelen < original / high, 1.0, np.where(wavelen > original / low, factor, mid))
    return out.astype(np.float32)


# --- K-quants -------------------------------------------------------------------------


def quantize_gguf(*, src: Path, dst: Path, llama_ftype: str) -> None:
    """llama.cpp's quantizer (through llama-cpp-python): ``src`` (f32/f16) -> ``dst``."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, llama_ftype)
    params.nthread = os.cpu_count() or 1
    with native_output() as log:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
        said = log.read_text(errors="replace")  # the log file goes with the context
    if rc != 0:
        last = next((line for line in reversed(said.splitlines()) if line.strip()), "no message")
        raise ExportError(f"llama.cpp's quantizer failed ({llama_ftype}, code {rc}: {last.strip()})", hint="try --outtype q8_0 or f16")

