"""The distilled draft's shape, its initialisation from the target, saving, and greedy acceptance measured offline.

- :func:`make_draft`: a narrow Llama (hidden 256 by default) that keeps all of the target's vocabulary ids, as
  ``SpeculativeDecoding`` needs, with its own tied embedding initialised from the target's: the embedding
  matrix ``E`` (``[V, H]``) projected on its top principal directions, ``E @ V_d`` (SVD), so that the draft's
  logits start as the target's embedding geometry seen through ``d`` dimensions. Layers start random, with their
  output projections scaled down so the residual stream starts as the projected embedding, and the final norm's
  weight at 0.1 so the first laws are nearly uniform rather than confidently wrong.
- :func:`save_draft`: ``save_pretrained`` with the weights stored in float16 (``config.json`` says float32, so
  loading upcasts them: float32 runs fastest on a CPU without bfloat16 units); no tokenizer files, so
  ``load_pair`` uses the target's.
- :func:`greedy_acceptance`: the acceptance of greedy speculative decoding, computed from one draft forward over
  the target's own greedy continuation: in greedy mode a draft token is accepted iff it equals the target's
  token at that position, and every accepted draft token was drafted from the target's prefix, so the steps can
  be replayed exactly (up to floating-point ties) without running the target again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

__all__ = ["DraftShape", "greedy_acceptance", "make_draft", "save_draft"]


@dataclass(frozen=True)
class DraftShape:
    hidden_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 1024
    head_dim: int = 64


def make_draft(target, shape: DraftShape = DraftShape(), seed: int = 0, output_scale: float = 0.1,
               norm_scale: float = 0.1):
    """A ``LlamaForCausalLM`` of ``shape`` with the target's vocabulary, rope, special ids and an embedding
    initialised from the target's (see the module docstring)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tc = target.config
    config = LlamaConfig(
        vocab_size=tc.vocab_size, max_position_embeddings=tc.max_position_embeddings, tie_word_embeddings=True,
        rms_norm_eps=tc.rms_norm_eps, rope_parameters=getattr(tc, "rope_parameters", None),
        bos_token_id=tc.bos_token_id, eos_token_id=tc.eos_token_id, pad_token_id=tc.pad_token_id, **asdict(shape),
    )
    torch.manual_seed(seed)
    draft = LlamaForCausalLM(config)
    with torch.no_grad():
        emb = target.get_input_embeddings().weight.float()
        _, _, vh = torch.linalg.svd(emb - emb.mean(0), full_matrices=False)
        projected = emb @ vh[: shape.hidden_size].T  # [V, d]
        # Match the scale of the target's embedding rows so the first RMSNorm sees similar magnitudes.
        draft.get_input_embeddings().weight.copy_(projected)
        for layer in draft.model.layers:
            layer.self_attn.o_proj.weight.mul_(output_scale)
            layer.mlp.down_proj.weight.mul_(output_scale)
        # With the residual stream close to the current token's embedding, full-scale logits would say "repeat
        # this token" with confidence (forward KL ~40 nats on chat text); a small final norm starts near uniform.
        draft.model.norm.weight.fill_(norm_scale)
    draft.generation_config.pad_token_id = target.generation_config.pad_token_id
    draft.generation_config.eos_token_id = target.generation_config.eos_token_id
    draft.generation_config.bos_token_id = target.generation_config.bos_token_id
    return draft


def save_draft(draft, out: Path) -> int:
    """Save with float16 weights and a float32 config; returns the bytes of the weights file."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    half = type(draft)(draft.config)
    half.load_state_dict(draft.state_dict())
    half.to(torch.float16)
    half.generation_config = draft.generation_config
    half.save_pretrained(out)
    text = (out / "config.json").read_text().replace('"dtype": "float16"', '"dtype": "float32"')
    (out / "config.json").write_text(text)
    return (out / "model.safetensors").stat().st_size


@torch.no_grad()
def greedy_acceptance(draft, sequences: list[tuple[torch.Tensor, int]], g: int = 4) -> dict:
    """Greedy speculative decoding replayed on the target's greedy continuations.

    ``sequences``: ``(ids, start)`` pairs, ``ids[start:]`` being the target's greedy continuation of the prompt
    ``ids[:start]``. Exact for a continuation of ``max_new_tokens`` tokens; one that stopped early at EOS is
    replayed as if ``max_new_tokens`` were its length (the last step drafts fewer tokens). Returns ``alpha`` (accepted / acceptance tests, the stats' definition), ``acceptance_rate``
    (accepted / drafted), ``mean_accepted_length`` (tokens per step) and ``per_position`` acceptance.
    """
    accepted = tests = drafted = steps = 0
    position_hits = [0] * g
    for ids, start in sequences:
        predicted = draft(ids[None].to(draft.device)).logits[0, start - 1: -1].argmax(-1).cpu()
        match = (predicted == ids[start:]).tolist()  # match[j]: token start + j
        t, n = 0, len(match)
        while t < n:
            budget = min(g, n - t - 1)  # as SpeculativeDecoding: g + 1 <= the tokens still to produce
            run = 0
            while run < budget and match[t + run]:
                run += 1
            steps += 1
            drafted += budget
            accepted += run
            tests += run + (1 if run < budget else 0)
            for i in range(run):
                position_hits[i] += 1
            t += run + 1
    return {
        "alpha": round(accepted / max(tests, 1), 4),
        "acceptance_rate": round(accepted / max(drafted, 1), 4),
        "mean_accepted_length": round(1 + accepted / max(steps, 1), 4),
        "per_position": [round(h / max(steps, 1), 4) for h in position_hits],
        "steps": steps,
    }
