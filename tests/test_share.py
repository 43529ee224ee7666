"""`share`: a run -> a Hub repository folder; the original's licence carried everywhere."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from ollama_slim.cli import main
from ollama_slim.errors import UsageError
from ollama_slim.models.licensing import license_by_id, original_license, require_license
from ollama_slim.ollama.modelfile import read_modelfile
from ollama_slim.pipeline.prune import PruneConfig, prune
from ollama_slim.recsys.prompt import SYSTEM_PROMPT
from ollama_slim.sharing.share import ShareConfig, normalise_quants, prepare_share, share_name
from toy_data import write_toy_data

LLAMA_NOTICE = "Llama 3.2 is licensed under the Llama 3.2 Community License, Copyright © Meta Platforms, Inc. All Rights Reserved."


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    """A whole (tiny) prune of `llama3.2:1b` whose weights are the tiny random Llama: the tag table's licence applies."""
    root = tmp_path_factory.mktemp("share")
    data = write_toy_data(root / "toy")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"HF_HUB_OFFLINE": "1", "HF_HOME": root / "hf", "OLLAMA_MODELS": root / "store", "HOME": root}.items():
            mp.setenv(key, str(value))
        config = PruneConfig(model="llama3.2:1b", hf=str(tiny_llama), keep=3, run_dir=root / "run", data=str(data), methods=("block-influence",), bridge="none",
                             steps=2, batch_size=2, checkpoint_every=2, calib_users=4, val_users=4, eval_users=4, bench_repeats=1, reference=False, register=False)
        prune(config)
    return root / "run"


@pytest.fixture(scope="module")
def shared(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("hub") / "repo"
    return prepare_share(ShareConfig(run_dir=tiny_run, out=out, bench_repeats=1))


def _general(gguf: Path) -> dict:
    """The metadata llama.cpp itself reads from ``gguf`` (it loads the whole model)."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=64, verbose=False)
    try:
        return dict(llm.metadata)
    finally:
        llm.close()


def _tags(gguf: Path) -> list[str]:
    """``general.tags`` (llama-cpp-python's metadata leaves arrays out)."""
    from gguf import GGUFReader

    return GGUFReader(str(gguf)).get_field("general.tags").contents()


def test_prune_leaves_a_share_ready_run(tiny_run: Path) -> None:
    meta = _general(tiny_run / "model.gguf")
    assert meta["general.license"] == "llama3.2" and meta["general.license.name"] == "Llama 3.2 Community License Agreement"
    assert meta["general.base_model.0.repo_url"] == "https://huggingface.co/meta-llama/Llama-3.2-1B-Instruct"
    assert meta["general.base_model.0.organization"] == "meta-llama" and meta["general.dataset.0.name"] == "toy"
    spec = read_modelfile(tiny_run / "Modelfile")
    assert spec.system == SYSTEM_PROMPT
    assert LLAMA_NOTICE in spec.license and "Built with Llama" in spec.license
    assert json.loads((tiny_run / "prune.json").read_text())["command"].startswith("ollama-slim prune llama3.2:1b --keep 3")
    assert json.loads((tiny_run / "export.json").read_text())["check"]["passed"] is True


def test_share_folder_is_a_hub_repository(shared, tiny_run: Path) -> None:
    from huggingface_hub import ModelCard

    out = shared.out
    assert shared.name.startswith("Llama") and shared.name == "Llama-run"  # the licence's name prefix
    ggufs = [f"{shared.name}-Q4_K_M.gguf", f"{shared.name}-Q8_0.gguf"]
    expected = {*ggufs, "template", "system", "params", "Modelfile", "README.md", "LICENSE", "NOTICE", "scores.png", "selection.png", "speed_quality.png"}
    assert expected <= {p.name for p in out.iterdir()}
    for gguf in ggufs:
        meta = _general(out / gguf)
        assert meta["general.license"] == "llama3.2" and meta["general.name"] == shared.name
        assert {"recommendation", "layer-pruning", "llama"} <= set(_tags(out / gguf))
    for q in shared.quants:
        assert q.check["passed"] and 0.0 <= q.ndcg["low"] <= q.ndcg["mean"] <= q.ndcg["high"] <= 1.0 and q.gen_tps > 0
    run_spec, folder_spec = read_modelfile(tiny_run / "Modelfile"), read_modelfile(out / "Modelfile")
    assert (out / "system").read_text() == run_spec.system == folder_spec.system
    assert (out / "template").read_text() == run_spec.template
    assert json.loads((out / "params").read_text()) == {"stop": list(run_spec.stops)}
    assert folder_spec.from_ == f"./{ggufs[0]}" and LLAMA_NOTICE in folder_spec.license
    assert (out / "NOTICE").read_text().strip() == LLAMA_NOTICE
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "meta-llama/Llama-3.2-1B-Instruct" and card.data.license == "llama3.2"
    assert {"gguf", "ollama", "recommendation", "layer-pruning", "llama"} <= set(card.data.tags)
    names = [r.metric_name for r in card.data.eval_results]
    assert names[:2] == ["NDCG@10, Q4_K_M GGUF (llama.cpp)", "NDCG@10, Q8_0 GGUF (llama.cpp)"] and "NDCG@10, original (zero-shot)" in names
    assert card.data.eval_results[0].metric_value == round(shared.quants[0].ndcg["mean"], 4)
    assert "**Built with Llama**" in card.text and "ollama run hf.co/USER/REPO:Q8_0" in card.text
    assert "ollama-slim prune llama3.2:1b --keep 3" in card.text


def test_rerun_is_a_noop_and_other_options_need_force(shared, tiny_run: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in shared.out.iterdir()}
    again = prepare_share(ShareConfig(run_dir=tiny_run, out=shared.out, bench_repeats=1))
    assert again.reused and {p.name: p.stat().st_mtime_ns for p in shared.out.iterdir()} == before
    other = ShareConfig(run_dir=tiny_run, out=shared.out, quants=("Q8_0",), bench_repeats=0, users=2)
    with pytest.raises(UsageError, match="already exists"):
        prepare_share(other)
    assert {p.name: p.stat().st_mtime_ns for p in shared.out.iterdir()} == before


def test_force_replaces_the_folder(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    first = prepare_share(ShareConfig(run_dir=tiny_run, out=out, quants=("q8_0",), bench_repeats=0, users=2))
    assert [q.file for q in first.quants] == ["Llama-run-Q8_0.gguf"] and first.quants[0].gen_tps is None
    second = prepare_share(ShareConfig(run_dir=tiny_run, out=out, quants=("F16",), bench_repeats=0, users=2, name="llama-rec", force=True))
    assert not second.reused and sorted(p.name for p in out.glob("*.gguf")) == ["llama-rec-F16.gguf"]


def test_unknown_licence_stops_with_one_line(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    plain = tmp_path / "plain-model"
    plain.mkdir()
    resolved = json.loads((run / "resolve.json").read_text())
    resolved.update(tag=None, hf_repo=None, source="hf-dir", origin=str(plain), model_dir=str(plain))
    (run / "resolve.json").write_text(json.dumps(resolved))
    out = tmp_path / "repo"
    result = CliRunner().invoke(main, ["share", str(run), "--out", str(out)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "could not be determined" in result.output and "--license" in result.output and not out.exists()
    given = CliRunner().invoke(main, ["share", str(run), "--out", str(out), "--license", "mit", "--quants", "Q8_0", "--repeats", "0", "--users", "2", "--name", "tiny-rec"])
    assert given.exit_code == 0, given.output
    assert _general(out / "tiny-rec-Q8_0.gguf")["general.license"] == "mit"
    assert (out / "LICENSE").read_text().startswith("This model is a derivative of a model licensed under the MIT License")


def test_cli_bad_input_is_one_line(tiny_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    for args, message in [
        (["share", str(tiny_run), "--out", str(tmp_path / "a"), "--quants", "Q9_X"], "'Q9_X' is not a quantization"),
        (["share", str(tmp_path / "nowhere"), "--out", str(tmp_path / "b")], "is not a directory"),
    ]:
        result = runner.invoke(main, args)
        assert result.exit_code != 0 and message in result.output, result.output
    assert "share" in runner.invoke(main, ["--help"]).output


# --- licences -----------------------------------------------------------------------------


def _apache() -> str:
    return license_by_id("apache-2.0", source="x").text


def test_licence_from_the_ollama_store_layer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    store = tmp_path / "models"
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    text = _apache()
    digest = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    (store / "blobs").mkdir(parents=True)
    (store / "blobs" / digest.replace(":", "-")).write_text(text)
    manifest = store / "manifests" / "registry.ollama.ai" / "library" / "mymodel" / "latest"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"layers": [{"mediaType": "application/vnd.ollama.image.license", "digest": digest}]}))
    found = original_license({"tag": "mymodel"})
    assert found.id == "apache-2.0" and found.text == text and found.source == "the Ollama store's licence layer"


def test_licence_from_an_hf_directory(tmp_path: Path) -> None:
    model = tmp_path / "m"
    model.mkdir()
    source = {"source": "hf-dir", "origin": str(model)}
    assert original_license(source) is None
    with pytest.raises(UsageError, match="could not be determined") as err:
        require_license(source)
    assert "pass --license ID" in err.value.one_line()
    (model / "LICENSE").write_text(_apache())
    assert original_license(source).id == "apache-2.0"
    (model / "README.md").write_text("---\nlicense: mit\n---\n# a model\n")
    card = original_license(source)
    assert card.id == "mit" and card.source == "the HF card" and card.text is None  # the Apache file is not the MIT licence
    assert original_license(source, override="apache-2.0").text == _apache()


def test_licence_from_the_tag_table() -> None:
    assert original_license({"tag": "smollm2:135m"}).id == "apache-2.0"
    qwen = original_license({"tag": "qwen2.5:3b"})
    assert qwen.id == "qwen-research" and qwen.hf_id == "other"
    llama = original_license({"tag": "llama3.1:8b"})
    assert llama.attribution == "Built with Llama" and llama.name_prefix == "Llama" and "Llama 3.1 Community License" in llama.file_text()


def test_share_names_follow_the_licence() -> None:
    llama, apache = license_by_id("llama3.2", source="x"), license_by_id("apache-2.0", source="x")
    assert share_name("smollm2-slim", llama) == "Llama-smollm2-slim"
    assert share_name("llama3.2-slim", llama) == "llama3.2-slim"
    assert share_name("smollm2-slim", apache) == "smollm2-slim"
    assert share_name("rec", license_by_id("llama3", source="x")) == "Llama-3-rec"
    assert normalise_quants(["q4_k_m", "Q8_0", "q8_0"]) == ["Q4_K_M", "Q8_0"]
    with pytest.raises(UsageError, match="is not a valid Ollama model name"):
        share_name("bad name!", apache)
