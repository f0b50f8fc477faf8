"""A draft head that reads the target's own hidden states (the EAGLE-3 design), as the field's checkpoints lay it out.

Per position it reads the target's hidden states of three layers (low, middle, high), fused by ``fc``
(``3 H_target -> H``), and the embedding of the next token; after the first drafted position it reads its own
output state instead of the fused features. One decoder layer whose attention takes ``[norm(embedding),
hidden_norm(hidden)]`` (width ``2 H``), a final norm and ``lm_head`` over a reduced draft vocabulary whose ids map to
the target's as ``target_id = draft_id + d2t[draft_id]``. Parameter names are those of published EAGLE-3 heads
(``fc``, ``midlayer.*``, ``norm``, ``lm_head``, ``d2t``, ``t2d``); loading and saving: :mod:`decoding.model_pairs.eagle`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, PreTrainedModel

from .. import hf_compat

ARCHITECTURE = "LlamaForCausalLMEagle3"  # the name published heads' config.json gives


def feature_layers(num_target_layers: int) -> tuple[int, int, int]:
    """EAGLE-3's low, middle and high layers of an ``L``-layer target, as indices into transformers'
    ``hidden_states`` (the input of decoder layer ``i``): ``(2, L // 2, L - 3)``."""
    return 2, num_target_layers // 2, num_target_layers - 3


class RMSNorm(nn.Module):
    """Llama's RMS norm: computed in float32, scaled by a learned weight."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(size)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return self.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding (the half-rotation layout of Llama) of ``x  # [b, heads, n, d]``."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    """Causal self-attention over the head's own KV cache; queries, keys and values read ``2 H`` inputs."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        hidden, self.heads, self.kv_heads = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or hidden // self.heads
        self.q_proj = nn.Linear(2 * hidden, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(2 * hidden, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(2 * hidden, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, hidden, bias=False)
        theta = hf_compat.rope_theta(config)  # published heads often set none: 10000, not the target's base
        self.register_buffer("inv_freq", 1.0 / theta ** (torch.arange(0, self.head_dim, 2).float() / self.head_dim),
                             persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor, cache) -> torch.Tensor:
        """``x  # [b, n, 2H]`` at ``positions  # [b, n]``; ``allowed  # [b, 1, n, T + n]`` bool; ``cache``: a
        ``DynamicCache`` (its one layer) or None."""
        q, k, v = self.project(x, positions)
        if cache is not None:
            k, v = cache.update(k, v, 0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=self.heads != self.kv_heads)
        return self.output(out)

    def project(self, x: torch.Tensor, positions: torch.Tensor):
        """Rotated queries ``# [b, heads, n, d]``, keys and values ``# [b, kv_heads, n, d]`` of ``x  # [b, n, 2H]``."""
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        angles = positions[:, None, :, None].float() * self.inv_freq  # [b, 1, n, d/2]
        cos, sin = (torch.cat([f(angles)] * 2, dim=-1).to(x.dtype) for f in (torch.cos, torch.sin))
        return rotate(q, cos, sin), rotate(k, cos, sin), v

    def output(self, out: torch.Tensor) -> torch.Tensor:
        """``o_proj`` of the heads' outputs ``# [b, heads, n, d]`` -> ``# [b, n, H]``."""
        b, _, n, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """The head's one layer (``midlayer``): attention over ``[norm(embedding), hidden_norm(hidden)]``, the hidden
    state as its residual (normed first when ``config.norm_before_residual``), then Llama's MLP block."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        eps = config.rms_norm_eps
        self.input_layernorm = RMSNorm(config.hidden_size, eps)
        self.hidden_norm = RMSNorm(config.hidden_size, eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps)
        self.mlp = MLP(config)
        self.norm_before_residual = bool(getattr(config, "norm_before_residual", False))

    def forward(self, embeds, hidden, positions, allowed, cache) -> torch.Tensor:
        return self.around(embeds, hidden, lambda x: self.self_attn(x, positions, allowed, cache))

    def around(self, embeds: torch.Tensor, hidden: torch.Tensor, attend) -> torch.Tensor:
        """The layer with ``attend(x  # [b, n, 2H]) -> # [b, n, H]`` as its attention (training runs its own)."""
        normed = self.hidden_norm(hidden)
        residual = normed if self.norm_before_residual else hidden
        x = torch.cat([self.input_layernorm(embeds), normed], dim=-1)  # [b, n, 2H]: the embedding first
        h = residual + attend(x)
        return h + self.mlp(self.post_attention_layernorm(h))


@dataclass
class HeadOutput:
    """``logits  # [b, n, V_draft]`` over the draft vocabulary; ``hidden  # [b, n, H]``: the layer's output before
    the final norm, which the next drafted position reads in place of the target's features."""

    logits: torch.Tensor
    hidden: torch.Tensor


class Eagle3Head(PreTrainedModel):
    """The draft head (see the module docstring). ``config``: a ``LlamaConfig`` of one layer with
    ``draft_vocab_size``, ``target_hidden_size`` (default: ``hidden_size``) and
    ``eagle_aux_hidden_state_layer_ids`` (the target layers it reads, :func:`feature_layers` by default)."""

    config_class = LlamaConfig
    base_model_prefix = "eagle3"
    reads_2d_mask = True  # its forward builds its own mask from the 2D one (no transformers masking)

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        hidden = config.hidden_size
        target_hidden = getattr(config, "target_hidden_size", None) or hidden
        draft_vocab = getattr(config, "draft_vocab_size", None) or config.vocab_size
        self.fc = nn.Linear(3 * target_hidden, hidden, bias=False)
        self.midlayer = DecoderLayer(config)
        self.norm = RMSNorm(hidden, config.rms_norm_eps)
        self.lm_head = nn.Linear(hidden, draft_vocab, bias=False)
        # Its own embedding only where the target's has another width; otherwise the target's is read.
        self.embed_tokens = nn.Embedding(config.vocab_size, hidden) if target_hidden != hidden else None
        self.register_buffer("d2t", torch.zeros(draft_vocab, dtype=torch.int64))
        self.register_buffer("t2d", torch.zeros(config.vocab_size, dtype=torch.bool))
        self.post_init()

    @property
    def target_layers(self) -> tuple[int, ...]:
        ids = getattr(self.config, "eagle_aux_hidden_state_layer_ids", None)
        return tuple(ids) if ids else ()

    def target_ids(self) -> torch.Tensor:
        """The target id of every draft id, ``# [V_draft]``."""
        return torch.arange(self.d2t.numel(), device=self.d2t.device) + self.d2t

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, use_cache=True,
                logits_to_keep=0, features=None, inputs_embeds=None, **_) -> HeadOutput:
        """``features  # [b, n, 3 H_target]`` (the target's, fused here) or ``# [b, n, H]`` (the head's own output
        state); ``inputs_embeds  # [b, n, H]`` the next tokens' embeddings (default: its own table's of
        ``input_ids``); ``attention_mask  # [b, T + n]`` 1 for valid slots, ``position_ids  # [b, n]``."""
        embeds = inputs_embeds if inputs_embeds is not None else self.embed_tokens(input_ids)
        hidden = self.fc(features) if features.shape[-1] != self.config.hidden_size else features
        b, n = hidden.shape[:2]
        if position_ids is None:
            position_ids = torch.arange(n, device=hidden.device).expand(b, n)
        total = n if attention_mask is None else attention_mask.shape[1]
        past = total - n
        causal = torch.arange(total, device=hidden.device) <= past + torch.arange(n, device=hidden.device)[:, None]
        allowed = causal[None, None] if attention_mask is None else causal & attention_mask.bool()[:, None, None, :]
        # A query always sees itself, so that a hole with no valid slot before it (left padding) is no NaN.
        allowed = allowed | (torch.arange(total, device=hidden.device) == past + torch.arange(n, device=hidden.device)[:, None])
        out = self.midlayer(embeds, hidden, position_ids, allowed, cache if use_cache else None)
        kept = out[:, -logits_to_keep:] if logits_to_keep else out
        return HeadOutput(logits=self.lm_head(self.norm(kept)), hidden=out)
