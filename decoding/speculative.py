"""Speculative decoding: a draft proposes ``g`` tokens per row, the target verifies them in one forward pass.

Both models keep their KV caches across steps (:class:`~decoding.ragged_cache.RaggedCache`); rejected positions
become holes or are cropped, the prompt is never re-encoded. Draft, accepted, recovered, bonus and emitted tokens
are defined in :mod:`decoding.kernels.reference`.
"""

from __future__ import annotations

import torch

from . import hf_compat
from .adaptive import AdaptiveLength, AdaptiveMemory, FixedLength, StepFacts, Stopwatch
from .proposers import CrossTokenizerDraft, DraftModel, FeatureDraft, Proposal, Proposer, TargetFeatures
from .proposers.eagle_head import Eagle3Head
from .proposers.cross_tokenizer import MODES as CROSS_TOKENIZER_MODES
from .ragged_cache import RaggedCache
from .run import Run
from .stats import AcceptanceStats
from .strategy import Strategy
from .token_maps import check_tokenizer, tokenizers_agree
from .validation import check_int


class SpeculativeDecoding(Strategy):
    """Lossless speculative decoding, for any batch size.

    Args:
        draft: a draft model (a decoder-only transformers model on the target's device, sharing its tokenizer;
            vocabularies may differ by embedding padding), or any :class:`~decoding.proposers.Proposer` such as
            :class:`~decoding.PromptLookup`.
        num_draft_tokens: ``g``, the tokens proposed per row and step (>= 1), or ``"auto"``: as many as pay, per
            row and step, from the call's measured costs and acceptance, up to ``max_draft_tokens``, down to none
            (a plain target step); the rule is in :mod:`decoding.adaptive`.
        tokenizers: optional ``(target_tokenizer, draft_tokenizer)``: when they give some id different tokens, the
            draft has another tokenizer and drafts through :class:`~decoding.proposers.CrossTokenizerDraft`;
            otherwise they prove a draft model's vocabulary compatible (sizes may then differ by any amount).
        cross_tokenizer: how a draft with another tokenizer proposes target tokens: ``"auto"`` (string-level when
            greedy, token-level intersection when sampling), ``"string"`` or ``"tli"``; see
            :mod:`decoding.proposers.cross_tokenizer`. Ignored when the tokenizers agree.
        compact_threshold: compact a cache when holes exceed this fraction of its slots (batch > 1 only).
        verification: ``"token"`` (Leviathan et al.'s token-by-token rule) or ``"block"`` (Sun et al.'s block
            verification: the same output law, never fewer accepted tokens in expectation; sampling only, greedy is
            unchanged; the fused kernels implement the token rule, so block verification runs the processors' path).
        profile: time each call's phases into ``stats.seconds`` (``draft``, ``target``, ``verify``, ``other``).
            On CUDA every phase boundary synchronizes: a profiled call is slower, for measuring only.
        cache: ``"dynamic"`` (transformers' ``DynamicCache``, grown by concatenation) or ``"static"``: the target's
            and a draft model's keys and values live in a preallocated ``StaticCache`` written in place, so with a
            fixed batch and ``g`` every verification and draft forward sees the same shapes (what ``torch.compile``
            and CUDA graphs capture). Full-attention models with sdpa or eager attention only; see
            :func:`static_capacity` for its size.
    """

    draft_role = "draft"
    cross_tokenizer_drafts = True  # whether a draft with another tokenizer is supported (subclasses may not)

    def __init__(self, draft, num_draft_tokens: int | str = 4, *, tokenizers=None, compact_threshold: float = 0.25,
                 max_draft_tokens: int = 8, verification: str = "token", cross_tokenizer: str = "auto",
                 profile: bool = False, cache: str = "dynamic"):
        if cache not in ("dynamic", "static"):
            raise ValueError(f"cache must be 'dynamic' or 'static', got {cache!r}")
        self.cache = cache
        if cross_tokenizer not in CROSS_TOKENIZER_MODES:
            raise ValueError(f"cross_tokenizer must be one of {CROSS_TOKENIZER_MODES}, got {cross_tokenizer!r}")
        self.cross_tokenizer = cross_tokenizer
        self.proposer = draft if isinstance(draft, Proposer) else self.draft_model_proposer(draft, tokenizers)
        if num_draft_tokens != "auto":
            check_int(num_draft_tokens, "num_draft_tokens", 1)
        check_int(max_draft_tokens, "max_draft_tokens", 1)
        if verification not in ("token", "block"):
            raise ValueError(f"verification must be 'token' or 'block', got {verification!r}")
        self.verification = verification
        self.profile = bool(profile)
        self.max_draft_tokens = max_draft_tokens
        if isinstance(compact_threshold, bool) or not isinstance(compact_threshold, (int, float)) \
                or not compact_threshold >= 0:  # inf: never compact
            raise ValueError(f"compact_threshold must be a number >= 0, got {compact_threshold!r}")
        self.num_draft_tokens = num_draft_tokens
        self.compact_threshold = compact_threshold
        self.stats = self.new_stats()
        self.adaptive_memory = AdaptiveMemory()  # what "auto" learned in earlier calls, for the next one

    def draft_model_proposer(self, model, tokenizers):
        """A :class:`DraftModel`, a :class:`CrossTokenizerDraft` when ``tokenizers`` disagree on some id, or a
        :class:`FeatureDraft` for a draft head that reads the target's hidden states."""
        if isinstance(model, Eagle3Head):
            return FeatureDraft(model)
        if tokenizers is not None and self.cross_tokenizer_drafts:
            if not isinstance(tokenizers, (tuple, list)) or len(tokenizers) != 2:
                raise ValueError("tokenizers must be a pair (target_tokenizer, draft_tokenizer)")
            check_tokenizer(tokenizers[0], "target")
            check_tokenizer(tokenizers[1], self.draft_role)
            if not tokenizers_agree(*tokenizers):
                return CrossTokenizerDraft(model, tokenizers, mode=self.cross_tokenizer, role=self.draft_role)
        return DraftModel(model, tokenizers=tokenizers, role=self.draft_role)

    @property
    def draft_model(self):
        """The draft model, when the proposer is one (else None)."""
        return getattr(self.proposer, "model", None)

    def new_stats(self) -> AcceptanceStats:
        return AcceptanceStats()

    def models(self) -> dict:
        return self.proposer.models()

    def draft_length(self) -> int:
        return self.max_draft_tokens if self.num_draft_tokens == "auto" else self.num_draft_tokens

    def length_policy(self, run: Run):
        if self.num_draft_tokens == "auto":
            return AdaptiveLength(self.max_draft_tokens, run.prompt_mask.device, memory=self.adaptive_memory,
                                  batch_size=run.prompt_mask.shape[0])
        return FixedLength(self.num_draft_tokens)

    def validate(self, model, generation_config, input_ids, attention_mask) -> None:
        self.proposer.validate(model, input_ids, attention_mask)
        if self.cache == "static":
            for role, each in {"target": model, **self.proposer.models()}.items():
                if not isinstance(each, Eagle3Head):  # a head's own cache stays dynamic (it builds its masks)
                    hf_compat.check_static_cache(each, role)

    def target_scores(self, logits: torch.Tensor, proposal: Proposal) -> torch.Tensor:
        """The scores drafts are verified against, before the user's processing ``# [b, g+1, V]``: the target's
        logits."""
        return logits

    def decode(self, run: Run) -> None:
        """Propose, verify in one target pass, commit, roll both back; until every row has finished."""
        if self.cache == "static":
            run.cache_capacity = static_capacity(run.sequences.max_length, self.draft_length(), self.compact_threshold,
                                                 run.sequences.prompt_length)
            run.keep_finished = True
        target = RaggedCache(run.model, run.prompt_mask.shape[0], run.prompt_mask.device, run.readout,
                             run.cache_capacity)
        drafter = self.proposer.start(run)
        length = self.length_policy(run)
        watch = length.stopwatch()  # the step's phases, timed for the length policy (and when profiling)
        if self.profile and not isinstance(watch, Stopwatch):
            watch = Stopwatch(run.prompt_mask.device)
        feed = (run.sequences.tokens[:, : run.sequences.prompt_length], run.prompt_mask)  # the prompt first
        while True:
            with watch.phase("draft"):
                k = length.limit()
                proposal = drafter.propose(run, run.sampler, k and min(k, run.remaining() - 1), length)
                drafts = proposal.trimmed()  # the positions some row proposed: what the target verifies
                g = drafts.ids.shape[1]  # ids [b, g], -1 where a row proposes nothing
                tokens, valid = target_input(feed, drafts)
            with watch.phase("target"):  # logits [b, g+1, V]; features [b, n, F] when the drafter reads them
                logits, features = target.forward_with_features(tokens, valid, g + 1, drafter.target_layers)
            with watch.phase("verify"):
                output_ids, num_accepted, scores = run.sampler.verify(
                    run.rows, self.target_scores(logits, drafts), drafts.ids, drafts.probs)  # [b, g+1], [b]
            length.observe(StepFacts(proposal, num_accepted, new_tokens=g + 1 if feed[0].shape[1] == 1 else 0,
                                     rows=run.rows, draft_seconds=watch.seconds.get("draft", 0.0),
                                     target_seconds=watch.seconds.get("target", 0.0), rest_seconds=watch.rest,
                                     live=run.live))
            run.stats.record(run.unfinished(num_accepted), None if drafts.full else run.unfinished(drafts.lengths()), g)
            finished = run.commit(output_ids, scores, logits)
            if g:
                target.keep_last(torch.arange(g, device=num_accepted.device) < num_accepted[:, None])
            drafter.accept(num_accepted, None if features is None else TargetFeatures(features, valid, g))
            survivors = run.drop_finished(finished)  # the step's one host read
            if survivors is not None:
                if survivors.numel() == 0:
                    if self.profile:
                        run.stats.seconds = watch.split()
                    return
                target.select_rows(survivors)
                drafter.select_rows(survivors)
            target.compact_if_holes_exceed(self.compact_threshold)
            drafter.prepare(run, self.compact_threshold)
            feed = (run.sequences.window(run.rows, 1), None)  # the emitted token, real in every row


def static_capacity(max_length: int, g: int, compact_threshold: float, prompt_length: int) -> int:
    """Slots per row of a static cache: the call's tokens and one step's drafts, plus the holes compaction lets stay
    (``compact_threshold`` of the slots, at most as many again), but no more than 4,096 past the prompt up front
    (the cache grows, rarely, if a call needs more); rounded up to a power of two from 64, so that calls of
    similar lengths share their shapes (and a compiled forward its graphs)."""
    needed = int(min((max_length + g + 1) * (1 + min(compact_threshold, 1.0)), prompt_length + 4096))
    return max(64, 1 << (needed - 1).bit_length())


def target_input(feed: tuple, drafts: Proposal) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What the target reads in a step: the tokens it has not read (``feed``: ``tokens  # [b, n]`` and ``valid
    # [b, n]``, None when all are real) then the drafts ``# [b, g]``, where a row that proposed nothing has a hole.
    ``valid`` stays None when every slot is real (known on the host: no mask to build)."""
    tokens, valid = feed
    if drafts.ids.shape[1] == 0:
        return tokens, valid
    if valid is None and drafts.full:
        return torch.cat([tokens, drafts.ids], dim=1), None
    valid = torch.ones_like(tokens) if valid is None else valid.to(torch.int64)
    return (torch.cat([tokens, drafts.ids.clamp_min(0)], dim=1),
            torch.cat([valid, (drafts.ids >= 0).to(torch.int64)], dim=1))
