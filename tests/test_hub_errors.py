"""Hugging Face hub failures, against a stand-in hub on 127.0.0.1 (real huggingface_hub client)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest

from ollama_slim.errors import SourceError
from ollama_slim.models.sources import resolve


def _handler(status: int, code: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            body = b'{"error": "stand-in"}'
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", "stand-in hub")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = _answer  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture()
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[callable]:
    servers: list[ThreadingHTTPServer] = []

    def start(status: int, code: str) -> None:
        import huggingface_hub.constants as constants

        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(status, code))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_repo_that_does_not_exist(hub) -> None:
    hub(404, "RepoNotFound")
    with pytest.raises(SourceError) as err:
        resolve("x", hf="nobody/no-such-model")
    assert "does not exist" in err.value.one_line() and "check the repo id" in err.value.one_line()


def test_gated_repo_without_token(hub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    hub(401, "GatedRepo")
    with pytest.raises(SourceError) as err:
        resolve("llama3.2:1b", hf="meta-llama/Llama-3.2-1B-Instruct")
    line = err.value.one_line()
    assert "is gated" in line and "HF_TOKEN" in line
