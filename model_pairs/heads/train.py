"""Training an EAGLE-3 draft head on its target's own outputs, a step at a time (CPU or GPU).

A batch of sequences (the target's answers to training prompts, or text windows) goes through the frozen target
once: its hidden states of the head's three layers and its logits. The head reads the pairs ``(features of token i,
token i + 1)`` and is trained, by soft cross-entropy, towards the target's law of token ``i + 2`` over the draft
vocabulary. Training-time test: for ``ttt`` steps the head then reads its own output state at each position with
the next token and predicts one token further, as it does when it drafts, attending to the step-0 keys before it
and to its own keys of the earlier steps at the same position (the diagonal of EAGLE-3); step ``k`` weighs
``decay ** k``. Where the target's top token lies outside the draft vocabulary the position is not trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import LlamaConfig

from decoding import hf_compat
from decoding.proposers.eagle_head import Eagle3Head, feature_layers


@dataclass(frozen=True)
class Batch:
    """Sequences right-padded to ``[b, T]``: ``ids``, ``mask`` (1 for real tokens) and ``trained`` (1 where token
    ``t`` is one a head should predict: the answer, not the prompt)."""

    ids: torch.Tensor
    mask: torch.Tensor
    trained: torch.Tensor


def batch_of(records: list[dict], pad_id: int) -> Batch:
    """``records`` (``{"ids": int64 [L], "start": s}``, the answer from ``s`` on) as one padded :class:`Batch`."""
    width = max(len(r["ids"]) for r in records)
    ids = torch.full((len(records), width), pad_id, dtype=torch.int64)
    mask, trained = torch.zeros_like(ids), torch.zeros_like(ids)
    for row, record in enumerate(records):
        n = len(record["ids"])
        ids[row, :n], mask[row, :n] = record["ids"], 1
        trained[row, record["start"]:n] = 1
    return Batch(ids, mask, trained)


def draft_vocabulary(records: list[dict], size: int, vocab: int) -> torch.Tensor:
    """The ``size`` target ids the head drafts, ascending: the most frequent in the records' answers, then the
    lowest unused ids where the answers hold fewer distinct tokens."""
    counts = torch.zeros(vocab, dtype=torch.int64)
    for record in records:
        counts += torch.bincount(record["ids"][record["start"]:], minlength=vocab)
    order = torch.argsort(counts, descending=True, stable=True)  # ties: lower ids first
    return order[:size].sort().values


def new_head(target, draft_ids: torch.Tensor, seed: int = 0) -> Eagle3Head:
    """A head for ``target`` drafting ``draft_ids``: its output rows and final norm copied from the target's, its
    layer's MLP and norms from the target's last layer, ``fc`` reading the highest of the three layers."""
    config = target.config.get_text_config()
    hidden = config.hidden_size
    head_config = LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=hidden, intermediate_size=config.intermediate_size,
        num_attention_heads=config.num_attention_heads, num_key_value_heads=config.num_key_value_heads,
        head_dim=getattr(config, "head_dim", None) or hidden // config.num_attention_heads, num_hidden_layers=1,
        rms_norm_eps=config.rms_norm_eps, rope_theta=hf_compat.rope_theta(config), tie_word_embeddings=False,
        draft_vocab_size=len(draft_ids), eagle_aux_hidden_state_layer_ids=list(feature_layers(config.num_hidden_layers)),
        architectures=["LlamaForCausalLMEagle3"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = Eagle3Head(head_config).to(target.dtype)
    with torch.no_grad():
        head.lm_head.weight.copy_(target.get_output_embeddings().weight[draft_ids])
        last = target.get_decoder().layers[-1]
        _copy_matching(head.midlayer.mlp, last.mlp)
        head.midlayer.post_attention_layernorm.weight.copy_(last.post_attention_layernorm.weight)
        head.norm.weight.copy_(target.get_decoder().norm.weight)
        head.fc.weight.zero_()
        head.fc.weight[:, 2 * hidden:] = torch.eye(hidden)
        _map_ids(head, draft_ids)
    return head


def _map_ids(head: Eagle3Head, draft_ids: torch.Tensor) -> None:
    """The head's id maps for ``draft_ids`` (ascending target ids): ``d2t`` offsets, ``t2d`` membership."""
    head.d2t.copy_(draft_ids - torch.arange(draft_ids.numel(), device=draft_ids.device))
    head.t2d.zero_()
    head.t2d[draft_ids] = True


def _copy_matching(into: torch.nn.Module, source: torch.nn.Module) -> None:
    source_state = source.state_dict()
    into.load_state_dict({k: v for k, v in source_state.items() if k in into.state_dict()}, strict=True)


@torch.no_grad()
def target_pass(target, head: Eagle3Head, batch: Batch):
    """The target's features ``# [b, T, 3H]`` at the head's layers and its law ``# [b, T, V_draft]`` over the draft
    vocabulary (renormalised), with ``usable  # [b, T]``: where its top token is in the draft vocabulary."""
    out = target(input_ids=batch.ids, attention_mask=batch.mask, output_hidden_states=True)
    features = torch.cat([out.hidden_states[i] for i in head.target_layers], dim=-1)
    logits = out.logits.float()
    law = torch.softmax(logits[..., head.target_ids()], dim=-1)
    usable = head.t2d[logits.argmax(dim=-1)]
    return features, law, usable


def ttt_losses(head: Eagle3Head, embed, batch: Batch, features, law, usable, steps: int):
    """Per training-time-test step ``k``: the mean soft cross-entropy and the agreement of the head's top token with
    the target's, where the pair at position ``i`` reads token ``i + 1 + k`` and predicts token ``i + 2 + k``.
    Returns ``(losses, agreement, counted, chained, answered)``, each ``[steps]``: ``counted`` the positions trained
    (the target's top token in the draft vocabulary), ``chained`` those whose steps ``0..k`` all agreed, and
    ``answered`` every answer position, the draftable or not (where the head can only miss)."""
    layer, attention = head.midlayer, head.midlayer.self_attn
    n = batch.ids.shape[1] - 1  # pairs (features of i, token i + 1) for i < T - 1
    positions = torch.arange(n, device=batch.ids.device).expand(batch.ids.shape[0], n)
    causal = torch.ones(n, n, dtype=torch.bool, device=batch.ids.device).tril()
    allowed = causal & batch.mask[:, None, None, 1:].bool()
    hidden = head.fc(features[:, :n])
    keys, values, agreed = [], [], None
    losses, agreement, counted, chained, answered = [], [], [], [], []
    for k in range(steps):
        tokens = batch.ids[:, 1 + k:].clone()
        tokens = F.pad(tokens, (0, n - tokens.shape[1]), value=0)  # beyond the end: masked below
        q_k, key, value = (None, None, None)

        def attend(x, k=k):
            nonlocal q_k, key, value
            q_k, key, value = attention.project(x, positions + k)
            return attention.output(_ttt_attention(attention, q_k, key, value, keys, values, allowed))

        out = layer.around(embed(tokens), hidden, attend)
        keys.append(key), values.append(value)
        logits = head.lm_head(head.norm(out)).float()  # [b, n, V_draft]
        target = torch.zeros_like(logits)
        valid = torch.zeros(logits.shape[:2], dtype=torch.bool, device=logits.device)
        span = max(0, n - 1 - k)  # pair i predicts token i + 2 + k < T
        target[:, :span] = law[:, 1 + k:1 + k + span]
        asked = (batch.trained[:, 2 + k:2 + k + span] * batch.mask[:, 2 + k:2 + k + span]).bool()
        valid[:, :span] = asked & usable[:, 1 + k:1 + k + span]
        loss = -(target * torch.log_softmax(logits, dim=-1)).sum(-1)
        count = valid.sum().clamp_min(1)
        losses.append((loss * valid).sum() / count)
        hit = (logits.argmax(-1) == target.argmax(-1)) & valid
        agreed = hit if agreed is None else agreed & hit
        agreement.append(hit.sum()), counted.append(valid.sum()), chained.append(agreed.sum())
        answered.append(asked.sum())
        hidden = out  # the next step reads the head's own state at the same position
    return tuple(torch.stack(x) for x in (losses, agreement, counted, chained, answered))


def _ttt_attention(attention, q, key, value, keys, values, allowed):
    """Step ``k``'s attention: the step-0 keys causally (``allowed  # [b, 1, n, n]``), then each earlier step's and
    this step's own key at the same position (step 0 is the first of ``keys``; at step 0 there is no other)."""
    groups = attention.heads // attention.kv_heads
    expand = (lambda t: t.repeat_interleave(groups, dim=1)) if groups > 1 else (lambda t: t)
    scale = 1.0 / math.sqrt(attention.head_dim)
    base_k, base_v = (keys[0], values[0]) if keys else (key, value)
    scores = [(q @ expand(base_k).transpose(-1, -2) * scale).masked_fill(~allowed, float("-inf"))]  # [b, h, n, n]
    diagonal = [*zip(keys[1:], values[1:]), (key, value)] if keys else []
    scores += [(q * expand(k_j)).sum(-1, keepdim=True) * scale for k_j, _ in diagonal]  # [b, h, n, 1] each
    weights = torch.softmax(torch.cat(scores, dim=-1), dim=-1)
    n = base_k.shape[2]
    out = weights[..., :n] @ expand(base_v)
    for j, (_, v_j) in enumerate(diagonal):
        out = out + weights[..., n + j:n + j + 1] * expand(v_j)
    return out


def training_step(head, embed, target, batch: Batch, optimizer, steps: int, decay: float, clip: float) -> dict:
    """One optimizer step on ``batch``; returns its losses and agreements per step."""
    features, law, usable = target_pass(target, head, batch)
    losses, agreement, counted, chained, _ = ttt_losses(head, embed, batch, features, law, usable, steps)
    weights = decay ** torch.arange(steps, dtype=losses.dtype, device=losses.device)
    optimizer.zero_grad(set_to_none=True)
    (losses * weights).sum().backward()
    torch.nn.utils.clip_grad_norm_(head.parameters(), clip)
    optimizer.step()
    return {"loss": float((losses * weights).sum().detach()), "agreement": agreement.tolist(), "counted": counted.tolist(),
            "chained": chained.tolist()}


@torch.no_grad()
def evaluate(head, embed, target, batches: list[Batch], steps: int) -> dict:
    """Held-out agreement of the head's top token with the target's, per step and chained (every step so far).

    ``acceptance[k]`` estimates greedy acceptance at drafted position ``k + 1`` given the earlier ones, over every
    answer position: where the target's top token lies outside the draft vocabulary the head misses, as it does
    when drafting. ``acceptance_in_vocab`` counts only the positions it could draft (the figure of runs before
    2026-12-06), ``coverage`` their share; ``positions``: the first step's answer positions."""
    sums = torch.zeros(4, steps)
    for batch in batches:
        features, law, usable = target_pass(target, head, batch)
        _, agreement, counted, chained, answered = ttt_losses(head, embed, batch, features, law, usable, steps)
        sums += torch.stack([agreement, counted, chained, answered]).float().cpu()
    agreement, counted, chained, answered = sums
    reach, reach_in_vocab = chained / answered.clamp_min(1), chained / counted.clamp_min(1)
    return {"agreement": (agreement / answered.clamp_min(1)).tolist(), "reach": reach.tolist(),
            "acceptance": _conditional(reach), "reach_in_vocab": reach_in_vocab.tolist(),
            "acceptance_in_vocab": _conditional(reach_in_vocab),
            "coverage": float(counted[0] / answered[0].clamp_min(1)), "positions": int(answered[0])}


def _conditional(reach: torch.Tensor) -> list[float]:
    """Acceptance at each drafted position given the earlier ones, from the reach (all of the first k agreed)."""
    return [float(reach[0])] + [float(reach[k] / reach[k - 1]) if reach[k - 1] > 0 else 0.0
                                for k in range(1, len(reach))]


@torch.no_grad()
def revocabulary(head: Eagle3Head, target, draft_ids: torch.Tensor, optimizer=None, new_scale: float = 0.5) -> int:
    """Give ``head`` the draft vocabulary ``draft_ids`` (ascending target ids; as many as it has, or more or fewer:
    the output layer grows or shrinks): the output rows of the ids it keeps move with them, trained; a new id's row
    is the target's own times ``new_scale``; ``optimizer``'s moments for ``lm_head`` move with their rows (zero for
    the new ones). Returns how many ids are new.

    Why half the target's row: on the SmolLM2 head (2,348 new ids of 8,192) the target's rows at full scale
    outscored the trained ones on the head's states (held-out acceptance 0.52 -> 0.30); at half (or zero) they do
    not (0.52), and they keep the target's direction to learn from."""
    if draft_ids.dim() != 1 or draft_ids.numel() == 0 or bool((draft_ids[1:] <= draft_ids[:-1]).any()):
        raise ValueError(f"draft ids must be ascending distinct target ids, got shape {tuple(draft_ids.shape)}")
    old_ids, weight = head.target_ids(), head.lm_head.weight
    where = torch.full((head.t2d.numel(),), -1, dtype=torch.int64, device=old_ids.device)
    where[old_ids] = torch.arange(old_ids.numel(), device=old_ids.device)
    draft_ids = draft_ids.to(old_ids.device)
    source = where[draft_ids]  # [V_draft_new]: each new row's old row, -1 for a new id
    kept = source >= 0
    rows = new_scale * target.get_output_embeddings().weight[draft_ids].to(weight)
    rows[kept] = weight[source[kept]]
    state = optimizer.state.get(weight, {}) if optimizer is not None else {}
    for name, moment in state.items():
        if torch.is_tensor(moment) and moment.shape == weight.shape:
            state[name] = torch.where(kept[:, None], moment[source.clamp_min(0)], moment.new_zeros(()))
    weight.data = rows  # the same parameter, so the optimizer keeps it, at the new size
    head.lm_head.out_features = head.config.draft_vocab_size = draft_ids.numel()
    head.d2t = head.d2t.new_zeros(draft_ids.numel())
    _map_ids(head, draft_ids)
    return int((~kept).sum())
