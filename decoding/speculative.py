"""Speculative decoding: the draft proposes ``g`` tokens per row, the target verifies them in one forward pass.

Both models keep their KV caches across steps (:class:`~decoding.ragged_cache.RaggedCache`); rejected
positions become holes or are cropped, the prompt is never re-encoded. Terms (draft, accepted, recovered,
bonus and emitted tokens) are defined in :mod:`decoding.kernels.reference`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import kernels
from .ragged_cache import RaggedCache
from .strategy import Run, Strategy
from .validation import check_int, check_model
from .vocab import check_vocab_compatibility, to_vocab, vocab_size


@dataclass
class AcceptanceStats:
    """Acceptance statistics of the last ``generate`` call, counted over (row, step) pairs.

    - ``acceptance_rate``: accepted / drafted (vLLM's definition).
    - ``alpha``: the per-token acceptance probability of Leviathan et al.'s analysis, the ``a`` of the ceiling
      ``(1 - a^(g+1)) / ((1 - a)(g*c + v))``: accepted / acceptance tests run, where a row-step tests its drafts
      up to and including the first rejection. (accepted / drafted underestimates it: drafts after a
      rejection are never tested.)
    - ``mean_accepted_length``: counts the recovered or bonus token: the mean number of tokens a row emits per
      verification step (1.0 for plain decoding), vLLM's and Spec-Bench's tau.
    - ``per_position_acceptance[i]``: fraction of row-steps that accepted draft position ``i``.
    """

    steps: int = 0
    drafted: int = 0
    accepted: int = 0
    rejected: int = 0  # row-steps that rejected one of their drafts
    position_steps: list = field(default_factory=list)  # row-steps that drafted position i
    position_accepted: list = field(default_factory=list)  # row-steps that accepted position i

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def alpha(self) -> float:
        tests = self.accepted + self.rejected
        return self.accepted / tests if tests else 0.0

    @property
    def mean_accepted_length(self) -> float:
        return 1.0 + self.accepted / self.steps if self.steps else 0.0

    @property
    def per_position_acceptance(self) -> list[float]:
        return [a / s if s else 0.0 for a, s in zip(self.position_accepted, self.position_steps)]

    def record(self, num_accepted: torch.Tensor, g: int) -> None:
        """Count one step: ``num_accepted  # [b]`` of ``g`` drafts per active row."""
        b = num_accepted.shape[0]
        grow = g - len(self.position_steps)
        self.position_steps += [0] * max(grow, 0)
        self.position_accepted += [0] * max(grow, 0)
        per_position = (num_accepted[:, None] > torch.arange(g, device=num_accepted.device)).sum(dim=0)
        for i, count in enumerate(per_position.tolist()):
            self.position_steps[i] += b
            self.position_accepted[i] += count
        self.steps += b
        self.drafted += b * g
        self.accepted += int(num_accepted.sum())
        self.rejected += int((num_accepted < g).sum())


class SpeculativeDecoding(Strategy):
    """Lossless speculative decoding with a draft model, for any batch size.

    Args:
        draft_model: a decoder-only transformers model on the target's device, sharing its tokenizer
            (vocabularies may differ by embedding padding).
        num_draft_tokens: ``g``, tokens drafted per step (>= 1).
        tokenizers: optional ``(target_tokenizer, draft_tokenizer)``, to prove vocabularies compatible.
        compact_threshold: compact a cache when holes exceed this fraction of its slots (batch > 1 only).
    """

    draft_role = "draft"
    reads_last_draft = False  # whether the draft also reads its last draft token (see _propose)

    def __init__(self, draft_model, num_draft_tokens: int = 4, *, tokenizers=None, compact_threshold: float = 0.25):
        check_model(draft_model, self.draft_role)
        check_int(num_draft_tokens, "num_draft_tokens", 1)
        if isinstance(compact_threshold, bool) or not isinstance(compact_threshold, (int, float)) \
                or not compact_threshold >= 0:  # inf: never compact
            raise ValueError(f"compact_threshold must be a number >= 0, got {compact_threshold!r}")
        self.draft_model = draft_model
        self.num_draft_tokens = num_draft_tokens
        self.tokenizers = tokenizers
        self.compact_threshold = compact_threshold
        self.stats = AcceptanceStats()

    def models(self) -> dict:
        return {self.draft_role: self.draft_model}

    def validate(self, model, generation_config, input_ids, attention_mask) -> None:
        check_vocab_compatibility(model, self.draft_model, self.tokenizers, role=self.draft_role)

    def decode(self, run: Run) -> None:
        """The speculative loop: draft, verify in one target pass, commit, roll back the caches."""
        self.stats = AcceptanceStats()
        batch, device = run.prompt_mask.shape[0], run.prompt_mask.device
        vocab = vocab_size(run.model)
        target = RaggedCache(run.model, batch, device)
        draft = RaggedCache(self.draft_model, batch, device)
        target_in = draft_in = (run.sequences.tokens[:, : run.sequences.prompt_length], run.prompt_mask)
        draft_missing = torch.ones(batch, dtype=torch.int64, device=device)
        fused = run.fused_warpers()  # (temperature, top_k, top_p) on the fused kernel route, else None
        while True:
            g = min(self.num_draft_tokens, run.remaining() - 1)
            draft_ids, draft_probs, draft_logits = self._propose(run, draft, *draft_in, g, vocab, fused)  # [b, g], [b, g, V]
            tokens = torch.cat([target_in[0], draft_ids], dim=1)
            valid = torch.cat([target_in[1], torch.ones_like(draft_ids)], dim=1)
            logits = target.forward(tokens, valid, logits_to_keep=g + 1)  # [b, g+1, V]
            # [b, g+1, V]: processed scores, or on the fused route the unprocessed ones (processed in the kernel)
            if fused is None:
                scores = self._target_scores(run, logits, draft_logits)
            else:
                scores = self._target_logits(run, logits, draft_logits)
            output_ids, num_accepted = self._verify(run, scores, draft_ids, draft_probs, fused)  # [b, g+1], [b]
            self.stats.record(num_accepted, g)
            finished = run.commit(output_ids, scores, logits)
            drafted = torch.arange(g, device=device) < num_accepted[:, None]  # [b, g]
            target.keep_last(drafted)
            steps = g + 1 if self.reads_last_draft else g  # draft forwards this step; the last read d_(steps-1)
            draft.keep_last(drafted[:, : max(steps - 1, 0)])
            # Committed tokens the draft has not read: the new ones, minus the accepted drafts it was fed.
            fed = num_accepted.clamp_max(max(steps - 1, 0))
            draft_missing = (0 if steps else draft_missing) + num_accepted + 1 - fed
            keep = run.drop(finished)
            if keep.numel() == 0:
                break
            if keep.numel() < finished.numel():
                target.select_rows(keep)
                draft.select_rows(keep)
                draft_missing = draft_missing[keep]
            self._maybe_compact(target)
            self._maybe_compact(draft)
            target_in = (run.sequences.window(run.rows, 1), torch.ones_like(run.rows)[:, None])
            draft_in = self._window(run, draft_missing)

    def _target_logits(self, run: Run, logits: torch.Tensor, draft_logits: torch.Tensor | None) -> torch.Tensor:
        """The unprocessed scores drafts are verified against ``# [b, g+1, V]``: the target's logits. The fused
        route verifies these directly (the kernel applies temperature / top-k / top-p)."""
        return logits

    def _target_scores(self, run: Run, logits: torch.Tensor, draft_logits: torch.Tensor | None) -> torch.Tensor:
        """The processed scores drafts are verified against ``# [b, g+1, V]`` (the general route)."""
        return run.process(self._target_logits(run, logits, draft_logits), offset=0)

    def _propose(self, run, draft, tokens, valid, g, vocab, fused=None):
        """Draft ``g`` tokens per row.

        Returns ``ids  # [b, g]``, when sampling ``probs  # [b, g, V]`` (else None), and when
        ``reads_last_draft`` the draft's raw logits ``# [b, g+1, V]`` (the draft then also reads ``d_g`` and
        scores the bonus position; else None). On the fused route (``fused = (temperature, top_k, top_p)``)
        the draft samples with :func:`decoding.kernels.sample_logits`, whose law is the ``q`` it returns.
        """
        ids, probs, raw = [], [], []
        # The target may emit ids of its embedding padding that a smaller draft has no row for: the draft
        # reads its last id there instead (any id keeps the output exact; verification is the target's).
        tokens = tokens.clamp_max(vocab_size(self.draft_model) - 1)
        for j in range(g + 1 if self.reads_last_draft else g):
            logits = to_vocab(draft.forward(tokens, valid, logits_to_keep=1), vocab)  # [b, 1, V]
            if self.reads_last_draft:
                raw.append(logits)
            if j == g:
                break
            # [b, V]: the fused route processes inside the kernel (greedy takes it only without processors)
            scores = logits[:, 0] if fused is not None else run.process(logits, offset=j)[:, 0]
            if not run.do_sample:
                token = kernels.greedy(scores)
            elif fused is not None:
                temperature, top_k, top_p = fused
                uniforms = torch.rand(scores.shape[0], device=scores.device)
                token, q = kernels.sample_logits(scores, uniforms, temperature=temperature, top_k=top_k, top_p=top_p)
                probs.append(q)
            else:
                probs.append(kernels.probabilities(scores))
                token = kernels.sample(probs[-1], torch.rand(scores.shape[0], device=scores.device))
            ids.append(token)
            run.sequences.write(run.rows, j, token[:, None])
            tokens, valid = token[:, None], torch.ones_like(token)[:, None]
        b, device = run.rows.numel(), run.rows.device
        draft_ids = torch.stack(ids, dim=1) if ids else torch.empty(b, 0, dtype=torch.int64, device=device)
        draft_logits = torch.cat(raw, dim=1) if raw else None
        return draft_ids, (torch.stack(probs, dim=1) if probs else None), draft_logits

    def _verify(self, run, scores, draft_ids, draft_probs, fused=None):
        if not run.do_sample:
            if fused is not None:
                return kernels.verify(scores, draft_ids)
            return kernels.verify_greedy(scores, draft_ids)
        b, g = draft_ids.shape
        if draft_probs is None:
            draft_probs = torch.zeros(b, 0, scores.shape[-1], device=scores.device)
        accept_u = torch.rand(b, g, device=scores.device)
        sample_u = torch.rand(b, device=scores.device)
        if fused is not None:
            temperature, top_k, top_p = fused
            uniforms = torch.cat([accept_u, sample_u[:, None]], dim=1)  # [b, g+1]
            return kernels.verify(scores, draft_ids, draft_probs, uniforms, temperature=temperature, top_k=top_k,
                                  top_p=top_p)
        return kernels.verify_sampling(kernels.probabilities(scores), draft_probs, draft_ids, accept_u, sample_u)

    @staticmethod
    def _window(run, missing):
        width = int(missing.max())
        valid = torch.arange(width, device=missing.device) >= (width - missing)[:, None]  # [b, width]
        return run.sequences.window(run.rows, width), valid.to(torch.int64)

    def _maybe_compact(self, cache: RaggedCache) -> None:
        if cache.mask.shape[0] and cache.holes() > self.compact_threshold * cache.mask.shape[1]:
            cache.compact()
