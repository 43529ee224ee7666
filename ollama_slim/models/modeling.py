"""Loading models and tokenizers, safely (safetensors only, no remote code by default)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ollama_slim.errors import SourceError


@dataclass(frozen=True)
class LoadOptions:
    """How to place a model: dtype name and accelerate ``device_map``."""

    dtype: str = "float32"
    device_map: str | None = None
    trust_remote_code: bool = False


DTYPES = ("float32", "bfloat16", "float16")  # the --dtype choices
_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def torch_dtype(name: str) -> Any:
    """The torch dtype of a :data:`DTYPES` name (or its short alias: fp32, bf16, fp16)."""
    import torch

    name = _ALIASES.get(name, name)
    if name not in DTYPES:
        raise SourceError(f"unknown dtype {name!r}", hint="use float32, bfloat16 or float16")
    return getattr(torch, name)


def bfloat16_native(device_map: str | None = None) -> bool:
    """Whether bfloat16 matmuls run in hardware where the model runs: on a CUDA GPU that has them,
    or on a CPU with avx512_bf16 or AMX. Elsewhere (an AVX2-only CPU) torch emulates them, and a
    SmolLM2-135M training step under bf16 autocast is an order of magnitude slower than in
    float32 (``tools/bench_precision.py`` measures it). accelerate's ``is_bf16_available()`` does
    not tell: it says yes on any CPU."""
    import torch

    if device_map not in (None, "cpu") and torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    probes = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(probe() for probe in probes if probe is not None)


def auto_dtype(name: str, device_map: str | None = None) -> str:
    """``name``, or for ``auto`` the fast one: bfloat16 where it runs natively, float32 elsewhere."""
    if name != "auto":
        return name
    return "bfloat16" if bfloat16_native(device_map) else "float32"


def auto_mixed_precision(name: str, device_map: str | None = None) -> str:
    """accelerate's ``mixed_precision``: ``name``, or for ``auto`` bf16 where it runs natively, no elsewhere."""
    if name != "auto":
        return name
    return "bf16" if auto_dtype(name, device_map) == "bfloat16" else "no"


def load_model(model_dir: str | Path, options: LoadOptions = LoadOptions()) -> Any:
    """``AutoModelForCausalLM`` from a local safetensors directory, in eval mode."""
    from transformers import AutoModelForCausalLM

    model_dir = Path(model_dir)
    if not list(model_dir.glob("*.safetensors")):
        raise SourceError(f"{model_dir} has no safetensors weights", hint="ollama-slim never loads pickled weights")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch_dtype(options.dtype), device_map=options.device_map,
            use_safetensors=True, trust_remote_code=options.trust_remote_code,
        )
    except (OSError, ValueError) as err:
        raise SourceError(f"cannot load {model_dir}: {err}".split("\n")[0], hint="check that the directory is a complete Hugging Face model") from None
    model.eval()
    return model


def load_tokenizer(model_dir: str | Path, *, trust_remote_code: bool = False) -> Any:
    """The tokenizer of ``model_dir``; pad token falls back to EOS."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load(model_dir: str | Path, options: LoadOptions = LoadOptions()) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a local directory."""
    return load_model(model_dir, options), load_tokenizer(model_dir, trust_remote_code=options.trust_remote_code)


def input_device(model: Any) -> Any:
    """Where inputs go: the embedding's device (works with accelerate device maps)."""
    return model.get_input_embeddings().weight.device
