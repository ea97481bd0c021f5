"""The built-in model: a random-weight Llama and a trained byte-level BPE tokenizer.

No machine that runs Tandem's tests can download weights, so the default model
is made here, deterministically from a seed, and written once to a cache
directory (to a temporary directory first, then renamed, so a crash never
leaves half a model). The shape is a parameter: ``tandem/tiny`` is small
enough for CPU tests; ``tandem/tinyllama-1.1b-random`` has TinyLlama-1.1B's
shape for GPU benchmarks.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

MAKER_VERSION = 1
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
BOS_ID, EOS_ID = 1, 2
_CONSONANTS = "bcdfghjklmnprstvwz"
_VOWELS = "aeiou"
_WORDS = (
    "the a of and to in is it you that he was for on are with as his they at be this from have or by one had "
    "not but what all were when we there can an your which their said if do will each about how up out them "
    "then she many some so these would other into has more her two like him see time could no make than first "
    "been its who now people my made over did down only way find use may water long little very after words "
    "called just where most know get through back much before go good new write our used me man too any day "
    "same right look think also around another came come work three word must because does part even place well"
).split()


@dataclass(frozen=True)
class ModelShape:
    """Llama architecture sizes."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    max_position_embeddings: int = 4096
    initializer_range: float = 0.02
    """Std of the random weights. The tiny shape uses a larger one: with 0.02 its
    output head cannot make any token likelier than ~1% (logits stay within
    ~2.5 after the final norm), so no adapter could make sampling confident."""


BUILTIN_SHAPES: dict[str, ModelShape] = {
    "tandem/tiny": ModelShape(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1024,
        initializer_range=0.1,
    ),
    "tandem/tinyllama-1.1b-random": ModelShape(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        vocab_size=32000,
    ),
}


def is_builtin(name: str) -> bool:
    """True when ``name`` is one of the built-in models."""
    return name in BUILTIN_SHAPES


def corpus(seed: int, lines: int) -> Iterator[str]:
    """Deterministic pseudo-text: common English words mixed with made-up syllable words."""
    rng = random.Random(seed)
    syllables = [c + v for c in _CONSONANTS for v in _VOWELS]
    for _ in range(lines):
        words = []
        for _ in range(rng.randint(4, 14)):
            if rng.random() < 0.6:
                words.append(rng.choice(_WORDS))
            else:
                words.append("".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))))
        line = " ".join(words)
        yield line[0].upper() + line[1:] + rng.choice(".!?,;:") + (" " + str(rng.randint(0, 999)) if rng.random() < 0.1 else "")


def train_tokenizer(vocab_size: int, seed: int):
    """A byte-level BPE tokenizer with exactly ``vocab_size`` entries that prepends <s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(seed, lines=max(2000, vocab_size * 8)), trainer)
    filler = [f"<extra_{i}>" for i in range(vocab_size - tokenizer.get_vocab_size())]
    if filler:
        tokenizer.add_tokens(filler)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )


def _cache_key(name: str, shape: ModelShape, seed: int) -> str:
    payload = json.dumps({"name": name, "shape": asdict(shape), "seed": seed, "v": MAKER_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _write_model(directory: Path, shape: ModelShape, seed: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = train_tokenizer(shape.vocab_size, seed)
    config = LlamaConfig(**asdict(shape), bos_token_id=BOS_ID, eos_token_id=EOS_ID, tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def ensure_builtin_model(name: str, cache_dir: Path, seed: int = 0) -> Path:
    """Return the directory of built-in model ``name``, making it on first use."""
    shape = BUILTIN_SHAPES[name]
    target = cache_dir / "models" / f"{name.replace('/', '--')}-{_cache_key(name, shape, seed)}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".making-", dir=target.parent))
    try:
        _write_model(staging, shape, seed)
        if not target.exists():  # another process may have finished first
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
