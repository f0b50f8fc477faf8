"""Proposers: where speculative decoding's draft tokens come from (:mod:`decoding.proposers.base` defines the
interface): a draft model, or n-gram lookup in each row's own text."""

from .base import Drafter, Proposal, Proposer
from .draft_model import DraftModel, DraftModelDrafter
from .prompt_lookup import PromptLookup

__all__ = ["DraftModel", "DraftModelDrafter", "Drafter", "PromptLookup", "Proposal", "Proposer"]
