"""pairdecode: a small and a large language model decoding together, inside transformers' ``generate``.

>>> import decoding
>>> decoding.enable(model)
>>> model.generate(input_ids, strategy=decoding.SpeculativeDecoding(draft, num_draft_tokens=4))
"""

from .api import enable, is_enabled
from .cascade import SpeculativeCascade
from .contrastive import ContrastiveDecoding, ProxyTuning
from .mixing import LogitMixing
from .proposers import CrossTokenizerDraft, DraftModel, PromptLookup, Proposer
from .speculative import SpeculativeDecoding
from .speculative_contrastive import SpeculativeContrastiveDecoding
from .stats import AcceptanceStats, MixingStats
from .strategy import Strategy

__all__ = [
    "AcceptanceStats",
    "ContrastiveDecoding",
    "CrossTokenizerDraft",
    "DraftModel",
    "LogitMixing",
    "MixingStats",
    "PromptLookup",
    "Proposer",
    "ProxyTuning",
    "SpeculativeCascade",
    "SpeculativeContrastiveDecoding",
    "SpeculativeDecoding",
    "Strategy",
    "enable",
    "is_enabled",
]
__version__ = "0.1.0"
