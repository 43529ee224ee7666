"""The stage bodies of ``prune``: each calls the library function of its own command."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ollama_slim import paths
from ollama_slim.pipeline.layout import RunLayout

StageSpec = tuple[dict[str, Any], list[Path], Callable[[], None]]


@dataclass
class _Plan:
    """Builds each stage's (options, outputs, work) from the prune config and run layout."""

    config: Any  # PruneConfig
    layout: RunLayout
    say: Callable[[str], None]

    def stage(self, name: str) -> StageSpec:
        return getattr(self, f"_{name}")()

    # -- paths -----------------------------------------------------------------------
    @property
    def reference_dir(self) -> Path:
        return self.layout.root / "reference"

    @property
    def original_gguf(self) -> Path:
        return self.layout.root / f"original.{self.config.outtype}.gguf"

    @property
    def finetune_record(self) -> Path:
        return self.layout.root / "finetune.json"

    def eval_path(self, label: str) -> Path:
        return self.layout.root / f"eval_{label}.json"

    def resolved(self) -> dict[str, Any]:
        return paths.read_json(self.layout.resolve)

    def model_dir(self) -> str:
        return self.resolved()["model_dir"]

    # -- stages ----------------------------------------------------------------------
    def _resolve(self) -> StageSpec:
        def work() -> None:
            from ollama_slim.models.sources import resolve

            paths.write_json(self.layout.resolve, resolve(self.config.model, hf=self.config.hf).to_json())

        return {"model": self.config.model, "hf": self.config.hf}, [self.layout.resolve], work

    def _score(self) -> StageSpec:
        c = self.config

        def work() -> None:
            from ollama_slim.slimming.importance.stage import ScoreConfig, score_layers

            score_layers(ScoreConfig(model=c.model, hf=c.hf, data=c.data, methods=c.methods, calib_users=c.calib_users, run_dir=self.layout.root,
                                     dtype=c.dtype, device_map=c.device_map, seed=c.seed, prompt=self.prompt()), progress=self.say)

        return {"data": c.data, "methods": c.methods, "calib_users": c.calib_users, "dtype": c.dtype, "seed": c.seed}, [self.layout.scores], work

    def _select(self) -> StageSpec:
        c = self.config

        def work() -> None:
            from ollama_slim.slimming.selection import SelectConfig, select_layers

            select_layers(SelectConfig(source=str(self.layout.root), hf=c.hf, keep=c.keep, strategy=c.strategy, data=c.data, val_users=c.val_users,
                                       run_dir=self.layout.root, dtype=c.dtype, device_map=c.device_map, seed=c.seed, prompt=self.prompt()), progress=self.say)

        return {"keep": c.keep, "strategy": c.strategy, "val_users": c.val_users}, [self.layout.selection], work

    def _build(self) -> StageSpec:
        c = self.config

        def work() -> None:
            from ollama_slim.slimming.build import BuildConfig, build_compact

            build_compact(BuildConfig(model=c.model, hf=c.hf, selection=self.layout.selection, out_dir=self.layout.compact_dir, bridge=c.bridge,
                                      data=c.data, force=True))

        return {"bridge": c.bridge, "data": c.data}, [self.layout.compact_dir / "config.json"], work

    def _finetune_config(self, model: str, out: Path) -> Any:
        from ollama_slim.slimming.finetune import FinetuneConfig

        c = self.config
        return FinetuneConfig(model=model, hf=c.hf if model == c.model else None, data=c.data, out_dir=out, steps=c.steps, lora_rank=c.lora_rank, lr=c.lr, batch_size=c.batch_size,
                              rank_negatives=c.rank_negatives, rank_weight=c.rank_weight, checkpoint_every=c.checkpoint_every, seed=c.seed, history=c.history, title_words=c.title_words, force=True)

    def _finetune(self) -> StageSpec:
        c = self.config

        def work() -> None:
            from ollama_slim.slimming.finetune import finetune

            if c.steps == 0:
                _copy_model(self.layout.compact_dir, self.layout.healed_dir)
                return
            result = finetune(self._finetune_config(str(self.layout.compact_dir), self.layout.healed_dir), on_step=self._on_step)
            paths.write_json(self.finetune_record, result.to_json())

        options = {"steps": c.steps, "lora_rank": c.lora_rank, "lr": c.lr, "batch_size": c.batch_size, "history": c.history, "title_words": c.title_words}
        if c.rank_negatives:  # absent when off, so earlier runs stay unchanged
            options |= {"rank_negatives": c.rank_negatives, "rank_weight": c.rank_weight}
        return options, [self.layout.healed_dir / "config.json"], work

    def _reference(self) -> StageSpec:
        c = self.config
        wanted = c.use_reference() and c.steps > 0

        def work() -> None:
            from ollama_slim.slimming.finetune import finetune

            if wanted:
                finetune(self._finetune_config(c.model, self.reference_dir), on_step=self._on_step)

        outputs = [self.reference_dir / "config.json"] if wanted else []
        options = {"reference": wanted, "steps": c.steps, "lora_rank": c.lora_rank, "lr": c.lr, "batch_size": c.batch_size}
        if c.rank_negatives:
            options |= {"rank_negatives": c.rank_negatives, "rank_weight": c.rank_weight}
        return options, outputs, work

    def _export(self) -> StageSpec:
        c = self.config

        def work() -> None:
            from ollama_slim.gguf.export import ExportConfig, export_gguf
            from ollama_slim.models.licensing import original_license
            from ollama_slim.ollama.modelfile import chat_for, write_modelfile_for
            from ollama_slim.recsys.prompt import SYSTEM_PROMPT

            result = export_gguf(ExportConfig(model_dir=self.layout.healed_dir, outtype=c.outtype, out=self.layout.gguf, force=True))
            paths.write_json(self.layout.export_record, result.to_json())
            source_gguf = self.resolved().get("gguf_path")  # the original's own tokenizer, when it came as a GGUF
            export_gguf(ExportConfig(model_dir=Path(self.model_dir()), outtype=c.outtype, out=self.original_gguf, force=True, check=False,
                                     tokenizer_gguf=Path(source_gguf) if source_gguf else None, origin=self.resolved()))
            licence = original_license(self.resolved())
            write_modelfile_for(self.layout.gguf, chat=chat_for(gguf=self.layout.gguf, original=self.resolved().get("tag")), out=self.layout.modelfile,
                                system=SYSTEM_PROMPT, license_text=licence.file_text() if licence else None)

        return {"outtype": c.outtype, "modelfile": 2}, [self.layout.gguf, self.layout.modelfile, self.original_gguf, self.layout.export_record], work

    def _register(self) -> StageSpec:
        c = self.config

        def work() -> None:
            from ollama_slim.ollama.register import register

            if c.register:
                result = register(source=self.layout.gguf, name=c.slim_name, force=c.force, host=c.host)
                paths.write_json(self.layout.register, result.to_json())
            else:
                paths.write_json(self.layout.register, {"registered": False, "reason": "--no-register"})

        return {"register": c.register, "name": c.slim_name, "host": c.host}, [self.layout.register], work

    def _bench(self) -> StageSpec:
        c = self.config

        def work() -> None:
            from ollama_slim.bench.speed import BenchConfig, bench

            result = bench(BenchConfig(original=str(self.original_gguf), slim=str(self.layout.gguf), backend="llama-cpp", repeats=c.bench_repeats))
            paths.write_json(self.layout.bench, result.to_json())

        return {"repeats": c.bench_repeats}, [self.layout.bench], work

    def _eval(self) -> StageSpec:
        c = self.config
        targets = self.eval_targets()

        def work() -> None:
            from ollama_slim.recsys.evaluate import EvalConfig, evaluate

            for label, (which, data) in targets.items():
                self.say(f"eval: {label} on {data}")
                config = EvalConfig(data=data, split="test", users=c.eval_users, history=c.history, title_words=c.title_words, seed=c.seed, backend="transformers")
                paths.write_json(self.eval_path(label), evaluate(self.model_for(which), config).to_json())

        options = {"users": c.eval_users, "targets": sorted(targets), "history": c.history, "data": c.data, "cross": c.cross_domain}
        return options, [self.eval_path(label) for label in targets], work

    def eval_targets(self) -> dict[str, tuple[str, str]]:
        """label -> (which model, data set): original zero-shot, slim, reference, cross-domain."""
        c = self.config
        targets = {"original": ("original", c.data), "slim": ("slim", c.data)}
        if c.use_reference() and c.steps > 0:
            targets["reference"] = ("reference", c.data)
        if c.cross_domain:
            targets |= {"cross_original": ("original", c.cross_domain), "cross_slim": ("slim", c.cross_domain)}
        return targets

    def model_for(self, which: str) -> str:
        return {"original": self.model_dir, "slim": lambda: str(self.layout.healed_dir), "reference": lambda: str(self.reference_dir)}[which]()

    def _report(self) -> StageSpec:
        def work() -> None:
            from ollama_slim.pipeline.run_report import write_run_report

            write_run_report(self)

        return {}, [self.layout.report], work

    # -- helpers ---------------------------------------------------------------------
    def prompt(self) -> Any:
        from ollama_slim.recsys.prompt import PromptConfig

        return PromptConfig(history=self.config.history, title_words=self.config.title_words)

    def _on_step(self, p: Any) -> None:
        self.say(f"finetune: step {p.step}/{p.total} loss {p.loss:.3f}")


def _copy_model(src: Path, dst: Path) -> None:
    import shutil

    with paths.atomic_dir(dst) as tmp:
        for file in src.iterdir():
            if file.is_file():
                shutil.copy2(file, tmp / file.name)
