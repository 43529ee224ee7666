"""Speed benchmark: the original and the slim model in one run, as ratios (design §7).

Each backend (registered by name in :mod:`ollama_slim.bench.registry`) runs one generation per prompt and
reports prompt and generation tokens and seconds. Both models get a warm-up first, then
``repeats`` rounds in alternating order (so drift on a shared machine hits both alike);
a round's tokens/s is its tokens over its seconds, and the result keeps the median and
the min-max of the rounds. Ratios are slim / original of the medians. Beside them stand
the ceilings that parameter counts allow: generation reads every layer and the output
head per token, prompt processing is dominated by the layers.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ollama_slim import paths
from ollama_slim.bench.registry import BACKENDS, BUILTIN, Backend, backend_names, backends, pick_backend, register_backend
from ollama_slim.errors import UsageError
from ollama_slim.pipeline.layout import RunLayout

__all__ = ["BACKENDS", "BUILTIN", "Backend", "BenchConfig", "BenchResult", "backend_names", "backends", "bench", "pick_backend", "register_backend"]

DEFAULT_PROMPTS = (
    "A customer bought a pair of wireless noise cancelling headphones, a USB C charger, a 64GB microSD card, "
    "a laptop stand and an HDMI cable. Suggest the next item they are most likely to buy and explain why in two sentences.",
    "Here is a list of movies a user watched: Toy Story, GoldenEye, Heat, Sense and Sensibility, Braveheart, Apollo 13, "
    "Jumanji and The Usual Suspects. Recommend one more movie for this user and give a short reason.",
    "Write a short product description for a compact Bluetooth speaker that is waterproof, has a twelve hour battery, "
    "pairs with two phones at once and comes in four colours.",
)


@dataclass(frozen=True)
class BenchConfig:
    """What to compare and how."""

    original: str
    slim: str
    backend: str = "auto"
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    repeats: int = 5
    warmup: int = 1
    n_predict: int = 64
    threads: int | None = None  # llama.cpp threads (None: its default)
    n_ctx: int = 1024
    host: str | None = None
    run_dir: Path | None = None  # a run: the result also goes to its bench.json (default: ``slim``, when it is a directory)


@dataclass(frozen=True)
class Sample:
    """One generation: prompt tokens evaluated, generated tokens, and their seconds."""

    prompt_tokens: int
    prompt_s: float
    gen_tokens: int
    gen_s: float


@dataclass(frozen=True)
class Spread:
    """Median and range of per-round tokens/s."""

    median: float
    min: float
    max: float
    samples: tuple[float, ...]

    @classmethod
    def of(cls, values: list[float]) -> "Spread":
        return cls(median=statistics.median(values), min=min(values), max=max(values), samples=tuple(values))


@dataclass(frozen=True)
class ParamCounts:
    """Parameters of a GGUF by role: the blocks, the output head (the embedding when tied)."""

    blocks: int
    layers: int
    head: int
    embedding: int


@dataclass(frozen=True)
class Target:
    """What a backend measures for one model reference."""

    ref: str
    target: str  # a GGUF path or an Ollama model name
    size_bytes: int | None
    params: ParamCounts | None


@dataclass(frozen=True)
class ModelSpeed:
    """One model's measurements."""

    ref: str
    target: str
    size_bytes: int | None
    peak_memory_bytes: int | None
    prompt_tokens: int  # per round
    gen_tokens: int  # per round
    prompt_tps: Spread
    gen_tps: Spread
    params: ParamCounts | None


@dataclass(frozen=True)
class BenchResult:
    """Original vs slim, measured in one run."""

    backend: str
    config: dict[str, Any]
    original: ModelSpeed
    slim: ModelSpeed
    ratios: dict[str, float | None] = field(default_factory=dict)  # slim / original
    ceilings: dict[str, float | None] = field(default_factory=dict)  # the most the parameter counts allow

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Session(Protocol):
    """A backend holding both models ready (index 0: original, 1: slim)."""

    def target(self, index: int) -> Target: ...

    def run(self, index: int, prompt: str) -> Sample: ...

    def peak_memory(self, index: int) -> int | None: ...

    def close(self) -> None: ...


def bench(config: BenchConfig) -> BenchResult:
    """Measure ``config.original`` and ``config.slim`` with one backend, in one run."""
    _validate(config)
    backend = pick_backend(config)
    session = backend.open(config)
    try:
        samples = measure(session, config)
        speeds = [_speed(session.target(i), samples[i], session.peak_memory(i)) for i in (0, 1)]
    finally:
        session.close()
    settings = {k: v for k, v in asdict(config).items() if k != "run_dir"} | {"prompts": len(config.prompts)}
    result = BenchResult(backend=backend.name, config=settings, original=speeds[0], slim=speeds[1], ratios=ratios(speeds[0], speeds[1]), ceilings=ceilings(speeds[0].params, speeds[1].params))
    run_dir = config.run_dir or (Path(config.slim) if Path(config.slim).is_dir() else None)
    if run_dir is not None:
        paths.write_json(RunLayout(Path(run_dir)).bench, result.to_json())
    return result


def _validate(config: BenchConfig) -> None:
    if config.repeats < 1 or config.warmup < 0 or config.n_predict < 1:
        raise UsageError("--repeats and the number of tokens must be at least 1", hint="e.g. --repeats 5")
    if not config.prompts or not all(p.strip() for p in config.prompts):
        raise UsageError("no prompts to benchmark with", hint="give a --prompts file with one prompt per line")


def measure(session: Session, config: BenchConfig) -> list[list[Sample]]:
    """Warm both models up, then ``repeats`` rounds in alternating order; one summed Sample per round.

    Each round prefixes its prompts with the round number, so a server's prompt cache
    cannot serve one round from the last.
    """
    for index in (0, 1):
        for _ in range(config.warmup):
            session.run(index, f"[warm-up] {config.prompts[0]}")
    rounds: list[list[Sample]] = [[], []]
    for r in range(config.repeats):
        for index in ((0, 1) if r % 2 == 0 else (1, 0)):
            runs = [session.run(index, f"[{r + 1}] {prompt}") for prompt in config.prompts]
            rounds[index].append(Sample(
                prompt_tokens=sum(s.prompt_tokens for s in runs), prompt_s=sum(s.prompt_s for s in runs),
                gen_tokens=sum(s.gen_tokens for s in runs), gen_s=sum(s.gen_s for s in runs),
            ))
    return rounds


def _speed(target: Target, rounds: list[Sample], peak: int | None) -> ModelSpeed:
    return ModelSpeed(
        ref=target.ref, target=target.target, size_bytes=target.size_bytes, peak_memory_bytes=peak,
        prompt_tokens=rounds[0].prompt_tokens, gen_tokens=rounds[0].gen_tokens,
        prompt_tps=Spread.of([s.prompt_tokens / s.prompt_s for s in rounds]),
        gen_tps=Spread.of([s.gen_tokens / s.gen_s for s in rounds]), params=target.params,
    )


def _ratio(slim: float | None, original: float | None) -> float | None:
    return slim / original if slim and original else None


def ratios(original: ModelSpeed, slim: ModelSpeed) -> dict[str, float | None]:
    """slim / original of the medians (speed > 1 is faster), sizes and peak memory."""
    return {
        "prompt_tps": _ratio(slim.prompt_tps.median, original.prompt_tps.median),
        "gen_tps": _ratio(slim.gen_tps.median, original.gen_tps.median),
        "size": _ratio(slim.size_bytes, original.size_bytes),
        "peak_memory": _ratio(slim.peak_memory_bytes, original.peak_memory_bytes),
    }


def ceilings(original: ParamCounts | None, slim: ParamCounts | None) -> dict[str, float | None]:
    """The speed-ups parameter counts allow: generation reads blocks + output head per token,
    prompt processing computes the blocks for every token and the head for the last only."""
    if original is None or slim is None or not slim.layers:
        return {"prompt_tps": None, "gen_tps": None}
    return {"prompt_tps": original.layers / slim.layers, "gen_tps": (original.layers + original.head) / (slim.layers + slim.head)}


def param_counts(gguf: Path) -> ParamCounts | None:
    """Parameter counts of a GGUF from its header (no weights read)."""
    from ollama_slim.gguf.header import read_header

    header = read_header(gguf)
    if header is None:
        return None
    blocks = {name.split(".")[1] for name in header.tensors if name.startswith("blk.")}
    layers = sum(header.numel(n) for n in header.tensors if n.startswith("blk."))
    embedding = header.numel("token_embd.weight") if "token_embd.weight" in header.tensors else 0
    head = header.numel("output.weight") if "output.weight" in header.tensors else embedding
    return ParamCounts(blocks=len(blocks), layers=layers, head=head, embedding=embedding)


def read_prompts(path: str | Path) -> tuple[str, ...]:
    """One prompt per non-empty line of a UTF-8 text file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read prompts from {path} ({type(err).__name__})", hint="give a UTF-8 text file with one prompt per line") from None
    prompts = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not prompts:
        raise UsageError(f"{path} holds no prompts", hint="write one prompt per line")
    return prompts


def plot_bench(result: BenchResult, path: str | Path) -> Path:
    """A PNG: tokens/s of original and slim (medians, min-max bars), ratios and ceilings in the titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, key, label in zip(axes, ("prompt_tps", "gen_tps"), ("prompt tokens/s", "generation tokens/s")):
        spreads = [getattr(result.original, key), getattr(result.slim, key)]
        medians = [s.median for s in spreads]
        errors = [[m - s.min for m, s in zip(medians, spreads)], [s.max - m for m, s in zip(medians, spreads)]]
        ax.bar(["original", "slim"], medians, yerr=errors, capsize=6, color=["#8a8a8a", "#2a7ab9"])
        ratio, ceiling = result.ratios.get(key), result.ceilings.get(key)
        ax.set_title(f"{label}: x{ratio:.2f}" + (f" (ceiling x{ceiling:.2f})" if ceiling else "") if ratio else label)
        ax.set_ylabel("tokens/s")
    fig.suptitle(f"{result.slim.ref} vs {result.original.ref} ({result.backend}, median of {result.config['repeats']})")
    fig.tight_layout()
    with paths.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)

