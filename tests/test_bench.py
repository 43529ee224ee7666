"""The speed benchmark: both backends through the CLI, and the measurement logic with a fake backend."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from click.testing import CliRunner
from gguf_files import SLIM_LAYERS, smollm2_cut_gguf, smollm2_gguf, tiny_gguf  # noqa: F401 - fixtures
from ollama_server import OllamaStandIn, free_port, ollama_server  # noqa: F401 - fixtures

from ollama_slim.bench import speed as bench_mod
from ollama_slim.bench.speed import BenchConfig, Sample, Target, bench, ceilings, param_counts, read_prompts
from ollama_slim.cli import main
from ollama_slim.errors import OllamaError, SourceError, UsageError


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def _check_result(data: dict, *, backend: str, prompts: int, tokens: int) -> None:
    """JSON fields present, medians from the samples, ratios from the medians."""
    assert data["backend"] == backend
    for key in ("original", "slim"):
        model = data[key]
        for speed in ("prompt_tps", "gen_tps"):
            spread = model[speed]
            assert len(spread["samples"]) == data["config"]["repeats"]
            assert spread["median"] == statistics.median(spread["samples"])
            assert spread["min"] == min(spread["samples"]) and spread["max"] == max(spread["samples"])
            assert spread["min"] > 0
        assert model["prompt_tokens"] > 10 * prompts
        assert model["size_bytes"] > 0 and model["peak_memory_bytes"] > 0
    if backend == "llama-cpp":
        assert data["original"]["gen_tokens"] == data["slim"]["gen_tokens"] == prompts * tokens
        assert data["slim"]["peak_memory_bytes"] < data["original"]["peak_memory_bytes"]  # each worker holds one model
    for speed in ("prompt_tps", "gen_tps"):
        assert data["ratios"][speed] == pytest.approx(data["slim"][speed]["median"] / data["original"][speed]["median"])
    assert data["ratios"]["size"] == pytest.approx(data["slim"]["size_bytes"] / data["original"]["size_bytes"])
    assert data["original"]["params"]["blocks"] == 30 and data["slim"]["params"]["blocks"] == 10
    assert data["ceilings"]["prompt_tps"] == pytest.approx(3.0)  # SmolLM2's 30 blocks are all alike
    assert data["ceilings"]["gen_tps"] == pytest.approx((106_202_880 + 28_311_552) / (106_202_880 / 3 + 28_311_552))


@pytest.mark.slow
def test_llama_cpp_backend_through_the_cli(smollm2_cut_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", f"http://127.0.0.1:{free_port()}")  # no server: auto falls back to llama.cpp
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The user bought headphones, a charger and a mouse. Next they will buy\n\nRecommend a movie for a fan of Toy Story and Heat:\n")
    png = tmp_path / "chart.png"
    out = _invoke("bench", "smollm2:135m", str(smollm2_cut_gguf), "--backend", "auto", "--prompts", str(prompts),
                  "--repeats", "2", "--tokens", "6", "--threads", "1", "--json", "--png", str(png))
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    _check_result(data, backend="llama-cpp", prompts=2, tokens=6)
    assert data["original"]["target"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")  # the tag resolved to its GGUF
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_ollama_backend_through_the_cli(ollama_server: OllamaStandIn, smollm2_gguf: Path, smollm2_cut_gguf: Path, tmp_path: Path) -> None:
    ollama_server.add_model("smollm2:135m", smollm2_gguf, template="{{ .Prompt }}")
    run = tmp_path / "run"
    run.mkdir()
    (run / "register.json").write_text(json.dumps({"name": "smollm2-slim"}))
    ollama_server.add_model("smollm2-slim", smollm2_cut_gguf, template="{{ .Prompt }}")
    out = _invoke("bench", "smollm2:135m", str(run), "--repeats", "2", "--tokens", "6", "--json")  # auto: a server answers
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    _check_result(data, backend="ollama", prompts=3, tokens=6)
    assert data["slim"]["target"] == "smollm2-slim"
    generates = [body for path, body in ollama_server.bodies if path == "/api/generate"]
    assert len(generates) == 2 * (1 + 2 * 3)  # a warm-up and two rounds of three prompts each, per model
    assert {g["options"]["num_predict"] for g in generates} == {6} and all(g["stream"] is False for g in generates)
    assert len({g["prompt"] for g in generates if g["model"] == "smollm2-slim"}) == 7  # no round reuses a prompt
    assert json.loads((run / "bench.json").read_text())["ratios"] == data["ratios"]
    table = _invoke("bench", "smollm2:135m", "smollm2-slim", "--backend", "ollama", "--repeats", "1", "--tokens", "2")
    assert table.exit_code == 0 and "generation" in table.output and "ceiling" in table.output


# --------------------------------------------------------------------------- the measurement logic


class _Fake:
    """A backend whose speeds are fixed: slim is twice as fast; records the order of calls."""

    def __init__(self, config: BenchConfig) -> None:
        self.calls: list[tuple[int, str]] = []
        _Fake.last = self

    def run(self, index: int, prompt: str) -> Sample:
        self.calls.append((index, prompt))
        n = len(self.calls)
        return Sample(prompt_tokens=100, prompt_s=(0.5 if index else 1.0) * (1 + n % 3) / 10, gen_tokens=10, gen_s=(0.25 if index else 1.0) * (1 + n % 2))

    def target(self, index: int) -> Target:
        return Target(ref=("a", "b")[index], target=("a", "b")[index], size_bytes=(300, 100)[index], params=None)

    def peak_memory(self, index: int) -> int | None:
        return (2000, 1000)[index]

    def close(self) -> None:
        pass


def test_measurement_alternates_and_takes_medians(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(bench_mod.BACKENDS, "fake", bench_mod.Backend("fake", "test", lambda c: True, _Fake))
    result = bench(BenchConfig(original="a", slim="b", backend="fake", prompts=("p1", "p2"), repeats=3, warmup=1))
    calls = _Fake.last.calls
    assert calls[:2] == [(0, "[warm-up] p1"), (1, "[warm-up] p1")]
    assert [i for i, _ in calls[2:]] == [0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1]  # rounds alternate which model goes first
    assert calls[2:4] == [(0, "[1] p1"), (0, "[1] p2")]
    assert len(result.original.gen_tps.samples) == 3
    assert result.ratios["gen_tps"] == pytest.approx(result.slim.gen_tps.median / result.original.gen_tps.median)
    assert result.ratios["size"] == pytest.approx(1 / 3) and result.ratios["peak_memory"] == 0.5
    assert result.ceilings == {"prompt_tps": None, "gen_tps": None}
    assert json.loads(json.dumps(result.to_json()))["slim"]["gen_tps"]["median"] == result.slim.gen_tps.median


def test_ceilings_from_gguf_headers(tmp_path: Path) -> None:
    counts = param_counts(tiny_gguf(tmp_path / "t.gguf"))
    assert (counts.blocks, counts.layers, counts.embedding, counts.head) == (0, 0, 64, 64)
    assert ceilings(counts, counts) == {"prompt_tps": None, "gen_tps": None}
    full = bench_mod.ParamCounts(blocks=30, layers=300, head=100, embedding=100)
    slim = bench_mod.ParamCounts(blocks=10, layers=100, head=100, embedding=100)
    assert ceilings(full, slim) == {"prompt_tps": 3.0, "gen_tps": 2.0}


def test_bench_errors_are_one_line(ollama_server: OllamaStandIn, tmp_path: Path) -> None:
    gguf = tiny_gguf(tmp_path / "slim.gguf")
    out = _invoke("bench", "smollm2:135m", str(gguf), "--backend", "ollama")
    assert out.exit_code == 2 and "the ollama backend measures models registered in Ollama" in out.output
    out = _invoke("bench", "smollm2:135m", "nothere", "--backend", "ollama")
    assert out.exit_code == 1
    assert out.output.strip() == f"Error: model 'smollm2:135m' is not in Ollama at {ollama_server.url}. pull it (ollama pull NAME) or register it (ollama-slim register GGUF --name NAME)"
    (tmp_path / "empty.txt").write_text("\n \n")
    out = _invoke("bench", "a", "b", "--prompts", str(tmp_path / "empty.txt"))
    assert out.exit_code == 2 and "holds no prompts" in out.output
    with pytest.raises(UsageError):
        read_prompts(tmp_path / "missing.txt")
    (tmp_path / "fake.gguf").write_text("nope")
    out = _invoke("bench", str(gguf), str(tmp_path / "fake.gguf"), "--backend", "llama-cpp")
    assert out.exit_code == 1 and "is not a GGUF file" in out.output


def test_llama_cpp_refuses_a_broken_gguf(smollm2_gguf: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(smollm2_gguf.read_bytes()[: 5_000_000])  # cut off: the header is whole, the tensors are not
    with pytest.raises(SourceError) as err:
        bench(BenchConfig(original=str(smollm2_gguf), slim=str(broken), backend="llama-cpp", repeats=1))
    assert f"llama.cpp cannot run {broken}" in err.value.one_line()


def test_ollama_failure_during_bench_is_one_line(ollama_server: OllamaStandIn, tmp_path: Path) -> None:
    ollama_server.add_model("a", tiny_gguf(tmp_path / "a.gguf"))
    ollama_server.add_model("b", tiny_gguf(tmp_path / "b.gguf"))
    ollama_server.faults.fail["/api/generate"] = [500] * 10
    with pytest.raises(OllamaError) as err:
        bench(BenchConfig(original="a", slim="b", backend="ollama", repeats=1))
    assert err.value.message.startswith(f"Ollama at {ollama_server.url} failed to generate with a: simulated server failure (HTTP 500) (tried 3 times)")


def test_auto_picks_ollama_only_when_it_can(ollama_server: OllamaStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ollama_slim.bench.speed import pick_backend

    gguf = tiny_gguf(tmp_path / "slim.gguf")
    assert pick_backend(BenchConfig(original="smollm2:135m", slim="smollm2-slim")).name == "ollama"
    assert pick_backend(BenchConfig(original="smollm2:135m", slim=str(gguf))).name == "llama-cpp"  # a file: not Ollama's
    assert pick_backend(BenchConfig(original="smollm2:135m", slim=str(tmp_path))).name == "llama-cpp"  # a run dir never registered
    (tmp_path / "register.json").write_text('{"registered": false, "reason": "--no-register"}')
    assert pick_backend(BenchConfig(original="smollm2:135m", slim=str(tmp_path))).name == "llama-cpp"
    with pytest.raises(UsageError, match="has registered no model in Ollama"):
        bench(BenchConfig(original="smollm2:135m", slim=str(tmp_path), backend="ollama"))
    monkeypatch.setenv("OLLAMA_HOST", f"http://127.0.0.1:{free_port()}")
    assert pick_backend(BenchConfig(original="smollm2:135m", slim="smollm2-slim")).name == "llama-cpp"  # no server answers
    with pytest.raises(UsageError, match="unknown backend 'gpu'"):
        pick_backend(BenchConfig(original="a", slim="b", backend="gpu"))
