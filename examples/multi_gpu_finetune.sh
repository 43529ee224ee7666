#!/usr/bin/env bash
# Heal a slim Llama-3.1-8B on several GPUs: data-parallel fine-tuning in bfloat16 under
# accelerate. Scoring and selection spread the full model over the GPUs with
# --device-map auto; fine-tuning runs one replica per GPU.
set -euo pipefail
DATA=${DATA:-../shared/data/amazon-electronics-2014}
RUN=${RUN:-runs/llama3.1-8b}

ollama-slim score llama3.1:8b --data "$DATA" --methods block-influence,angular,ablation \
    --calib-users 64 --dtype bfloat16 --device-map auto --run-dir "$RUN"
ollama-slim select "$RUN" --keep 16 --strategy ranked --data "$DATA"
ollama-slim build llama3.1:8b --selection "$RUN/selection.json" --bridge mlp-fold --data "$DATA" --out "$RUN/compact"
accelerate launch --multi_gpu --num_processes "${GPUS:-4}" --mixed_precision bf16 \
    -m ollama_slim.cli finetune "$RUN/compact" --data "$DATA" --steps 2000 --lora-rank 16 --out "$RUN/healed"
ollama-slim export "$RUN/healed" --outtype q4_k_m --out "$RUN/model.gguf"
ollama-slim register "$RUN/model.gguf" --name llama3.1-slim
