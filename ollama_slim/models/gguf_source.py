"""GGUF -> transformers: dequantize a GGUF (Ollama blob or packaged file) to safetensors."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from ollama_slim import paths
from ollama_slim.errors import SourceError
from ollama_slim.models.families import supported

log = logging.getLogger(__name__)

# GGUF general.architecture -> transformers model_type (transformers' own loader does the rest).
_GGUF_TO_HF = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}


def gguf_architecture(path: Path) -> str:
    """``general.architecture`` of a GGUF, with a clear error for a broken file."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
        field = reader.get_field("general.architecture")
        return field.contents() if field is not None else "?"
    except Exception as err:
        raise SourceError(f"{path} is not a readable GGUF file ({type(err).__name__}: {err})", hint="the file is truncated or corrupted: re-download or re-pull it") from None


def gguf_to_hf(gguf_path: Path, out_dir: Path) -> Path:
    """Write a safetensors HF directory (weights, config, tokenizer, chat template) for a GGUF."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    arch = gguf_architecture(gguf_path)
    if arch not in _GGUF_TO_HF:
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
    with paths.atomic_dir(out_dir) as tmp_dir:
        model.save_pretrained(tmp_dir)
        tokenizer.save_pretrained(tmp_dir)
    return out_dir

