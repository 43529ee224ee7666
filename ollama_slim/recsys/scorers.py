"""Candidate scorers for evaluation, registered by name (``transformers``, ``llama-cpp``).

A scorer turns one user's prompt token ids and candidate title token ids into one
length-normalised log-likelihood per candidate, running the prompt once and reusing
its state for every candidate. Both backends take the same token ids, so a GGUF and
its transformers twin are scored on identical inputs.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from ollama_slim.errors import SourceError, UsageError


@dataclass(frozen=True)
class ScorerOptions:
    """``batch``: candidates per forward pass; ``dtype`` (transformers); ``context``
    (llama.cpp); ``threads``: CPU threads (``None``: torch's default, all cores for llama.cpp)."""

    batch: int = 32
    dtype: str = "float32"
    context: int = 1024
    threads: int | None = None


class Scorer(Protocol):
    """What :func:`ollama_slim.recsys.evaluate.evaluate` needs from a backend."""

    name: str
    tokenizer: Any  # callable like a HF tokenizer, with bos/eos/pad token ids

    def score(self, prompt: list[int], candidates: list[list[int]]) -> np.ndarray:
        """Mean log-prob of each candidate given ``prompt``: shape [C]."""

    def using_layers(self, layers: list[int] | None) -> Any:
        """A context in which only decoder ``layers`` run (``None``: all of them)."""


SCORERS: dict[str, Callable[..., Scorer]] = {}


def register_scorer(name: str) -> Callable[[Callable[..., Scorer]], Callable[..., Scorer]]:
    """Register ``factory(model_ref, *, options) -> Scorer`` under ``name``."""

    def wrap(factory: Callable[..., Scorer]) -> Callable[..., Scorer]:
        SCORERS[name] = factory
        return factory

    return wrap


def backend_for(model_ref: str, backend: str = "auto") -> str:
    """``auto`` -> ``llama-cpp`` for a ``.gguf`` file or an ``hf.co/`` reference (the shipped
    GGUF is what is measured), ``transformers`` otherwise."""
    if backend == "auto":
        from ollama_slim.sharing.hub import parse_hf_ref

        gguf = str(model_ref).endswith(".gguf") or parse_hf_ref(str(model_ref)) is not None
        return "llama-cpp" if gguf else "transformers"
    if backend not in SCORERS:
        raise UsageError(f"unknown backend {backend!r}", hint=f"use one of: auto, {', '.join(SCORERS)}")
    return backend


def make_scorer(model_ref: str, *, backend: str = "auto", options: ScorerOptions = ScorerOptions()) -> Scorer:
    """The scorer of ``model_ref`` (an Ollama tag, HF directory or GGUF file)."""
    return SCORERS[backend_for(model_ref, backend)](model_ref, options=options)


# --- transformers ---------------------------------------------------------------------


@dataclass
class TransformersScorer:
    """Shared-prefix scoring (:func:`ollama_slim.models.lm.score_shared_prefix`) of a loaded model."""

    model: Any
    tokenizer: Any
    batch: int = 32
    name: str = "transformers"

    def score(self, prompt: list[int], candidates: list[list[int]]) -> np.ndarray:
        """[C] scores; candidates in chunks of ``batch`` (each chunk runs the prompt once)."""
        import torch

        from ollama_slim.models.lm import score_shared_prefix

        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        step = max(1, self.batch)
        parts = [score_shared_prefix(self.model, prompt, candidates[i : i + step], pad_id=pad) for i in range(0, len(candidates), step)]
        return torch.cat(parts).double().numpy()

    def using_layers(self, layers: list[int] | None) -> Any:
        """The model running only decoder ``layers``, renumbered (:func:`ollama_slim.models.lm.layer_subset`)."""
        from ollama_slim.models.lm import layer_subset

        return layer_subset(self.model, layers)


@register_scorer("transformers")
def transformers_scorer(model_ref: str, *, options: ScorerOptions = ScorerOptions()) -> TransformersScorer:
    """Resolve ``model_ref`` (tag, HF directory, GGUF dequantized) and load it with transformers."""
    from ollama_slim.models.modeling import LoadOptions, load
    from ollama_slim.models.sources import resolve

    if options.threads:
        import torch

        torch.set_num_threads(options.threads)
    resolved = resolve(str(model_ref))
    model, tokenizer = load(resolved.model_dir, LoadOptions(dtype=options.dtype))
    return TransformersScorer(model=model, tokenizer=tokenizer, batch=options.batch)


# --- llama.cpp --------------------------------------------------------------------------


class LlamaCppTokenizer:
    """llama.cpp's own tokenizer behind the small part of the HF tokenizer interface we use."""

    def __init__(self, llm: Any) -> None:
        self._llm = llm
        bos, eos = llm.token_bos(), llm.token_eos()
        self.bos_token_id = bos if bos >= 0 else None  # as encode_prompt does with HF tokenizers
        self.eos_token_id = eos if eos >= 0 else None
        self.pad_token_id = self.eos_token_id

    def _ids(self, text: str, bos: bool) -> list[int]:
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=bos, special=True))  # special-token text (a chat template's) parsed, as HF does

    def __call__(self, text: str | list[str], add_special_tokens: bool = False) -> dict[str, Any]:
        if isinstance(text, str):
            return {"input_ids": self._ids(text, add_special_tokens)}
        return {"input_ids": [self._ids(t, add_special_tokens) for t in text]}


class LlamaCppScorer:
    """A GGUF scored through llama-cpp-python, one decode per user: the prompt's tokens belong
    to every candidate's sequence and each candidate's tokens to its own, in one batch over
    llama.cpp's unified KV cache, so the prompt runs once and the candidates side by side
    (what the transformers scorer does with its batched cache). Candidates that do not fit
    one batch (more than ``SEQUENCES``, or past the context) go in further batches."""

    name = "llama-cpp"
    SEQUENCES = 64

    def __init__(self, gguf_path: Path, *, tokenizer: Any | None = None, options: ScorerOptions = ScorerOptions()) -> None:
        import llama_cpp
        from llama_cpp import Llama, _internals

        threads = options.threads or os.cpu_count() or 1
        self.sequences = min(self.SEQUENCES, int(llama_cpp.llama_max_parallel_sequences()))
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = params.n_batch = options.context
        params.n_ubatch = min(512, options.context)
        params.n_seq_max, params.kv_unified = self.sequences, True
        params.n_threads = params.n_threads_batch = threads
        try:  # the model and its tokenizer (a small context of its own), and the scoring context
            self.llm = Llama(model_path=str(gguf_path), n_ctx=64, n_batch=64, n_threads=threads, n_threads_batch=threads, verbose=False)
            self._ctx = _internals.LlamaContext(model=self.llm._model, params=params, verbose=False)
        except (ValueError, RuntimeError) as err:
            raise SourceError(f"llama.cpp cannot load {gguf_path} ({str(err).splitlines()[0] if str(err) else type(err).__name__})", hint="check that the file is a complete GGUF of a supported architecture") from None
        self._batch = _internals.LlamaBatch(n_tokens=options.context, embd=0, n_seq_max=self.sequences, verbose=False)
        self.n_vocab = self.llm.n_vocab()
        self.tokenizer = tokenizer if tokenizer is not None else LlamaCppTokenizer(self.llm)
        self.context = options.context

    def score(self, prompt: list[int], candidates: list[list[int]]) -> np.ndarray:
        """[C] mean log-prob of each candidate after ``prompt`` (float64 log-softmax of llama.cpp's logits)."""
        p = len(prompt)
        longest = max(len(c) for c in candidates)
        if p + longest > self.context:
            raise UsageError(f"prompt of {p} tokens + candidate of {longest} exceed the llama.cpp context of {self.context}", hint="lower --history or --title-tokens")
        distinct = list(dict.fromkeys(tuple(c) for c in candidates))  # a title in both regimes' lists runs once
        if len(distinct) < len(candidates):
            where = {cand: i for i, cand in enumerate(distinct)}
            return self.score(prompt, [list(c) for c in distinct])[[where[tuple(c)] for c in candidates]]
        out, chunk, used = [], [], p
        for cand in candidates:
            if chunk and (len(chunk) == self.sequences or used + len(cand) - 1 > self.context):
                out.append(self._score_together(prompt, chunk))
                chunk, used = [], p
            chunk.append(cand)
            used += len(cand) - 1
        out.append(self._score_together(prompt, chunk))
        return np.concatenate(out)

    def _score_together(self, prompt: list[int], candidates: list[list[int]]) -> np.ndarray:
        """One decode: ``prompt`` in every candidate's sequence, each candidate but its last token in its own."""
        import llama_cpp
        import torch

        from ollama_slim.models.lm import mean_token_logprob

        batch, p = self._batch.batch, len(prompt)
        rows: list[list[int]] = []  # per candidate: the batch rows whose logits predict its 2nd, 3rd... token
        n = 0

        def put(token: int, pos: int, seqs: range | list[int], logits: bool) -> None:
            nonlocal n
            batch.token[n], batch.pos[n], batch.n_seq_id[n], batch.logits[n] = token, pos, len(seqs), logits
            for k, seq in enumerate(seqs):
                batch.seq_id[n][k] = seq
            n += 1

        for i, token in enumerate(prompt):
            put(token, i, range(len(candidates)), i == p - 1)
        for seq, cand in enumerate(candidates):
            rows.append(list(range(n, n + len(cand) - 1)))
            for j, token in enumerate(cand[:-1]):
                put(token, p + j, [seq], True)
        batch.n_tokens = n
        llama_cpp.llama_memory_clear(self._ctx.memory, True)
        status = llama_cpp.llama_decode(self._ctx.ctx, batch)
        if status != 0:
            raise UsageError(f"llama.cpp could not decode {n} tokens (status {status})", hint="lower --history or --title-tokens, or use the transformers backend")

        def logits(row: int) -> torch.Tensor:
            return torch.tensor(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx.ctx, row), shape=(self.n_vocab,)), dtype=torch.float64)

        first = logits(p - 1)  # predicts each candidate's first token
        scores = [mean_token_logprob(torch.stack([first, *(logits(r) for r in rows[i])]), torch.tensor(cand, dtype=torch.long)) for i, cand in enumerate(candidates)]
        return np.array([float(s) for s in scores])

    def using_layers(self, layers: list[int] | None) -> Any:
        if layers is not None:
            raise UsageError("a layer subset needs the transformers backend", hint="evaluate the HF directory of the model, or build the compact model first")
        return nullcontext()


@register_scorer("llama-cpp")
def llama_cpp_scorer(model_ref: str, *, options: ScorerOptions = ScorerOptions()) -> LlamaCppScorer:
    """A ``.gguf`` file or an ``hf.co/`` GGUF (llama.cpp's tokenizer), or a tag whose source is a GGUF (its HF tokenizer)."""
    from ollama_slim.sharing.hub import parse_hf_ref, ref_gguf

    path = Path(str(model_ref)).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise SourceError(f"GGUF file {path} does not exist", hint="check the path")
        return LlamaCppScorer(path, options=options)
    hf_ref = parse_hf_ref(str(model_ref))
    if hf_ref is not None:
        return LlamaCppScorer(ref_gguf(hf_ref)[0], options=options)
    from ollama_slim.models.modeling import load_tokenizer
    from ollama_slim.models.sources import resolve

    resolved = resolve(str(model_ref))
    if resolved.gguf_path is None:
        raise UsageError(f"{model_ref} has no GGUF for the llama-cpp backend", hint="pass a .gguf file or use --backend transformers")
    return LlamaCppScorer(resolved.gguf_path, tokenizer=load_tokenizer(resolved.model_dir), options=options)
