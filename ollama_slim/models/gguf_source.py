"""GGUF -> transformers: dequantize a GGUF (Ollama blob or packaged file) to safetensors."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from ollama_slim import paths
from ollama_slim.errors import SourceError
from ollama_slim.models.families import by_gguf_arch, family, supported

log = logging.getLogger(__name__)

def gguf_architecture(path: Path) -> str:
    """``general.architecture`` of a GGUF, with a clear error for a broken file."""
    return _architecture(_reader(path))


def _reader(path: Path) -> Any:
    """A ``GGUFReader`` of ``path``, with a clear error for a broken file."""
    from gguf import GGUFReader

    try:
        return GGUFReader(str(path))
    except Exception as err:
        raise SourceError(f"{path} is not a readable GGUF file ({type(err).__name__}: {err})", hint="the file is truncated or corrupted: re-download or re-pull it") from None


def _architecture(reader: Any) -> str:
    field = reader.get_field("general.architecture")
    return field.contents() if field is not None else "?"


def gguf_to_hf(gguf_path: Path, out_dir: Path) -> Path:
    """Write a safetensors HF directory (weights, config, tokenizer, chat template) for a GGUF."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reader = _reader(gguf_path)  # read once: a 262k-token vocabulary takes seconds to parse
    arch = _architecture(reader)
    if arch not in by_gguf_arch():  # GGUF general.architecture -> model_type, from the family table
        raise SourceError(f"{gguf_path.name}: GGUF architecture {arch!r} cannot be slimmed", hint=f"supported: {', '.join(supported())}")
    paths.home().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=paths.home()) as tmp:
        link = Path(tmp) / "model.gguf"  # transformers wants a .gguf name; blobs have none
        os.symlink(gguf_path.resolve(), link)
        try:
            tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=link.name)
            model = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=link.name, dtype="float32")
        except Exception as err:
            raise SourceError(f"{gguf_path.name} could not be dequantized ({type(err).__name__}: {err})", hint="re-pull the model or pass --hf") from None
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    _layer_types_from_gguf(model.config, reader, arch)
    with paths.atomic_dir(out_dir) as tmp_dir:
        model.save_pretrained(tmp_dir)
        tokenizer.save_pretrained(tmp_dir)
    return out_dir



def _layer_types_from_gguf(config: object, reader: Any, arch: str) -> None:
    """Per-layer types and the sliding-window rope base from the GGUF, which transformers' loader ignores.

    A slim GGUF's kept layers need not follow the index rule the loader's config default
    assumes; its ``sliding_window_pattern`` array says what each layer is.
    """
    pattern = family(by_gguf_arch()[arch]).layer_pattern
    if pattern is None:
        return
    field = reader.get_field(f"{arch}.attention.sliding_window_pattern")
    if field is not None:
        setattr(config, pattern.config_list, [pattern.sliding if bool(v) else pattern.full for v in field.contents()])
    base = reader.get_field(f"{arch}.rope.freq_base_swa")
    rope = getattr(config, "rope_parameters", None)
    if base is not None and isinstance(rope, dict) and isinstance(rope.get(pattern.sliding), dict):
        rope[pattern.sliding]["rope_theta"] = float(base.contents())
