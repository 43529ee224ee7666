"""Publishing to Ollama's registry: ``copy`` then ``push`` through the real client, against the stand-in."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import ollama
import pytest
from gguf_files import smollm2_gguf, tiny_gguf  # noqa: F401 - fixtures
from ollama_server import OllamaStandIn, free_port, ollama_server, real_ollama  # noqa: F401 - fixtures

import ollama_slim.ollama.publish as publish_module
from ollama_slim.errors import OllamaError, RunError, UsageError
from ollama_slim.ollama.api import ApiOptions
from ollama_slim.ollama.publish import PushProgress, listed_digests, publish_ollama, push
from ollama_slim.ollama.register import register

FAST = ApiOptions(timeout_s=5.0, retries=3, backoff_s=0.01)
SOURCE, DEST = "smollm2-slim", "me/smollm2-slim"


def _seed(server: OllamaStandIn, tmp_path: Path, *, name: str = SOURCE, seed: str = "a") -> str:
    """Register a tiny GGUF as ``name``; return its digest as publish reports it."""
    gguf = tiny_gguf(tmp_path / f"{seed}.gguf", strings={"general.name": f"slim {seed}"})
    return server.add_model(name, gguf).digest


def _requests(server: OllamaStandIn, path: str) -> int:
    return [p for _, p in server.requests].count(path)


def test_copy_then_push_with_streamed_progress(ollama_server: OllamaStandIn, tmp_path: Path) -> None:
    digest = _seed(ollama_server, tmp_path)
    events: list[PushProgress] = []
    record = tmp_path / "run" / "share.json"
    result = publish_ollama(source=SOURCE, dest=DEST, api=FAST, record=record, progress=events.append)
    assert (result.pushed, result.unchanged, result.copied, result.replaced) == (True, False, True, False)
    assert result.digest == digest and result.host == ollama_server.url
    assert result.page == "https://ollama.com/me/smollm2-slim"
    assert ("/api/copy", {"source": SOURCE, "destination": DEST}) in ollama_server.bodies
    assert ("/api/push", {"model": DEST, "insecure": False, "stream": True}) in ollama_server.bodies
    assert ollama_server.registry == {"me/smollm2-slim:latest": digest}
    assert listed_digests(ollama.Client(host=ollama_server.url), options=FAST)[("registry.ollama.ai", "me", "smollm2-slim", "latest")] == digest
    assert [e.status for e in events][0] == "retrieving manifest" and [e.status for e in events][-2:] == ["pushing manifest", "success"]
    layers = {e.digest: e.total for e in events if e.digest}
    assert len(layers) == result.layers == 2 and sum(layers.values()) == result.size_bytes  # the GGUF and the config
    assert layers[digest] == (tmp_path / "a.gguf").stat().st_size
    for layer, total in layers.items():
        done = [e.completed for e in events if e.digest == layer]
        assert done == sorted(done) and done[0] < total and done[-1] == total
        assert {e.status for e in events if e.digest == layer} == {f"pushing {layer[7:19]}"}
    assert json.loads(record.read_text()) == {"dest": DEST, "digest": digest, "host": ollama_server.url}
    assert result.to_json()["dest"] == DEST and json.dumps(result.to_json())


def test_a_rerun_with_nothing_changed_is_a_no_op(ollama_server: OllamaStandIn, tmp_path: Path) -> None:
    _seed(ollama_server, tmp_path)
    record = tmp_path / "share.json"
    publish_ollama(source=SOURCE, dest=DEST, api=FAST, record=record)
    again = publish_ollama(source=SOURCE, dest="Me/Smollm2-Slim:latest", api=FAST, record=record)  # the same name to Ollama
    assert (again.pushed, again.unchanged, again.layers) == (False, True, 0)
    assert ollama_server.pushes == ["me/smollm2-slim:latest"]
    assert _requests(ollama_server, "/api/push") == 1 and _requests(ollama_server, "/api/copy") == 1


def test_without_a_record_a_push_sends_only_what_the_registry_lacks(ollama_server: OllamaStandIn, tmp_path: Path) -> None:
    _seed(ollama_server, tmp_path)
    publish_ollama(source=SOURCE, dest=DEST, api=FAST)
    events: list[PushProgress] = []
    again = publish_ollama(source=SOURCE, dest=DEST, api=FAST, progress=events.append)
    assert again.pushed and not again.replaced and len(ollama_server.pushes) == 2
    assert all(e.completed == e.total for e in events if e.digest)  # layers the registry holds: done at once


def test_a_changed_model_needs_force(ollama_server: OllamaStandIn, tmp_path: Path) -> None:
    first = _seed(ollama_server, tmp_path)
    record = tmp_path / "share.json"
    publish_ollama(source=SOURCE, dest=DEST, api=FAST, record=record)
    second = _seed(ollama_server, tmp_path, seed="b")  # registered again: a new model under the same name
    with pytest.raises(OllamaError) as err:
        publish_ollama(source=SOURCE, dest=DEST, api=FAST, record=record)
    assert err.value.one_line() == (
        f"'{DEST}' was last pushed from a different model ({first[7:19]}, now {second[7:19]}). pass --force to replace it, or choose another name"
    )
    assert ollama_server.registry == {"me/smollm2-slim:latest": first} and _requests(ollama_server, "/api/copy") == 1
    forced = publish_ollama(source=SOURCE, dest=DEST, api=FAST, record=record, force=True)
    assert forced.pushed and forced.replaced and forced.digest == second
    assert ollama_server.registry == {"me/smollm2-slim:latest": second}
    assert json.loads(record.read_text())["digest"] == second


def test_a_different_local_model_under_dest_needs_force(ollama_server: OllamaStandIn, tmp_path: Path) -> None:
    digest = _seed(ollama_server, tmp_path)
    _seed(ollama_server, tmp_path, name=DEST, seed="other")
    with pytest.raises(OllamaError) as err:
        publish_ollama(source=SOURCE, dest=DEST, api=FAST)
    assert err.value.one_line() == (
        f"model '{DEST}' already exists in Ollama at {ollama_server.url} and is a different model. pass --force to replace it, or choose another name"
    )
    assert _requests(ollama_server, "/api/copy") == 0 and ollama_server.pushes == []
    result = publish_ollama(source=SOURCE, dest=DEST, api=FAST, force=True)
    assert result.replaced and ollama_server.registry == {"me/smollm2-slim:latest": digest}


def test_a_model_registered_under_dest_is_pushed_without_a_copy(ollama_server: OllamaStandIn, tmp_path: Path) -> None:
    _seed(ollama_server, tmp_path, name=DEST)
    result = publish_ollama(source=DEST, dest=DEST, api=FAST)
    assert result.pushed and not result.copied and _requests(ollama_server, "/api/copy") == 0


@pytest.mark.parametrize("dest", ["smollm2-slim", "smollm2-slim:q8", "library/smollm2-slim", "registry.ollama.ai/library/x"])
def test_a_name_outside_your_namespace_is_one_line(ollama_server: OllamaStandIn, tmp_path: Path, dest: str) -> None:
    with pytest.raises(UsageError) as err:
        publish_ollama(source=SOURCE, dest=dest, api=FAST)
    assert err.value.one_line() == f"push needs a name in your namespace, e.g. USER/NAME, not {dest!r}. USER is your ollama.com user name"
    assert ollama_server.requests == []


def test_a_missing_source_is_one_line(ollama_server: OllamaStandIn) -> None:
    with pytest.raises(OllamaError) as err:
        publish_ollama(source="nope", dest=DEST, api=FAST)
    assert err.value.one_line() == f"model 'nope' to push is not in Ollama at {ollama_server.url}. register it first: ollama-slim register RUN --name nope"
    assert _requests(ollama_server, "/api/copy") == 0 and _requests(ollama_server, "/api/push") == 0


def test_server_down_is_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(OllamaError) as err:
        publish_ollama(source=SOURCE, dest=DEST, host=url, api=FAST, record=tmp_path / "share.json")
    assert err.value.one_line() == f"no Ollama server answers at {url} (tried 3 times). start it with `ollama serve`, or pass --host URL (or set OLLAMA_HOST)"
    assert not (tmp_path / "share.json").exists()


def test_a_push_failing_mid_stream_is_one_line_and_records_nothing(ollama_server: OllamaStandIn, tmp_path: Path) -> None:
    _seed(ollama_server, tmp_path)
    record = tmp_path / "share.json"
    ollama_server.faults.push_errors = ["max retries exceeded: http status 502 Bad Gateway"]
    events: list[PushProgress] = []
    with pytest.raises(OllamaError) as err:
        publish_ollama(source=SOURCE, dest=DEST, api=FAST, record=record, progress=events.append)
    assert err.value.one_line() == (
        f"Ollama at {ollama_server.url} failed to push '{DEST}': max retries exceeded: http status 502 Bad Gateway (error). "
        "see the server log (`journalctl -u ollama`, or ~/.ollama/logs/server.log) and rerun"
    )
    assert events and events[-1].status.startswith("pushing ")  # progress arrived before the failure
    assert not record.exists() and ollama_server.registry == {} and _requests(ollama_server, "/api/push") == 1
    assert publish_ollama(source=SOURCE, dest=DEST, api=FAST, record=record).pushed  # a rerun finishes it
    assert record.exists()


def test_a_push_cut_off_mid_stream_is_one_line_and_not_retried(ollama_server: OllamaStandIn, tmp_path: Path) -> None:
    _seed(ollama_server, tmp_path)
    record = tmp_path / "share.json"
    ollama_server.faults.cut_pushes = 1
    with pytest.raises(OllamaError) as err:
        publish_ollama(source=SOURCE, dest=DEST, api=FAST, record=record)
    assert err.value.message.startswith(f"the connection to Ollama at {ollama_server.url} was cut off while trying to push '{DEST}'")
    assert "\n" not in err.value.one_line()
    assert not record.exists() and ollama_server.registry == {} and _requests(ollama_server, "/api/push") == 1


def test_a_stream_that_ends_without_success_is_one_line() -> None:
    class Stalled:
        def push(self, model: str, *, stream: bool) -> object:
            return iter([ollama.ProgressResponse(status="retrieving manifest"), ollama.ProgressResponse(status="pushing manifest")])

    with pytest.raises(OllamaError) as err:
        push(Stalled(), DEST, options=ApiOptions(host="http://127.0.0.1:9"))
    assert err.value.message == f"Ollama at http://127.0.0.1:9 stopped pushing '{DEST}' before it finished (last status: pushing manifest)"


def test_the_registry_refusing_a_namespace_names_the_key(ollama_server: OllamaStandIn, tmp_path: Path) -> None:
    _seed(ollama_server, tmp_path)
    with pytest.raises(OllamaError) as err:  # past publish_ollama's own check: the registry's answer
        push(ollama.Client(host=ollama_server.url), SOURCE, options=FAST)
    assert err.value.message == f"the registry refused to take '{SOURCE}': unauthorized: access denied"
    assert "id_ed25519.pub" in err.value.hint


def test_a_record_that_is_not_one_is_one_line(ollama_server: OllamaStandIn, tmp_path: Path) -> None:
    _seed(ollama_server, tmp_path)
    record = tmp_path / "share.json"
    for text in ["{not json", json.dumps({"dest": DEST}), json.dumps({"dest": "bad name", "digest": "x", "host": "y"})]:
        record.write_text(text)
        with pytest.raises(RunError, match="is not a push record"):
            publish_ollama(source=SOURCE, dest=DEST, api=FAST, record=record)
    assert ollama_server.pushes == []


def test_the_stand_in_copies_and_pushes_as_ollama_does(ollama_server: OllamaStandIn, tmp_path: Path) -> None:
    digest = _seed(ollama_server, tmp_path)
    copied = httpx.post(f"{ollama_server.url}/api/copy", json={"source": SOURCE, "destination": "me/x"})
    assert (copied.status_code, copied.content) == (200, b"")
    missing = httpx.post(f"{ollama_server.url}/api/copy", json={"source": "nope", "destination": "me/y"})
    assert (missing.status_code, missing.json()) == (404, {"error": 'model "nope" not found'})
    bad = httpx.post(f"{ollama_server.url}/api/copy", json={"source": SOURCE, "destination": "bad name"})
    assert (bad.status_code, bad.json()) == (400, {"error": 'destination "bad name" is invalid'})
    client = ollama.Client(host=ollama_server.url)
    assert client.copy(SOURCE, "me/z").status == "success"
    assert client.push("me/x", stream=False).status == "success"  # not streamed: only the last line
    assert ollama_server.registry == {"me/x:latest": digest}
    with pytest.raises(ollama.ResponseError, match="no such file or directory"):
        list(client.push("me/absent", stream=True))  # streamed: an error line after "retrieving manifest"
    with pytest.raises(ollama.ResponseError) as err:
        client.push("me/absent", stream=False)
    assert err.value.status_code == 500


# --------------------------------------------------------------------------- a real Ollama, when there is one (copy only, never a push)


@pytest.mark.slow
@pytest.mark.ollama
def test_copy_keeps_the_listed_digest_in_a_real_ollama(real_ollama: str, smollm2_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_push(*args: object, **kwargs: object) -> None:
        raise AssertionError("this test must never push to the real registry")

    monkeypatch.setattr(publish_module, "push", no_push)
    gguf = tmp_path / "model.gguf"
    shutil.copy(smollm2_gguf, gguf)
    options = ApiOptions(host=real_ollama)
    register(source=gguf, name="ollama-slim-share-src", api=options)
    client = ollama.Client(host=real_ollama)
    client.copy("ollama-slim-share-src", "me/ollama-slim-share")
    listed = listed_digests(client, options=options)
    digest = listed[("registry.ollama.ai", "library", "ollama-slim-share-src", "latest")]
    assert listed[("registry.ollama.ai", "me", "ollama-slim-share", "latest")] == digest  # what the no-op check relies on
    record = tmp_path / "share.json"
    record.write_text(json.dumps({"dest": "me/ollama-slim-share", "digest": digest, "host": real_ollama}))
    result = publish_ollama(source="ollama-slim-share-src", dest="me/ollama-slim-share", api=options, record=record)
    assert result.unchanged and not result.pushed
    with pytest.raises(OllamaError, match="to push is not in Ollama at"):
        publish_ollama(source="ollama-slim-absent", dest="me/ollama-slim-share", api=options)
    client.delete("me/ollama-slim-share")
    client.delete("ollama-slim-share-src")
