"""The ``finetune`` stage: heal a compact model (or fine-tune the full reference), design §6.

Next-item title loss on the train split (the target title given the history prompt),
optionally mixed with a ranking loss over the target and seeded negatives (uniform and/or
popularity-weighted; each candidate scored like evaluation scores it, all packed after one
prompt in one row), optionally distillation from a teacher (KL on the target title tokens;
with their options, KL on its distribution over the candidates and alignment with its
hidden states at the kept layers' original indices, its outputs cached per example),
through LoRA (``peft``, merged before saving) or full fine-tuning; bridges may train too
and fold at the end. Optionally early stopping on a validation measure, keeping the best
weights. Checkpoints are written atomically every N steps; a rerun resumes from the last
one and ends with the same weights as an uninterrupted run with the same seed. Runs under
``accelerate launch`` (data parallel, bf16); on one CPU the accelerator is a no-op.

- :mod:`.config`: settings, progress, result, where the run reads and writes;
- :mod:`.data`: train examples, seeded batches and negatives, encoded like evaluation;
- :mod:`.losses`: title, ranking and distillation losses (logits from :mod:`ollama_slim.models.lm`);
- :mod:`.trainee`: LoRA or full, trainable bridges, the teacher, the merged model;
- :mod:`.teacher`: the teacher's outputs per example and their cache on disk;
- :mod:`.distill`: listwise KD and hidden-state alignment: which teacher layers, one step's loss;
- :mod:`.validation`: validation measures and early stopping;
- :mod:`.checkpoints`: atomic checkpoints and resuming;
- :mod:`.loop`: learning-rate schedule and optimizer steps;
- :mod:`.stage`: :func:`finetune`, the stage itself.
"""

from ollama_slim.slimming.finetune.config import FinetuneConfig, FinetuneProgress, FinetuneResult, check_config
from ollama_slim.slimming.finetune.stage import finetune

__all__ = ["FinetuneConfig", "FinetuneProgress", "FinetuneResult", "check_config", "finetune"]
