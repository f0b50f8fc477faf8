"""Proposers: where speculative decoding's draft tokens come from (a draft model today)."""

from .draft_model import DraftModelProposer, Proposal

__all__ = ["DraftModelProposer", "Proposal"]
