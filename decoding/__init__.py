"""pairdecode: a small and a large language model decoding together, inside transformers' ``generate``.

>>> import decoding
>>> decoding.enable(model)
>>> model.generate(input_ids, strategy=decoding.SpeculativeDecoding(draft, num_draft_tokens=4))
"""

from pathlib import Path

# kernels/, model_pairs/ and evals/ sit at the repository root and install as decoding.kernels, .model_pairs and
# .evals (pyproject's package-dir). They have no __init__.py, so that none of them can shadow an installed
# top-level module of the same name (Hugging Face's `kernels`, OpenAI's `evals`) when Python starts in a clone's
# root. In a source checkout (editable install, or the root on sys.path) they are this folder's siblings, where
# neither the import system nor setuptools' editable finder looks for namespace subpackages, so the root joins
# this package's search path; an installed wheel has them inside this folder and is left alone.
_HERE = Path(__file__).resolve().parent
if not (_HERE / "kernels").is_dir() and (_HERE.parent / "kernels" / "ops.py").is_file():
    __path__.append(str(_HERE.parent))  # noqa: F821 (a package's own __path__)

from .api import enable, is_enabled
from .cascade import SpeculativeCascade
from .contrastive import ContrastiveDecoding, ProxyTuning
from .few_rows import fast_cpu_linears
from .mixing import LogitMixing
from .proposers import CrossTokenizerDraft, DraftModel, FeatureDraft, LookupFirst, PromptLookup, Proposer
from .speculative import SpeculativeDecoding
from .speculative_contrastive import SpeculativeContrastiveDecoding
from .stats import AcceptanceStats, MixingStats
from .strategy import Strategy

__all__ = [
    "AcceptanceStats",
    "ContrastiveDecoding",
    "CrossTokenizerDraft",
    "DraftModel",
    "FeatureDraft",
    "LogitMixing",
    "LookupFirst",
    "MixingStats",
    "PromptLookup",
    "Proposer",
    "ProxyTuning",
    "SpeculativeCascade",
    "SpeculativeContrastiveDecoding",
    "SpeculativeDecoding",
    "Strategy",
    "enable",
    "fast_cpu_linears",
    "is_enabled",
]
__version__ = "0.1.0"
