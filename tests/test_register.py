"""Registration in Ollama: the real ``ollama`` client on the wire against a stand-in server."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import httpx
import ollama
import pytest
from click.testing import CliRunner
from gguf_files import SLIM_LAYERS, smollm2_gguf, tiny_gguf  # noqa: F401 - fixtures
from ollama_server import OllamaStandIn, free_port, ollama_server, real_ollama  # noqa: F401 - fixtures

from ollama_slim.cli import main
from ollama_slim.errors import ExportError, OllamaError, UsageError
from ollama_slim.ollama.modelfile import chat_family, read_modelfile
from ollama_slim.ollama.api import ApiOptions
from ollama_slim.ollama.register import register
from ollama_slim.models.sources import ollama_blob
from ollama_slim.models.tags import parse_name

CHATML = chat_family("chatml")
FAST = dict(timeout_s=5.0, retries=3, backoff_s=0.01)


def _sha(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _run_dir(tmp_path: Path, *, tag: str = "smollm2:135m", name: str = "model.gguf", seed: str = "a") -> Path:
    run = tmp_path / "run"
    run.mkdir(parents=True, exist_ok=True)
    provenance = json.dumps({"source": {"tag": tag, "chat": "chatml"}, "seed": seed})
    tiny_gguf(run / name, strings={"ollama_slim.provenance": provenance, "general.name": f"slim {seed}"})
    return run


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def _creates(server: OllamaStandIn) -> list[dict]:
    return [body for path, body in server.bodies if path == "/api/create"]


def test_register_run_dir_through_the_cli(ollama_server: OllamaStandIn, tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    out = _invoke("register", str(run), "--name", "smollm2-slim", "--json")
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    gguf = run / "model.gguf"
    assert result["digest"] == _sha(gguf) and result["replaced"] is False
    assert result["template_source"] == "tag table (chatml)"
    (create,) = _creates(ollama_server)
    assert "from" not in create  # with files, `from` must not be set
    assert create["files"] == {"model.gguf": _sha(gguf)}
    assert create["template"] == CHATML.template and create["parameters"] == {"stop": list(CHATML.stops)}
    assert ("POST", f"/api/blobs/{_sha(gguf)}") in ollama_server.requests
    shown = ollama.Client(host=ollama_server.url).show("smollm2-slim")  # the real client sees it
    assert shown.template == CHATML.template and '"<|im_end|>"' in shown.parameters
    assert ollama_blob(parse_name("smollm2-slim")).read_bytes() == gguf.read_bytes()  # Ollama's store layout
    assert read_modelfile(run / "Modelfile").template == CHATML.template
    assert json.loads((run / "register.json").read_text())["name"] == "smollm2-slim"


def test_refuses_to_replace_without_force(ollama_server: OllamaStandIn, tmp_path: Path) -> None:
    first = register(source=_run_dir(tmp_path / "one"), name="slim:q8", api=ApiOptions(**FAST))
    second = _run_dir(tmp_path / "two", seed="b")
    out = _invoke("register", str(second), "--name", "Slim:Q8")  # Ollama names are case-insensitive
    assert out.exit_code == 1
    assert out.output.strip().splitlines() == [f"Error: model 'Slim:Q8' already exists in Ollama at {ollama_server.url}. pass --force to replace it, or choose another --name"]
    assert ollama.Client(host=ollama_server.url).list().models[0].digest == first.digest.split(":")[1]
    assert len(_creates(ollama_server)) == 1
    out = _invoke("register", str(second), "--name", "slim:q8", "--force", "--json")
    assert out.exit_code == 0, out.output
    replaced = json.loads(out.output)
    assert replaced["replaced"] is True and replaced["digest"] != first.digest
    (model,) = ollama.Client(host=ollama_server.url).list().models
    assert model.digest == replaced["digest"].split(":")[1]


def test_file_names_with_spaces_and_quotes(ollama_server: OllamaStandIn, tmp_path: Path) -> None:
    run = _run_dir(tmp_path / 'my "runs"', name='slim "q8" v1.gguf')
    result = register(source=run / 'slim "q8" v1.gguf', name="me/slim-q8", api=ApiOptions(**FAST))
    assert result.modelfile.name == 'slim "q8" v1.Modelfile'
    assert read_modelfile(result.modelfile).from_ == './slim "q8" v1.gguf'
    assert _creates(ollama_server)[-1]["files"] == {"model.gguf": result.digest}


@pytest.mark.parametrize("bad", ["bad name", "-dash", "a/b/c/d", "x:y:z!", ""])
def test_names_ollama_refuses_are_refused_before_any_request(ollama_server: OllamaStandIn, tmp_path: Path, bad: str) -> None:
    out = _invoke("register", str(_run_dir(tmp_path)), "--name", bad)
    assert out.exit_code == 2 and "is not a valid Ollama model name" in out.output
    assert ollama_server.requests == []


def test_a_name_only_the_server_refuses_is_one_line(ollama_server: OllamaStandIn, tmp_path: Path) -> None:
    out = _invoke("register", str(_run_dir(tmp_path)), "--name", "my.team/slim")  # '.' is not allowed in a namespace
    assert out.exit_code == 1
    assert out.output.strip() == "Error: Ollama refused to look up model 'my.team/slim': invalid model name (HTTP 400). fix the request as the message says"
    assert not any(path.startswith("/api/blobs") for _, path in ollama_server.requests)


def test_server_down_is_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    out = _invoke("register", str(_run_dir(tmp_path)), "--name", "slim", "--host", url)
    assert out.exit_code == 1
    assert out.output.strip() == f"Error: no Ollama server answers at {url} (tried 3 times). start it with `ollama serve`, or pass --host URL (or set OLLAMA_HOST)"


def test_slow_server_times_out_with_one_line(ollama_server: OllamaStandIn, tmp_path: Path) -> None:
    ollama_server.faults.delay_s["/api/tags"] = 1.5
    with pytest.raises(OllamaError) as err:
        register(source=_run_dir(tmp_path), name="slim", api=ApiOptions(timeout_s=0.3, retries=2, backoff_s=0.01))
    assert err.value.one_line().startswith(f"Ollama at {ollama_server.url} did not answer within 0.3 s while trying to list its models (tried 2 times)")
    assert [p for _, p in ollama_server.requests].count("/api/tags") == 2


def test_5xx_on_upload_is_retried(ollama_server: OllamaStandIn, tmp_path: Path) -> None:
    ollama_server.faults.fail["/api/blobs"] = [500, 503]
    result = register(source=_run_dir(tmp_path), name="slim", api=ApiOptions(**FAST))
    assert [p for _, p in ollama_server.requests].count(f"/api/blobs/{result.digest}") == 3


def test_5xx_on_create_is_not_retried(ollama_server: OllamaStandIn, tmp_path: Path) -> None:
    ollama_server.faults.fail["/api/create"] = [500, 500, 500]
    with pytest.raises(OllamaError) as err:
        register(source=_run_dir(tmp_path), name="slim", api=ApiOptions(**FAST))
    assert err.value.message == f"Ollama at {ollama_server.url} failed to create model 'slim': simulated server failure (HTTP 500)"
    assert [p for _, p in ollama_server.requests].count("/api/create") == 1


def test_cut_upload_is_retried_then_reported(ollama_server: OllamaStandIn, tmp_path: Path) -> None:
    ollama_server.faults.cut_uploads = 1
    register(source=_run_dir(tmp_path), name="slim", api=ApiOptions(**FAST))
    assert ollama_server.uploads == 2
    ollama_server.faults.cut_uploads = 5
    with pytest.raises(OllamaError) as err:
        register(source=_run_dir(tmp_path / "b", seed="b"), name="slim2", api=ApiOptions(**FAST))
    assert "was cut off while trying to upload model.gguf (tried 3 times)" in err.value.message
    assert ollama.Client(host=ollama_server.url).list().models[0].model == "slim:latest"  # nothing half-registered


def test_the_stand_in_checks_what_ollama_checks(ollama_server: OllamaStandIn, tmp_path: Path) -> None:
    gguf = tiny_gguf(tmp_path / "x.gguf")
    good = _sha(gguf)
    wrong = "sha256:" + "0" * 64
    assert httpx.post(f"{ollama_server.url}/api/blobs/{wrong}", content=gguf.read_bytes()).status_code == 400
    assert "digest mismatch" in httpx.post(f"{ollama_server.url}/api/blobs/{wrong}", content=b"x").json()["error"]
    assert httpx.post(f"{ollama_server.url}/api/blobs/sha256:nothex", content=b"x").json()["error"] == "invalid digest format"
    assert httpx.head(f"{ollama_server.url}/api/blobs/{good}").status_code == 404
    client = ollama.Client(host=ollama_server.url)
    with pytest.raises(ollama.ResponseError) as err:
        client.create(model="m", files={"x.gguf": good})  # a blob never uploaded
    assert err.value.status_code == 400 and "blob not found" in err.value.error
    assert client.create_blob(gguf) == good
    assert httpx.head(f"{ollama_server.url}/api/blobs/{good}").status_code == 200
    for files, message in [({"../x.gguf": good}, "file path must be relative"), ({"x.gguf": "md5:1"}, "invalid digest format")]:
        with pytest.raises(ollama.ResponseError, match=message):
            client.create(model="m", files=files)
    with pytest.raises(ollama.ResponseError, match="template error"):
        client.create(model="m", files={"x.gguf": good}, template="{{ if .System }}unclosed")
    with pytest.raises(ollama.ResponseError, match="invalid model name"):
        client.create(model="my.team/m", files={"x.gguf": good})
    with pytest.raises(ollama.ResponseError) as err:
        client.show("absent")
    assert err.value.status_code == 404


def test_template_from_ollama_show_of_the_original(ollama_server: OllamaStandIn, tmp_path: Path) -> None:
    custom = "{{ if .System }}SYS {{ .System }}\n{{ end }}{{ range .Messages }}[{{ .Role }}] {{ .Content }}\n{{ end }}[assistant] "
    ollama_server.add_model("smollm2:135m", tiny_gguf(tmp_path / "orig.gguf"), template=custom, params={"stop": ["[user]", '"q"\n']})
    result = register(source=_run_dir(tmp_path), name="slim", api=ApiOptions(**FAST))
    assert result.template_source == "ollama show smollm2:135m"
    assert result.stops == ("[user]", '"q"\n')
    assert _creates(ollama_server)[-1]["template"] == custom


def test_not_a_gguf_and_empty_dir(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    out = _invoke("register", str(tmp_path / "empty"), "--name", "slim")
    assert out.exit_code == 1 and "holds no GGUF" in out.output
    (tmp_path / "fake.gguf").write_text("not a model")
    out = _invoke("register", str(tmp_path / "fake.gguf"), "--name", "slim")
    assert out.exit_code == 1 and "is not a GGUF file" in out.output


@pytest.mark.slow
def test_registered_model_generates_with_llama_cpp(ollama_server: OllamaStandIn, smollm2_gguf: Path, tmp_path: Path) -> None:
    gguf = tmp_path / "smollm2.gguf"
    os.link(smollm2_gguf, gguf) if smollm2_gguf.stat().st_dev == tmp_path.stat().st_dev else shutil.copy(smollm2_gguf, gguf)
    out = _invoke("register", str(gguf), "--name", "smollm2-copy")
    assert out.exit_code == 0, out.output
    client = ollama.Client(host=ollama_server.url)
    answer = client.generate(model="smollm2-copy", prompt="What is the capital of France?", options={"num_predict": 12, "temperature": 0})
    assert "Paris" in answer.response
    assert answer.eval_count > 0 and answer.eval_duration > 0 and answer.prompt_eval_count > 10 and answer.prompt_eval_duration > 0
    chat = client.chat(model="smollm2-copy", messages=[{"role": "user", "content": "Say hello."}], options={"num_predict": 8, "temperature": 0})
    assert chat.message.content.strip() and chat.done
    streamed = list(client.generate(model="smollm2-copy", prompt="Count: 1, 2, 3,", options={"num_predict": 4, "temperature": 0}, stream=True))
    assert streamed[-1].done and streamed[-1].eval_count >= 1


# --------------------------------------------------------------------------- a real Ollama, when there is one


@pytest.mark.slow
@pytest.mark.ollama
def test_against_a_real_ollama(real_ollama: str, smollm2_gguf: Path, tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    shutil.copy(smollm2_gguf, gguf)
    result = register(source=gguf, name="ollama-slim-test", api=ApiOptions(host=real_ollama))
    shown = ollama.Client(host=real_ollama).show("ollama-slim-test")
    assert shown.template == CHATML.template and "<|im_end|>" in shown.parameters
    with pytest.raises(OllamaError, match="already exists"):
        register(source=gguf, name="ollama-slim-test", api=ApiOptions(host=real_ollama))
    assert register(source=gguf, name="ollama-slim-test", force=True, api=ApiOptions(host=real_ollama)).replaced
    ollama.Client(host=real_ollama).delete(result.name)


def test_usage_error_type_for_bad_names(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        register(source=_run_dir(tmp_path), name="bad name")


def test_an_edited_modelfile_beside_the_gguf_is_used(ollama_server: OllamaStandIn, tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    (run / "Modelfile").write_text('# mine\nfrom ./model.gguf\ntemplate """{{ .Prompt }}"""\nparameter stop "END"\nPARAMETER num_ctx 4096\n')
    result = register(source=run, name="slim", api=ApiOptions(**FAST))
    assert (result.template_source, result.stops) == ("Modelfile", ("END",))
    create = _creates(ollama_server)[-1]
    assert (create["template"], create["parameters"]) == ("{{ .Prompt }}", {"num_ctx": 4096, "stop": ["END"]})
    (run / "Modelfile").write_text("FROM ./other.gguf\n")
    with pytest.raises(ExportError, match="says FROM ./other.gguf, not model.gguf"):
        register(source=run, name="slim2", api=ApiOptions(**FAST))


def test_a_read_only_directory_does_not_stop_registration(ollama_server: OllamaStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ollama_slim.ollama.register as reg

    def refuse(path, spec):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(reg, "write_modelfile", refuse)
    gguf = _run_dir(tmp_path) / "model.gguf"
    result = register(source=gguf, name="slim", api=ApiOptions(**FAST))
    assert result.modelfile is None and result.template_source == "tag table (chatml)"
    assert _creates(ollama_server)[-1]["template"] == CHATML.template


def test_an_original_the_server_refuses_to_show_is_skipped(ollama_server: OllamaStandIn, tmp_path: Path) -> None:
    result = register(source=_run_dir(tmp_path, tag="my.team/orig:1"), name="slim", api=ApiOptions(**FAST))
    assert result.template_source == "tag table (chatml)"  # the recorded chat family, after show was refused
    assert ("POST", "/api/show") in ollama_server.requests
