"""A synthetic draft/target pair whose acceptance rate is set by one knob, for benchmarking without trained weights.

Recipe (see ``REFERENCES.md`` §8): a random Llama *target* whose output head is scaled up (``head_scale``, so
next-token laws are peaked rather than near-uniform) and whose every layer after the first is *damped*: the
attention and MLP output projections (``o_proj``, ``down_proj``) are scaled by ``damping``, so those layers add
little to the residual stream. The *draft* is a one-layer Llama holding exact copies of the target's embedding,
first layer, final norm and head, so it predicts what the target would predict without its damped layers.

The target still runs every layer, so its per-token cost is that of a real ``num_layers`` model while greedy
agreement with the draft is high and tunable: on an 8-layer, width-512, 8192-vocabulary target, agreement along
the target's own greedy path is about 0.07 at ``damping=0.3``, 0.35 at 0.1 and 0.8 at 0.03. The ratio of their
costs is that of a 1-layer to an ``num_layers``-layer model of the same width.

The shape comes from the arguments, so the same recipe gives the ~34M-parameter CPU pair of the speedup benchmark
(the defaults) or, on a GPU, e.g. a Llama-3-8B-shaped target in bfloat16 with a one-layer draft::

    target, draft = damped_pair(num_layers=32, hidden_size=4096, intermediate_size=14336,
                                num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                                dtype=torch.bfloat16, device="cuda")

Both models have ``pad_token_id = 0`` and no EOS token (``eos_token_id = None``), so every generation runs to
``max_new_tokens``: what a throughput benchmark wants.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from decoding import hf_compat

__all__ = ["damped_pair", "llama_intermediate_size"]


def llama_intermediate_size(hidden_size: int, multiple_of: int = 32) -> int:
    """Llama's MLP width for ``hidden_size``: ``8/3 * hidden_size`` rounded up to ``multiple_of`` (512 -> 1376)."""
    return -(-(8 * hidden_size) // (3 * multiple_of)) * multiple_of


def damped_pair(
    num_layers: int = 8,
    hidden_size: int = 512,
    vocab_size: int = 8192,
    damping: float = 0.03,
    head_scale: float = 20.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    **llama_config_overrides,
) -> tuple[LlamaForCausalLM, LlamaForCausalLM]:
    """Build ``(target, draft)``: a damped random Llama target and its one-layer draft, both in eval mode.

    Args:
        num_layers: target layers (the draft always has one).
        hidden_size: model width; ``intermediate_size`` defaults to Llama's ``8/3`` ratio (1376 at 512) and the
            number of attention heads to ``hidden_size // 64`` (8 at 512).
        vocab_size: vocabulary rows of both models.
        damping: factor on ``o_proj`` and ``down_proj`` weights of target layers 2..num_layers. Smaller means the
            draft agrees with the target more often (0.03: about 0.8 at the default shape).
        head_scale: factor on the ``lm_head`` weight (shared by both models), making next-token laws peaked.
        seed: weights are a deterministic function of the seed (on a given device), and the global RNG state
            is left untouched.
        dtype: parameter dtype of both models (``torch.bfloat16`` for large shapes on a GPU).
        device: where the weights are created (default: CPU); creating a large pair directly on a GPU is fast.
        **llama_config_overrides: any other ``LlamaConfig`` field (``intermediate_size``,
            ``num_attention_heads``, ``num_key_value_heads``, ``max_position_embeddings``, ``rope_theta``, ...).
    Returns:
        ``(target, draft)`` ``LlamaForCausalLM`` models on ``device`` in ``dtype``.
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    device = torch.device(device if device is not None else "cpu")
    settings = {
        "hidden_size": hidden_size,
        "intermediate_size": llama_intermediate_size(hidden_size),
        "num_attention_heads": max(1, hidden_size // 64),
        "vocab_size": vocab_size,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,  # the head is scaled on its own
        "pad_token_id": 0,
        "bos_token_id": None,
        "eos_token_id": None,
    }
    settings.update(llama_config_overrides)
    target_config = LlamaConfig(num_hidden_layers=num_layers, **settings)
    draft_config = LlamaConfig(num_hidden_layers=1, **settings)

    rng_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices), torch.device(device), torch.no_grad():
        torch.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.manual_seed(seed)
        target = hf_compat.from_config(LlamaForCausalLM, target_config, dtype)
        draft = hf_compat.from_config(LlamaForCausalLM, draft_config, dtype)
        target.lm_head.weight.mul_(head_scale)
        for layer in target.model.layers[1:]:
            layer.self_attn.o_proj.weight.mul_(damping)
            layer.mlp.down_proj.weight.mul_(damping)
        draft.model.embed_tokens.load_state_dict(target.model.embed_tokens.state_dict())
        draft.model.layers[0].load_state_dict(target.model.layers[0].state_dict())
        draft.model.norm.load_state_dict(target.model.norm.state_dict())
        draft.lm_head.load_state_dict(target.lm_head.state_dict())
    for model in (target, draft):
        model.eval()
        model.generation_config.pad_token_id = 0
        model.generation_config.eos_token_id = None
        model.generation_config.bos_token_id = None
    return target, draft
