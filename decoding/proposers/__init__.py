"""Proposers: where speculative decoding's draft tokens come from (:mod:`decoding.proposers.base` defines the
interface): a draft model (of the target's tokenizer or of another one), a head reading the target's hidden states
(EAGLE-3), n-gram lookup in each row's own text, or lookup first and a head elsewhere."""

from .base import Drafter, PositionGate, Proposal, Proposer, TargetFeatures
from .cross_tokenizer import CrossTokenizerDraft
from .draft_model import DraftModel, DraftModelDrafter
from .feature_draft import FeatureDraft
from .lookup_first import LookupFirst
from .prompt_lookup import PromptLookup

__all__ = ["CrossTokenizerDraft", "DraftModel", "DraftModelDrafter", "Drafter", "FeatureDraft", "LookupFirst",
           "PositionGate", "PromptLookup", "Proposal", "Proposer", "TargetFeatures"]
