"""The ``share`` stage: a run directory -> a folder that is a complete Hugging Face repository.

Design §7. The folder holds a quantization ladder of the slim GGUF named
``<name>-<QUANT>.gguf`` (so ``ollama run hf.co/USER/REPO:QUANT`` picks one), each
exported from the healed model, checked in llama.cpp and scored on the run's test users
(NDCG@10 with its interval) and speed (tokens/s beside the original, one run each);
Ollama's ``template``, ``system`` and ``params`` files and the ``Modelfile``; the model
card (``README.md``, written with ``huggingface_hub``); the original's ``LICENSE`` (and
``NOTICE``) with the duties of its licence applied. The folder is built under a temp
name and renamed; an unchanged rerun reuses it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from ollama_slim import paths
from ollama_slim.errors import RunError, UsageError
from ollama_slim.models.licensing import License, require_license
from ollama_slim.ollama.modelfile import ModelfileSpec, read_modelfile, render_modelfile
from ollama_slim.pipeline.layout import RunLayout

DEFAULT_QUANTS = ("Q4_K_M", "Q8_0")
SHARE_RECORD = "ollama-slim-share.json"  # inside the folder: what it was made from
Progress = Callable[[str], None]


@dataclass(frozen=True)
class ShareConfig:
    """What to share: ``run_dir`` (a ``prune`` run) into ``out``.

    ``name``: file and model name (default: the registered name or the run's folder
    name; a licence's name prefix is applied). ``users``: test users each quantization is
    scored on (default: the run's own evaluation). ``repo``: ``USER/REPO`` the card names.
    """

    run_dir: Path
    out: Path
    quants: tuple[str, ...] = DEFAULT_QUANTS
    license: str | None = None
    name: str | None = None
    users: int | None = None
    bench_repeats: int = 3
    repo: str | None = None
    force: bool = False


@dataclass(frozen=True)
class QuantResult:
    """One GGUF of the ladder: its file, llama.cpp check, quality and speed."""

    quant: str
    file: str
    size_bytes: int
    check: dict[str, Any] | None
    ndcg: dict[str, float]  # mean, low, high (95% bootstrap)
    metrics: dict[str, dict[str, float]]
    prompt_tps: float | None
    gen_tps: float | None
    speedup: dict[str, float | None]  # slim / original, in the same bench run


@dataclass
class ShareResult:
    """The prepared folder and what is in it."""

    out: Path
    name: str
    license: dict[str, Any]
    quants: list[QuantResult]
    files: list[str]
    reused: bool = False
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = str(self.out)
        return d


# --- the stage ------------------------------------------------------------------------


def prepare_share(config: ShareConfig, *, progress: Progress | None = None) -> ShareResult:
    """Write the Hub folder of ``config.run_dir`` into ``config.out`` (or reuse an unchanged one)."""
    say = progress or (lambda _msg: None)
    run = ShareRun.read(config.run_dir)
    quants = normalise_quants(config.quants)
    licence = require_license(run.resolved, override=config.license)
    name = share_name(config.name or run.default_name(), licence)
    key = _input_key(run, config, quants=quants, licence=licence, name=name)
    reused = _reusable(config.out, key, force=config.force)
    if reused is not None:
        say(f"share: {config.out} is up to date")
        return reused
    with paths.atomic_dir(config.out) as tmp:
        results = [_one_quant(run, config, quant=q, licence=licence, name=name, folder=tmp, say=say) for q in quants]
        files = _write_files(run, config, folder=tmp, name=name, licence=licence, results=results)
        result = ShareResult(out=config.out, name=name, license=licence.to_json(), quants=results, files=files, warnings=_warnings(licence))
        paths.write_json(tmp / SHARE_RECORD, {"key": key, "result": result.to_json()})
    return result


def normalise_quants(quants: tuple[str, ...] | list[str]) -> list[str]:
    """``q4_k_m,Q8_0`` -> ``["Q4_K_M", "Q8_0"]``; unknown names fail with the known ones."""
    from ollama_slim.gguf.export import outtypes

    known = {o.upper(): o for o in outtypes()}
    out = []
    for quant in quants:
        upper = quant.strip().upper()
        if upper not in known:
            raise UsageError(f"--quants: {quant!r} is not a quantization ollama-slim can write", hint=f"choose from {', '.join(known)}")
        if upper not in out:
            out.append(upper)
    if not out:
        raise UsageError("--quants is empty", hint=f"give at least one, e.g. {','.join(DEFAULT_QUANTS)}")
    return out


def share_name(name: str, licence: License) -> str:
    """``name`` with the licence's required prefix (Llama: the name begins with "Llama")."""
    from ollama_slim.models.tags import parse_name

    prefix = licence.name_prefix
    if prefix and not name.lower().replace("-", " ").startswith(prefix.lower()):
        name = f"{prefix.replace(' ', '-')}-{name}"
    parse_name(name)  # a name Ollama would refuse fails here, with its rules
    return name


def _warnings(licence: License) -> list[str]:
    if licence.text or not licence.link:
        return []
    return [f"LICENSE holds a notice, not the full text of the {licence.name} (not found in the Ollama store or the HF cache): "
            f"add the text from {licence.link} before publishing"]


# --- the run --------------------------------------------------------------------------


@dataclass(frozen=True)
class ShareRun:
    """The files of a finished run that a share needs."""

    layout: RunLayout
    resolved: dict[str, Any]
    modelfile: ModelfileSpec
    prune: dict[str, Any]

    @classmethod
    def read(cls, run_dir: Path) -> "ShareRun":
        layout = RunLayout(Path(run_dir))
        needed = [layout.resolve, layout.healed_dir / "config.json", layout.gguf, layout.modelfile]
        missing = [p for p in needed if not p.exists()]
        if not layout.root.is_dir() or missing:
            what = "is not a directory" if not layout.root.is_dir() else f"has no {missing[0].relative_to(layout.root)}"
            raise RunError(f"run directory {run_dir} {what}", hint="share a finished run: ollama-slim prune MODEL --keep K (or rerun it to finish)")
        prune = paths.read_json(layout.prune_record) if layout.prune_record.is_file() else {}
        return cls(layout=layout, resolved=paths.read_json(layout.resolve), modelfile=read_modelfile(layout.modelfile), prune=prune)

    def default_name(self) -> str:
        register = self.read_json(self.layout.register)
        return register.get("name") if register.get("registered", True) and register.get("name") else self.layout.root.resolve().name

    def read_json(self, path: Path) -> dict[str, Any]:
        """A result file of the run (a :class:`RunLayout` path), or ``{}`` when the run has none."""
        return paths.read_json(path) if path.is_file() else {}

    @property
    def slim_eval(self) -> dict[str, Any]:
        """The run's own test evaluation of the slim model (``eval_slim.json``)."""
        return self.read_json(self.layout.eval_record("slim"))

    def eval_config(self, users: int | None) -> Any:
        """The run's own test evaluation (same users and candidates), through llama.cpp."""
        from ollama_slim.recsys.evaluate import EvalConfig

        recorded = self.slim_eval.get("config")
        if not recorded:
            raise RunError(f"{self.layout.root} has no test evaluation of the slim model ({self.layout.eval_record('slim').name})", hint="finish the run first (ollama-slim prune ... resumes it)")
        fields = {k: v for k, v in recorded.items() if k in EvalConfig.__dataclass_fields__}
        return replace(EvalConfig(**fields), backend="llama-cpp", users=users or fields.get("users"))

    def original_gguf(self) -> Path | None:
        return self.layout.find_original_gguf()


def _input_key(run: ShareRun, config: ShareConfig, **chosen: Any) -> str:
    """A hash of everything the folder depends on: the healed weights, the run's files, the options."""
    h = hashlib.sha256()
    for file in sorted(run.layout.healed_dir.glob("*")) + [run.layout.modelfile, run.layout.eval_record("slim")]:
        if file.is_file():
            h.update(file.name.encode())
            h.update(str(file.stat().st_size).encode() + str(file.stat().st_mtime_ns).encode())
    options = {"users": config.users, "repeats": config.bench_repeats, "repo": config.repo, **chosen}
    h.update(json.dumps(options, sort_keys=True, default=lambda o: getattr(o, "id", str(o))).encode())
    return h.hexdigest()


def _reusable(out: Path, key: str, *, force: bool) -> ShareResult | None:
    """The folder's result when it was made from the same inputs; an error when it is another's."""
    if not out.exists():
        return None
    record_file = out / SHARE_RECORD
    record = paths.read_json(record_file) if record_file.is_file() else {}
    if record.get("key") == key and not force:
        r = record["result"]
        return ShareResult(out=out, name=r["name"], license=r["license"], quants=[QuantResult(**q) for q in r["quants"]], files=r["files"], reused=True, warnings=r.get("warnings", []))
    if not force:
        raise UsageError(f"{out} already exists and was not made from this run with these options", hint="pass --force to replace it, or choose another --out")
    return None


# --- one quantization ---------------------------------------------------------------------


def _one_quant(run: ShareRun, config: ShareConfig, *, quant: str, licence: License, name: str, folder: Path, say: Progress) -> QuantResult:
    """Export, check, score and time one GGUF of the ladder into ``folder``."""
    from ollama_slim.recsys.evaluate import evaluate
    from ollama_slim.gguf.export import ExportConfig, export_gguf

    file = folder / f"{name}-{quant}.gguf"
    say(f"share: export {file.name} and check it in llama.cpp")
    exported = export_gguf(ExportConfig(model_dir=run.layout.healed_dir, outtype=quant.lower(), out=file, force=True, license=licence.id, name=name))
    say(f"share: score {file.name} on the run's test users")
    scored = evaluate(str(file), run.eval_config(config.users))
    ndcg = scored.metrics["ndcg@10"].to_json()
    speed = _speed(run, file, repeats=config.bench_repeats, say=say)
    return QuantResult(quant=quant, file=file.name, size_bytes=exported.size_bytes, check=exported.check.to_json() if exported.check else None,
                       ndcg=ndcg, metrics={k: v.to_json() for k, v in scored.metrics.items()}, **speed)


def _speed(run: ShareRun, file: Path, *, repeats: int, say: Progress) -> dict[str, Any]:
    """Tokens/s of ``file`` and its ratios to the original, measured in one llama.cpp run."""
    from ollama_slim.bench.speed import BenchConfig, bench

    original = run.original_gguf()
    if original is None or repeats <= 0:
        return {"prompt_tps": None, "gen_tps": None, "speedup": {}}
    say(f"share: time {file.name} beside {original.name}")
    result = bench(BenchConfig(original=str(original), slim=str(file), backend="llama-cpp", repeats=repeats))
    return {"prompt_tps": result.slim.prompt_tps.median, "gen_tps": result.slim.gen_tps.median, "speedup": dict(result.ratios)}


# --- the other files ----------------------------------------------------------------------


def _write_files(run: ShareRun, config: ShareConfig, *, folder: Path, name: str, licence: License, results: list[QuantResult]) -> list[str]:
    """Ollama's template/system/params, the Modelfile, LICENSE/NOTICE, plots and the card."""
    from ollama_slim.sharing.card import write_card

    spec = replace(run.modelfile, from_=f"./{results[0].file}", license=licence.file_text(),
                   comments=(f"Modelfile of {name}, written by ollama-slim share", "ollama create NAME -f Modelfile"))
    if spec.template:
        paths.write_text(folder / "template", spec.template)
    if spec.system:
        paths.write_text(folder / "system", spec.system)
    paths.write_json(folder / "params", ollama_params(spec))
    paths.write_text(folder / "Modelfile", render_modelfile(spec))
    paths.write_text(folder / "LICENSE", licence.file_text())
    if licence.notice:
        paths.write_text(folder / "NOTICE", licence.notice + "\n")
    for plot in run.layout.plots:
        if plot.is_file():
            shutil.copy2(plot, folder / plot.name)
    write_card(folder / "README.md", run=run, name=name, licence=licence, results=results, repo=config.repo)
    return sorted(p.name for p in folder.iterdir())


def ollama_params(spec: ModelfileSpec) -> dict[str, Any]:
    """The ``params`` file of a Hub repository: Ollama's parameters as JSON (stops as a list)."""
    from ollama_slim.ollama.register import typed

    params: dict[str, Any] = {key: typed(value) for key, value in spec.parameters}
    if spec.stops:
        params["stop"] = list(spec.stops)
    return params


# --- publishing ------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishConfig:
    """Where to publish a prepared folder: a Hub repo (``USER/REPO``) and/or an Ollama name (``USER/NAME``)."""

    hf: str | None = None
    private: bool = False
    ollama: str | None = None
    host: str | None = None
    force: bool = False


def publish(result: ShareResult, run_dir: Path, config: PublishConfig, *, progress: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Upload the folder to the Hub and/or push the registered model to Ollama's registry.

    What was published is recorded in the run's ``share.json``; an unchanged rerun is a no-op.
    """
    layout = RunLayout(Path(run_dir))
    record = paths.read_json(layout.share_record) if layout.share_record.is_file() else {}
    record["folder"] = result.to_json()
    if config.hf:
        from ollama_slim.sharing.hub import publish_hf

        record["hf"] = publish_hf(result.out, config.hf, private=config.private, force=config.force, progress=progress).to_json()
    if config.ollama:
        from ollama_slim.ollama.publish import publish_ollama

        registered = paths.read_json(layout.register) if layout.register.is_file() else {}
        if not (registered.get("registered", True) and registered.get("name")):
            raise RunError(f"{run_dir} registered no model in Ollama", hint=f"register it first: ollama-slim register {run_dir} --name NAME")
        record["ollama"] = publish_ollama(source=registered["name"], dest=config.ollama, force=config.force, host=config.host,
                                          record=layout.root / "ollama-push.json", progress=progress).to_json()
    paths.write_json(layout.share_record, record)
    return record
