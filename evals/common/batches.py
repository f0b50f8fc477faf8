"""Left-padded batches of tokenized prompts."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Batch", "left_pad", "make_batches"]


def left_pad(prompts: list[torch.Tensor], pad_token_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad 1-D prompts into ``input_ids, attention_mask  # [b, longest]``."""
    width = max(p.numel() for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.int64)
    mask = torch.zeros(len(prompts), width, dtype=torch.int64)
    for row, prompt in enumerate(prompts):
        ids[row, width - prompt.numel():] = prompt
        mask[row, width - prompt.numel():] = 1
    return ids, mask


@dataclass
class Batch:
    """One batch of prompts, left-padded to its longest."""

    ids: torch.Tensor  # [b, width] left-padded
    mask: torch.Tensor  # [b, width]
    prompts: list[int]  # index into the prompt list, per row


def make_batches(prompts: list[torch.Tensor], batch_size: int, device, pad_token_id: int = 0) -> list[Batch]:
    """``ceil(len(prompts) / batch_size)`` full batches; the last one wraps around to the first prompts."""
    out = []
    for k in range(-(-len(prompts) // batch_size)):
        rows = [(k * batch_size + i) % len(prompts) for i in range(batch_size)]
        ids, mask = left_pad([prompts[r] for r in rows], pad_token_id)
        out.append(Batch(ids.to(device), mask.to(device), rows))
    return out
