"""Tiny random models of every family in the table, and the tiny tokenizer they share.

Used by the tests (through conftest's fixtures) and by ``tools/bench_families.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

CORPUS = [
    "Sony wireless noise cancelling headphones black",
    "Logitech wireless mouse for laptop and desktop",
    "Samsung 32GB microSD memory card with adapter",
    "Anker USB C charger 20W fast charging",
    "Canon EOS camera lens cap and strap kit",
    "Apple Lightning to USB cable 1m white",
    "HDMI cable 6 feet high speed with ethernet",
    "Kindle Paperwhite e-reader waterproof 8GB",
    "Toy Story (1995) Animation Children's Comedy",
    "GoldenEye (1995) Action Adventure Thriller",
    "The user bought: 1. item 2. item 3. item. Next item:",
]


def train_tiny_tokenizer(out: Path) -> Path:
    """A byte-level BPE tokenizer (vocab 384) with ChatML specials, trained on :data:`CORPUS`, saved to ``out``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token="<|endoftext|>", pad_token="<|im_end|>")
    fast.chat_template = (
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    fast.save_pretrained(out)
    return out


def make_tiny_model(out: Path, tokenizer_dir: Path, *, arch: str = "llama", layers: int = 6, hidden: int = 64, seed: int = 0, tied: bool = True,
                    layers_given: int | None = None) -> Path:
    """Save a tiny random-weight model of family ``arch`` (its table's ``tiny`` settings) with the tiny tokenizer to ``out``.

    ``layers_given`` overrides the family's own tiny layer count (which ``layers`` does not).
    """
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ollama_slim.models.families import family

    torch.manual_seed(seed)
    fam = family(arch)
    vocab = len(json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"]) + 3
    settings = dict(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4, max_position_embeddings=512,
        rms_norm_eps=1e-6, tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    settings.update(fam.tiny)  # what the family needs beside (experts, a window shorter than the test prompts...)
    if layers_given is not None:
        settings["num_hidden_layers"] = layers_given
    config = AutoConfig.for_model(arch, **settings)
    model = AutoModelForCausalLM.from_config(config)
    identity = fam.identity_norm
    with torch.no_grad():  # make norms, biases and sinks non-trivial so folding and export tests can fail
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(identity - 0.5, identity + 0.5)
            elif name.endswith("bias") or name.endswith("sinks"):
                param.normal_(0.0, 0.1)
    model.save_pretrained(out)
    for file in tokenizer_dir.iterdir():
        shutil.copy(file, out / file.name)
    return out
