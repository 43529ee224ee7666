"""The ``export`` stage of a run: ``model.gguf`` checked by llama.cpp, its ``Modelfile``,
the original at the same outtype (for ``bench``), and ``export.json`` with the acceptance figures.

``ollama-slim export RUN`` and ``prune`` both call :func:`export_run`; a plain model
directory goes through :func:`ollama_slim.gguf.export.export_gguf` alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ollama_slim import paths
from ollama_slim.errors import RunError
from ollama_slim.gguf.export import ExportConfig, ExportResult, export_gguf
from ollama_slim.models.licensing import original_license
from ollama_slim.ollama.modelfile import chat_for, write_modelfile_for
from ollama_slim.pipeline.layout import RunLayout
from ollama_slim.recsys.prompt import SYSTEM_PROMPT


@dataclass(frozen=True)
class RunExportConfig:
    """Export the slim model of ``run_dir`` (healed, else compact, unless ``model_dir``) as ``outtype``."""

    run_dir: Path
    outtype: str = "q8_0"
    model_dir: Path | None = None
    tokenizer_gguf: Path | None = None  # default: the source GGUF that build recorded
    check: bool = True
    force: bool = False


def export_run(config: RunExportConfig) -> ExportResult:
    """Write the run's GGUF, Modelfile and original GGUF; ``export.json`` last, as the stage's result."""
    layout = RunLayout(Path(config.run_dir))
    model_dir = Path(config.model_dir) if config.model_dir else layout.model_dir()
    if not (model_dir / "config.json").is_file():
        raise RunError(f"run directory {layout.root} has no model to export", hint="build it first: ollama-slim build MODEL --run-dir RUN")
    result = export_gguf(ExportConfig(model_dir=model_dir, outtype=config.outtype, out=layout.gguf, force=config.force, check=config.check,
                                      tokenizer_gguf=config.tokenizer_gguf))
    resolved = paths.read_json(layout.resolve) if layout.resolve.is_file() else None
    if resolved is not None:
        _export_full_model(resolved, out=layout.original_gguf(config.outtype), outtype=config.outtype)
    _write_modelfile(layout, resolved)
    paths.write_json(layout.export_record, result.to_json())
    return result


def _export_full_model(resolved: dict[str, Any], *, out: Path, outtype: str, model_dir: Path | None = None) -> None:
    """The original model (or ``model_dir``, a fine-tune of it) as the same outtype, with the original's tokenizer
    when it came as a GGUF (unchecked)."""
    source_gguf = resolved.get("gguf_path")
    export_gguf(ExportConfig(model_dir=model_dir or Path(resolved["model_dir"]), outtype=outtype, out=out, force=True, check=False,
                             tokenizer_gguf=Path(source_gguf) if source_gguf else None, origin=resolved))


def export_reference(run_dir: Path, outtype: str) -> Path:
    """The run's reference (the full model healed like the slim one) as ``reference.<outtype>.gguf``, to ask it in chat."""
    layout = RunLayout(Path(run_dir))
    if not (layout.reference_dir / "config.json").is_file():
        raise RunError(f"run directory {layout.root} has no reference model", hint="prune with --reference fine-tunes one")
    out = layout.reference_gguf(outtype)
    _export_full_model(paths.read_json(layout.resolve), out=out, outtype=outtype, model_dir=layout.reference_dir)
    return out


def _write_modelfile(layout: RunLayout, resolved: dict[str, Any] | None) -> Path:
    """The run's Modelfile: the original's template and stops, the task's SYSTEM, the original's licence."""
    licence = original_license(resolved) if resolved else None
    chat = chat_for(gguf=layout.gguf, original=(resolved or {}).get("tag"))
    return write_modelfile_for(layout.gguf, chat=chat, out=layout.modelfile, system=SYSTEM_PROMPT, license_text=licence.file_text() if licence else None)
