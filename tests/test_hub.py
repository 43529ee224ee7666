"""The Hugging Face Hub: publishing a share folder and running ``hf.co/USER/REPO[:QUANT]``,
against the stand-in Hub (tests/hub_server.py) with the real huggingface_hub client."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from gguf_files import tiny_gguf
from hub_server import READ_TOKEN, WRITE_TOKEN, HubStandIn, hf_hub  # noqa: F401 - fixture
from ollama_slim.errors import HubError, SourceError, UsageError
from ollama_slim.sharing.hub import HfRef, check_repo_id, gguf_quants, ollama_store_name, parse_hf_ref, pick_gguf, publish_hf
from toy_data import write_toy_data

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4
CARD = "---\nlicense: apache-2.0\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct\ntags: [gguf, ollama]\n---\n# smollm2-slim\n"


def share_folder(root: Path, *, card: str = CARD) -> Path:
    """A share folder as `ollama-slim share` writes it (two tiny GGUFs, text files, PNGs)."""
    root.mkdir(parents=True, exist_ok=True)
    tiny_gguf(root / "smollm2-slim-Q4_K_M.gguf", strings={"general.name": "q4"})
    tiny_gguf(root / "smollm2-slim-Q8_0.gguf", strings={"general.name": "q8"})
    texts = {"template": "{{ .Prompt }}", "system": "You recommend products.", "params": json.dumps({"stop": ["<|im_end|>"]}),
             "Modelfile": "FROM ./smollm2-slim-Q4_K_M.gguf\n", "README.md": card, "LICENSE": "Apache License 2.0\n"}
    for name, text in texts.items():
        (root / name).write_text(text)
    (root / "retained.png").write_bytes(PNG)
    (root / "plots").mkdir(exist_ok=True)
    (root / "plots" / "layers.png").write_bytes(PNG[::-1])
    return root


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    return share_folder(tmp_path / "share")


# --------------------------------------------------------------------------- publishing


def test_publish_uploads_every_file_in_one_commit(hf_hub: HubStandIn, folder: Path) -> None:
    said: list[str] = []
    result = publish_hf(folder, "alice/smollm2-slim", progress=said.append)
    repo = hf_hub.repo("alice/smollm2-slim")
    assert result.created and not result.unchanged and result.commit == repo.head.oid
    assert result.url == f"{hf_hub.url}/alice/smollm2-slim" and sorted(result.uploaded) == sorted(_files(folder))
    assert len(repo.commits) == 2 and hf_hub.count("hub", "POST", "/commit/main") == 1  # the Hub's initial commit + ours
    for path, data in _files(folder).items():
        assert hf_hub.content("alice/smollm2-slim", path) == data, path
    lfs = {p for p, b in repo.head.files.items() if b.sha256}
    assert lfs == {"smollm2-slim-Q4_K_M.gguf", "smollm2-slim-Q8_0.gguf", "retained.png", "plots/layers.png"}
    assert hf_hub.count("storage", "PUT", "/upload/") == 4 and hf_hub.count("hub", "POST", "/api/validate-yaml") == 1
    assert any("uploading 10 files" in line for line in said)
    assert json.loads(json.dumps(result.to_json()))["repo"] == "alice/smollm2-slim"


def test_rerun_with_nothing_changed_makes_no_commit(hf_hub: HubStandIn, folder: Path) -> None:
    first = publish_hf(folder, "alice/smollm2-slim")
    uploads = hf_hub.count("storage", "PUT", "/upload/")
    again = publish_hf(folder, "hf.co/alice/smollm2-slim")
    assert again.unchanged and again.commit is None and again.uploaded == [] and not again.created
    assert len(hf_hub.repo("alice/smollm2-slim").commits) == 2 and hf_hub.repo("alice/smollm2-slim").head.oid == first.commit
    assert hf_hub.count("hub", "POST", "/commit/") == 1 and hf_hub.count("storage", "PUT", "/upload/") == uploads


def test_a_new_file_is_added_without_force(hf_hub: HubStandIn, folder: Path) -> None:
    publish_hf(folder, "alice/smollm2-slim")
    tiny_gguf(folder / "smollm2-slim-F16.gguf", strings={"general.name": "f16"})
    result = publish_hf(folder, "alice/smollm2-slim")
    assert result.uploaded == ["smollm2-slim-F16.gguf"] and len(hf_hub.repo("alice/smollm2-slim").commits) == 3
    assert hf_hub.content("alice/smollm2-slim", "smollm2-slim-F16.gguf") == (folder / "smollm2-slim-F16.gguf").read_bytes()


def test_a_repo_holding_another_model_is_replaced_only_with_force(hf_hub: HubStandIn, folder: Path, tmp_path: Path) -> None:
    other = tiny_gguf(tmp_path / "other.gguf", strings={"general.name": "another model"}).read_bytes()
    hf_hub.add_repo("alice/smollm2-slim", {"qwen-slim-Q4_K_M.gguf": other, "README.md": b"# qwen-slim\n"})
    with pytest.raises(HubError) as err:
        publish_hf(folder, "alice/smollm2-slim")
    line = err.value.one_line()
    assert "already holds another model" in line and "README.md" in line and "pass --force" in line and "\n" not in line
    assert len(hf_hub.repo("alice/smollm2-slim").commits) == 2
    result = publish_hf(folder, "alice/smollm2-slim", force=True)
    assert result.removed == ["qwen-slim-Q4_K_M.gguf"] and not result.created
    assert set(hf_hub.repo("alice/smollm2-slim").head.files) == set(_files(folder)) | {".gitattributes"}
    assert hf_hub.content("alice/smollm2-slim", "README.md") == CARD.encode() and len(hf_hub.repo("alice/smollm2-slim").commits) == 3


@pytest.mark.parametrize("private", [True, False])
def test_private_flag_reaches_the_hub(hf_hub: HubStandIn, folder: Path, private: bool) -> None:
    publish_hf(folder, "alice/smollm2-slim", private=private)
    assert hf_hub.repo("alice/smollm2-slim").private is private
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    if private:
        with pytest.raises(RepositoryNotFoundError):
            HfApi(token=False).model_info("alice/smollm2-slim")
    else:
        assert HfApi(token=False).model_info("alice/smollm2-slim").sha == hf_hub.repo("alice/smollm2-slim").head.oid


def test_the_stand_in_answers_listing_and_downloads_as_the_hub(hf_hub: HubStandIn, folder: Path) -> None:
    """What publish_hf does not call itself but users' tools do: paths-info, a folder's tree, regular downloads."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.hf_api import RepoFile, RepoFolder

    publish_hf(folder, "alice/smollm2-slim")
    api = HfApi()
    infos = {i.path: i for i in api.get_paths_info("alice/smollm2-slim", ["README.md", "plots", "smollm2-slim-Q8_0.gguf", "missing"])}
    assert set(infos) == {"README.md", "plots", "smollm2-slim-Q8_0.gguf"} and isinstance(infos["plots"], RepoFolder)
    assert infos["smollm2-slim-Q8_0.gguf"].lfs.sha256 == hashlib.sha256((folder / "smollm2-slim-Q8_0.gguf").read_bytes()).hexdigest()
    assert [f.path for f in api.list_repo_tree("alice/smollm2-slim", "plots")] == ["plots/layers.png"]
    top = list(api.list_repo_tree("alice/smollm2-slim"))
    assert {f.path for f in top if isinstance(f, RepoFolder)} == {"plots"} and all("/" not in f.path for f in top if isinstance(f, RepoFile))
    assert Path(hf_hub_download("alice/smollm2-slim", "README.md")).read_text() == CARD
    assert Path(hf_hub_download("alice/smollm2-slim", "plots/layers.png")).read_bytes() == PNG[::-1]
    assert api.model_info("alice/smollm2-slim").sha == hf_hub.repo("alice/smollm2-slim").head.oid


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("read-only token", "refused access to alice/smollm2-slim (403)"),
        ("bad token", "refused access to alice/smollm2-slim (401)"),
        ("other namespace", "refused access to bob/smollm2-slim (403)"),
        ("not logged in", "not logged in to Hugging Face"),
    ],
)
def test_the_token_never_shows(hf_hub: HubStandIn, folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, case: str, message: str) -> None:
    token = {"read-only token": READ_TOKEN, "bad token": "hf_secretNOTknown0123456789", "other namespace": WRITE_TOKEN, "not logged in": None}[case]
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    else:
        monkeypatch.delenv("HF_TOKEN")
    said: list[str] = []
    with pytest.raises(HubError) as err:
        publish_hf(folder, "bob/smollm2-slim" if case == "other namespace" else "alice/smollm2-slim", progress=said.append)
    line = err.value.one_line()
    assert message in line and "hf auth login" in line and "HF_TOKEN" in line and "\n" not in line
    seen = "\n".join([line, repr(err.value), str(err.value.__cause__), *said, *capsys.readouterr(), caplog.text])
    assert "hf_secret" not in seen
    if token:  # the token did reach the Hub (so the check above could have caught a leak)
        assert any(auth == f"Bearer {token}" for origin, _, _, auth in hf_hub.requests if origin == "hub")
    assert all(auth is None for origin, _, _, auth in hf_hub.requests if origin == "storage")  # never sent off the Hub


@pytest.mark.parametrize("repo", ["smollm2-slim", "alice/smollm2/slim", "alice/-slim", "alice--x/slim", "alice/slim.git", "", "alice/smollm2-slim:Q8_0", "alice/smöllm"])
def test_bad_repo_id_is_one_line(hf_hub: HubStandIn, folder: Path, repo: str) -> None:
    with pytest.raises(UsageError) as err:
        publish_hf(folder, repo)
    assert "is not a Hugging Face repo id" in err.value.one_line() and "USER/REPO" in err.value.one_line()
    assert hf_hub.requests == []


def test_repo_id_forms() -> None:
    assert check_repo_id("alice/smollm2-slim") == "alice/smollm2-slim"
    assert check_repo_id("https://huggingface.co/alice/smollm2-slim") == "alice/smollm2-slim"
    assert check_repo_id("hf.co/alice/smollm2-slim") == "alice/smollm2-slim"


def test_invalid_model_card_metadata_is_one_line(hf_hub: HubStandIn, tmp_path: Path) -> None:
    folder = share_folder(tmp_path / "share", card="---\nlicense: [unclosed\n---\n# card\n")
    with pytest.raises(HubError) as err:
        publish_hf(folder, "alice/smollm2-slim")
    assert "README.md has invalid model-card metadata" in err.value.one_line()
    assert hf_hub.count("hub", "POST", "/commit/") == 0


def test_unreachable_hub_is_one_line(hf_hub: HubStandIn, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as constants
    import huggingface_hub.utils._http as hf_http

    monkeypatch.setattr(hf_http, "time", SimpleNamespace(sleep=lambda _s: None))  # no backoff waits
    hf_hub.stop()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_free_port()}")
    with pytest.raises(HubError) as err:
        publish_hf(folder, "alice/smollm2-slim")
    assert "the Hugging Face Hub is not reachable" in err.value.one_line() and "check the network" in err.value.one_line()


def test_empty_or_missing_folder(hf_hub: HubStandIn, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is not a directory"):
        publish_hf(tmp_path / "missing", "alice/x")
    (tmp_path / "empty" / ".cache").mkdir(parents=True)
    (tmp_path / "empty" / ".cache" / "x").write_text("x")
    with pytest.raises(HubError, match="holds no files to publish"):
        publish_hf(tmp_path / "empty", "alice/x")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- hf.co references


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hf.co/alice/smollm2-slim", HfRef("alice/smollm2-slim")),
        ("hf.co/alice/smollm2-slim:Q8_0", HfRef("alice/smollm2-slim", "Q8_0")),
        ("huggingface.co/Alice/SmolLM2-slim:q4_k_m", HfRef("Alice/SmolLM2-slim", "q4_k_m")),
        ("https://hf.co/alice/smollm2-slim:latest", HfRef("alice/smollm2-slim")),
        ("HF.CO/alice/smollm2-slim", HfRef("alice/smollm2-slim")),
        ("smollm2:135m", None),
        ("alice/smollm2-slim", None),
        ("registry.ollama.ai/library/qwen2.5:0.5b", None),
        ("models/slim-Q8_0.gguf", None),
        ("hff.co/alice/x", None),
    ],
)
def test_parse_hf_ref(text: str, expected: HfRef | None) -> None:
    assert parse_hf_ref(text) == expected


@pytest.mark.parametrize("text", ["hf.co/alice", "hf.co/alice/slim/extra", "hf.co/alice/slim:", "hf.co/alice/slim:Q8:0", "hf.co//slim"])
def test_malformed_hf_ref_is_one_line(text: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_hf_ref(text)
    assert "is not a Hugging Face model reference" in err.value.one_line() and "hf.co/USER/REPO:QUANT" in err.value.one_line()


FILES = ["README.md", "plots/layers.png", "smollm2-slim-Q8_0.gguf", "smollm2-slim-Q4_K_M.gguf", "smollm2-slim-F16.gguf"]


def test_pick_gguf_as_ollama_does() -> None:
    assert pick_gguf(FILES, None) == "smollm2-slim-Q4_K_M.gguf"
    assert pick_gguf(FILES, "Q8_0") == pick_gguf(FILES, "q8_0") == "smollm2-slim-Q8_0.gguf"
    assert pick_gguf(FILES, "f16") == "smollm2-slim-F16.gguf"
    assert pick_gguf(["m.Q8_0.gguf", "m_Q4_0.gguf"], "q4_0") == "m_Q4_0.gguf" and pick_gguf(["m.Q8_0.gguf"], "Q8_0") == "m.Q8_0.gguf"
    assert pick_gguf(["only-Q8_0.gguf", "README.md"], None) == "only-Q8_0.gguf"
    assert pick_gguf(["mmproj-x-F16.gguf", "x-Q8_0.gguf"], None) == "x-Q8_0.gguf"
    assert gguf_quants(FILES[2:]) == ["F16", "Q4_K_M", "Q8_0"]


def test_pick_gguf_errors_list_the_quants() -> None:
    with pytest.raises(SourceError) as err:
        pick_gguf(FILES, "Q5_K_M", where="hf.co/alice/smollm2-slim")
    line = err.value.one_line()
    assert "has no Q5_K_M GGUF (available: F16, Q4_K_M, Q8_0)" in line and "hf.co/alice/smollm2-slim:F16" in line
    with pytest.raises(SourceError, match="several GGUFs and no Q4_K_M"):
        pick_gguf(["a-Q8_0.gguf", "a-F16.gguf"], None)
    with pytest.raises(SourceError, match="no Q8_0 GGUF"):
        pick_gguf(["aQ8_0.gguf", "a-F16.gguf"], "Q8_0")  # the quant is a whole name part
    with pytest.raises(SourceError, match="holds no GGUF file"):
        pick_gguf(["README.md"], None)


def test_backend_for_hf_refs() -> None:
    from ollama_slim.recsys.scorers import backend_for

    assert backend_for("hf.co/alice/smollm2-slim:Q8_0") == "llama-cpp"
    assert backend_for("hf.co/alice/smollm2-slim", "transformers") == "transformers"
    assert backend_for("smollm2:135m") == "transformers"


def _seed_ollama_store(root: Path, parts: tuple[str, ...], gguf: bytes) -> Path:
    """A pulled model in Ollama's layout: blobs/sha256-... and manifests/HOST/NS/MODEL/TAG."""
    digest = "sha256:" + hashlib.sha256(gguf).hexdigest()
    blob = root / "blobs" / digest.replace(":", "-")
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(gguf)
    manifest = root / "manifests" / Path(*parts)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": digest, "size": len(gguf)}]}))
    return blob


def test_ollama_store_names_match_case_insensitively(tmp_path: Path) -> None:
    _seed_ollama_store(tmp_path, ("hf.co", "Alice", "SmolLM2-slim", "Q8_0"), b"GGUF")
    _seed_ollama_store(tmp_path, ("huggingface.co", "bob", "x", "latest"), b"GGUF")
    name = ollama_store_name(HfRef("alice/smollm2-slim", "q8_0"), tmp_path)
    assert name is not None and name.manifest_parts() == ("hf.co", "Alice", "SmolLM2-slim", "Q8_0")
    assert ollama_store_name(HfRef("bob/x"), tmp_path).host == "huggingface.co"
    assert ollama_store_name(HfRef("alice/smollm2-slim"), tmp_path) is None


# --------------------------------------------------------------------------- end to end: the tiny Llama from the (stand-in) Hub


@pytest.fixture(scope="module")
def tiny_q8(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ollama_slim.gguf.export import ExportConfig, export_gguf

    out = tmp_path_factory.mktemp("tiny-q8") / "tiny-slim-Q8_0.gguf"
    export_gguf(ExportConfig(model_dir=tiny_llama, outtype="q8_0", out=out, check=False))
    return out


@pytest.fixture()
def tiny_repo(hf_hub: HubStandIn, tiny_q8: Path, tmp_path: Path) -> HubStandIn:
    decoy = tiny_gguf(tmp_path / "decoy.gguf").read_bytes()  # not runnable: picking it would fail
    hf_hub.add_repo("alice/tiny-slim", {"tiny-slim-Q8_0.gguf": tiny_q8.read_bytes(), "tiny-slim-Q4_K_M.gguf": decoy, "README.md": b"# tiny\n"})
    return hf_hub


def _toy_dataset():
    from ollama_slim.recsys.data import make_dataset

    titles = {i: t for i, t in enumerate(["Sony wireless headphones black", "Logitech wireless mouse", "Samsung microSD memory card",
                                          "Anker USB C charger", "Canon camera lens cap", "HDMI cable high speed"] * 3)}
    return make_dataset("toy", {u: [(u + 2 * k) % 18 for k in range(7)] for u in range(8)}, titles)


def test_resolve_downloads_the_named_quant(tiny_repo: HubStandIn, tiny_q8: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as constants

    from ollama_slim.bench.backends import gguf_for
    from ollama_slim.models.sources import resolve

    resolved = resolve("hf.co/alice/tiny-slim:q8_0")
    assert resolved.source == "hf-gguf" and resolved.tag == "hf.co/alice/tiny-slim:q8_0" and resolved.arch == "llama" and resolved.num_layers == 6
    assert resolved.gguf_path.read_bytes() == tiny_q8.read_bytes() and str(resolved.gguf_path).startswith(constants.HF_HUB_CACHE)
    assert tiny_repo.count("storage", "GET", "/lfs/") == 1
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    before = len(tiny_repo.requests)
    assert resolve("hf.co/alice/tiny-slim:Q8_0").gguf_path == resolved.gguf_path == gguf_for("hf.co/alice/tiny-slim:Q8_0")
    assert len(tiny_repo.requests) == before  # the cache, not the Hub
    with pytest.raises(SourceError, match="no Q5_K_M GGUF .available: Q8_0."):
        resolve("hf.co/alice/tiny-slim:Q5_K_M")  # offline: only what was downloaded


def test_hf_ref_errors(tiny_repo: HubStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as constants

    from ollama_slim.models.sources import resolve

    with pytest.raises(SourceError) as err:
        resolve("hf.co/alice/tiny-slim:Q5_K_M")
    assert "has no Q5_K_M GGUF (available: Q4_K_M, Q8_0)" in err.value.one_line()
    with pytest.raises(SourceError, match="does not exist .or is private."):
        resolve("hf.co/alice/no-such-model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SourceError, match="is not in the Hugging Face cache and the network is off"):
        resolve("hf.co/alice/tiny-slim:Q8_0")


def test_the_ollama_store_comes_first(tiny_repo: HubStandIn, tiny_q8: Path) -> None:
    from ollama_slim.models.sources import resolve

    blob = _seed_ollama_store(Path(os.environ["OLLAMA_MODELS"]), ("hf.co", "alice", "tiny-slim", "Q8_0"), tiny_q8.read_bytes())
    before = len(tiny_repo.requests)
    resolved = resolve("hf.co/alice/tiny-slim:Q8_0")
    assert resolved.source == "ollama-store" and resolved.gguf_path == blob and len(tiny_repo.requests) == before


def test_evaluate_an_hf_ref_scores_the_shipped_gguf(tiny_repo: HubStandIn, tiny_q8: Path) -> None:
    from ollama_slim.recsys.evaluate import EvalConfig, evaluate

    config = EvalConfig(data="toy", users=3, negatives=5, history=3, resamples=50, threads=1)
    ds = _toy_dataset()
    hub = evaluate("hf.co/alice/tiny-slim:Q8_0", config, dataset=ds)
    local = evaluate(str(tiny_q8), config, dataset=ds)
    assert hub.backend == "llama-cpp" and hub.model == "hf.co/alice/tiny-slim:Q8_0" and len(hub.users) == 3
    assert (hub.per_user["rank"] == local.per_user["rank"]).all() and hub.tokens == local.tokens


def test_cli_eval_hf_ref(tiny_repo: HubStandIn, tmp_path: Path) -> None:
    from ollama_slim.cli import main

    data = write_toy_data(tmp_path / "toy")
    args = ["eval", "hf.co/alice/tiny-slim:q8_0", "--data", str(data), "--users", "3", "--negatives", "5", "--history", "3", "--threads", "1", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["backend"] == "llama-cpp" and out["users"] == 3 and out["candidates"] == 6
    result = CliRunner().invoke(main, ["eval", "hf.co/alice/tiny-slim:Q2_K", "--data", str(data), "--users", "3"])
    assert result.exit_code == 1 and "has no Q2_K GGUF" in result.output and "Traceback" not in result.output


# --------------------------------------------------------------------------- the real Hub (only with HF_TOKEN and a network)


def _real_hub_reachable() -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        return True
    except OSError:
        return False


REAL_TOKEN = os.environ.get("HF_TOKEN")


@pytest.mark.skipif(not REAL_TOKEN, reason="needs HF_TOKEN (a write token) for the real Hugging Face Hub")
def test_publish_to_the_real_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A private throw-away repo on huggingface.co: upload, rerun without a commit, delete."""
    import huggingface_hub.constants as constants
    from huggingface_hub import HfApi

    if not _real_hub_reachable():
        pytest.skip("huggingface.co is not reachable")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "https://huggingface.co")
    api = HfApi(endpoint="https://huggingface.co", token=REAL_TOKEN)
    try:
        user = api.whoami()["name"]
    except Exception as err:  # network trouble or a revoked token: not this code's failure
        pytest.skip(f"the Hub did not answer whoami ({type(err).__name__})")
    repo = f"{user}/ollama-slim-test-{uuid.uuid4().hex[:8]}"
    folder = share_folder(tmp_path / "share")
    try:
        first = publish_hf(folder, repo, private=True, token=REAL_TOKEN)
        assert first.created and first.commit and sorted(first.uploaded) == sorted(_files(folder))
        again = publish_hf(folder, repo, token=REAL_TOKEN)
        assert again.unchanged and again.commit is None
        assert sorted(api.list_repo_files(repo)) == sorted([*_files(folder), ".gitattributes"])
    except HubError as err:
        if "not reachable" in err.message:
            pytest.skip(err.one_line())
        raise
    finally:
        api.delete_repo(repo, missing_ok=True)
