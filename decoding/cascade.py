"""Speculative cascades (Narasimhan et al., ICLR 2025): the small model answers where it is good enough and defers
to the large one otherwise, token by token, at speculative speed.

At every verified position a deferral rule looks at the draft's processed law ``q`` and the target's ``p`` there and
decides ``defer`` in {0, 1}; the position's law is then ``pi = defer * p + (1 - defer) * q``, and the drafts are
verified against ``pi`` with the lossless rule (greedy: against ``argmax pi``). So each emitted token, given the
text before it, is distributed as ``pi`` of that position: the draft's own law where the rule keeps it, the
target's where it defers (and at every position the draft did not propose, such as the bonus position). Rules, with
``t`` the threshold:

- ``"chow"``: defer iff ``max q <= 1 - t`` (the draft is not sure enough); ``t = 0`` always defers: the target's law.
- ``"diff"``: defer iff ``max q <= max p - t`` (the target is surer by ``t``); ``t = -1`` always defers.
- ``"opt"``: defer iff ``max q <= max p - t * TV(p, q)`` (the paper's optimal rule for a cost ``t``); ``t`` from 0
  (``t > 1`` never defers where the laws differ, as ``TV(p, q) >= max p - max q``).

Cascades trade quality for speed, unlike lossless speculative decoding: the output follows ``pi``, not ``p``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .proposers import DraftModel
from .speculative import SpeculativeDecoding
from .validation import check_real

RULES = ("chow", "diff", "opt")


@dataclass(frozen=True)
class Cascade:
    """A deferral rule and its threshold; :meth:`law` gives the law drafts are verified against."""

    rule: str
    threshold: float

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {', '.join(RULES)}, got {self.rule!r}")
        check_real(self.threshold, "threshold")

    @classmethod
    def parse(cls, spec: str) -> "Cascade":
        """``"cascade:chow:0.3"`` (or ``"chow:0.3"``) -> ``Cascade("chow", 0.3)``; a ``ValueError`` that shows the
        expected form otherwise."""
        parts = spec.split(":")
        if parts[0] == "cascade":
            parts = parts[1:]
        usage = f"use cascade:RULE:THRESHOLD with RULE one of {', '.join(RULES)}, e.g. cascade:chow:0.3"
        if len(parts) != 2 or parts[0] not in RULES:
            raise ValueError(f"bad cascade {spec!r}: {usage}")
        try:
            return cls(parts[0], float(parts[1]))
        except ValueError:
            raise ValueError(f"bad cascade {spec!r}: THRESHOLD must be a finite number; {usage}") from None

    @property
    def name(self) -> str:
        """The spec :meth:`parse` reads back: ``"cascade:chow:0.3"``."""
        return f"cascade:{self.rule}:{self.threshold:g}"

    def defer(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """``# [...]`` bool: where the target's law applies, from laws ``p``, ``q  # [..., V]``."""
        top_q = q.max(dim=-1).values
        if self.rule == "chow":
            return top_q <= 1 - self.threshold
        top_p = p.max(dim=-1).values
        if self.rule == "diff":
            return top_q <= top_p - self.threshold
        total_variation = 0.5 * (p - q).abs().sum(dim=-1)
        return top_q <= top_p - self.threshold * total_variation

    def law(self, p: torch.Tensor, q: torch.Tensor, draft_ids: torch.Tensor) -> torch.Tensor:
        """``pi  # [b, g+1, V]`` from the target's laws ``p  # [b, g+1, V]`` and the draft's ``q  # [b, g, V]``: the
        target's law at the bonus position and wherever a row proposed nothing (``draft_ids`` -1)."""
        defer = self.defer(p[:, :-1], q.to(p.dtype)) | (draft_ids < 0)  # [b, g]
        mixed = torch.where(defer[..., None], p[:, :-1], q.to(p.dtype))
        return torch.cat([mixed, p[:, -1:]], dim=1)


class SpeculativeCascade(SpeculativeDecoding):
    """A speculative cascade with a draft model of the target's tokenizer (see the module docstring for the rules
    and the output law).

    Args:
        draft: a draft model, as for :class:`~decoding.SpeculativeDecoding`.
        rule: ``"chow"``, ``"diff"`` or ``"opt"``. threshold: the rule's ``t``.
        num_draft_tokens, tokenizers, compact_threshold: as for :class:`~decoding.SpeculativeDecoding`.
    """

    cross_tokenizer_drafts = False  # its rules mix the draft's law into the target's: one vocabulary

    def __init__(self, draft, rule: str = "chow", threshold: float = 0.3, num_draft_tokens: int = 4, *,
                 tokenizers=None, compact_threshold: float = 0.25):
        cascade = Cascade(rule, threshold)
        super().__init__(draft, num_draft_tokens, tokenizers=tokenizers, compact_threshold=compact_threshold)
        if not isinstance(self.proposer, DraftModel):
            raise TypeError("a speculative cascade needs a draft model: its deferral rules read the draft's law")
        self.cascade = cascade
