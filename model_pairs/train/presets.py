"""The embedded pair's training presets: the Llama shapes of target and draft, and per preset (``cpu``, ``gpu``,
``tiny``) the vocabulary, sequence length, batch sizes, steps, learning rates and evaluation sizes; and the
``LlamaConfig`` a shape gives (:func:`llama_config`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["DRAFT_SHAPE", "PRESETS", "TARGET_SHAPE", "ModelShape", "Preset", "llama_config"]


@dataclass(frozen=True)
class ModelShape:
    """The shape of one Llama model (the ``LlamaConfig`` fields of the same names)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int


@dataclass(frozen=True)
class Preset:
    """One training recipe: vocabulary, both shapes, and the training and evaluation sizes of both models."""

    vocab_size: int
    target: ModelShape
    draft: ModelShape
    seq_len: int
    target_batch: int
    target_steps: int
    target_lr: float
    draft_batch: int
    draft_steps: int
    draft_lr: float
    warmup: int
    distill_weight: float = 0.9  # loss = w * KL(target || draft) + (1 - w) * data cross-entropy
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_batches: int = 8
    max_files: int | None = None  # for quick tests: only the first files of the sorted corpus
    eval_prompts: int = 12
    prompt_tokens: int = 128
    new_tokens: int = 128
    speed_prompts: int = 4
    speed_draft_lengths: tuple = (2, 3, 4, 5, 6)


TARGET_SHAPE = ModelShape(512, 8, 8, 4, 1408)
DRAFT_SHAPE = ModelShape(256, 2, 4, 2, 704)

PRESETS = {
    # ~45 min on 2 CPU cores (bfloat16 autocast on a CPU with AVX512-BF16): what the shipped pair used.
    "cpu": Preset(
        vocab_size=4096, target=TARGET_SHAPE, draft=DRAFT_SHAPE, seq_len=512,
        target_batch=4, target_steps=1300, target_lr=2e-3, draft_batch=4, draft_steps=1200, draft_lr=3e-3,
        warmup=50, eval_batches=4, eval_prompts=8, speed_prompts=3, speed_draft_lengths=(3, 4, 5),
    ),
    # The same shapes, much longer training, for a GPU.
    "gpu": Preset(
        vocab_size=4096, target=TARGET_SHAPE, draft=DRAFT_SHAPE, seq_len=512,
        target_batch=64, target_steps=6000, target_lr=1.5e-3, draft_batch=64, draft_steps=4000, draft_lr=3e-3,
        warmup=200, eval_batches=32, eval_prompts=32, speed_prompts=8,
    ),
    # Tiny, for tests: a few seconds.
    "tiny": Preset(
        vocab_size=320, target=ModelShape(64, 2, 2, 1, 128), draft=ModelShape(32, 1, 2, 1, 64), seq_len=64,
        target_batch=2, target_steps=3, target_lr=1e-3, draft_batch=2, draft_steps=3, draft_lr=1e-3,
        warmup=1, eval_batches=1, max_files=12, eval_prompts=1, prompt_tokens=16, new_tokens=8, speed_prompts=0,
    ),
}


def llama_config(shape: ModelShape, vocab_size: int, max_positions: int):
    """The ``LlamaConfig`` of ``shape``: tied embeddings; ids 0 (EOS, also BOS) and 1 (pad) as the tokenizer's."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, max_position_embeddings=max_positions, tie_word_embeddings=True,
        rms_norm_eps=1e-5, rope_theta=10000.0, bos_token_id=0, eos_token_id=0, pad_token_id=1, **asdict(shape),
    )
