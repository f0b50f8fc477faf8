"""How one ``generate`` call turns logits into tokens: a sampler, chosen once per call by :func:`make_sampler`.

Both samplers have the same three operations, so that a strategy's loop is written once:

- ``draft(rows, logits, offset)``: one draft position, ``logits  # [b, V]`` -> ``ids  # [b]`` and the law the
  ids were drawn from, ``q  # [b, V]`` (None when greedy);
- ``verify(rows, logits, draft_ids, draft_probs)``: target ``logits  # [b, g+1, V]`` against ``draft_ids  # [b, g]``
  -> ``output_ids  # [b, g+1]`` (-1 padded), ``num_accepted  # [b]`` and the processed scores (or None);
- ``pick(rows, logits)``: one token per row from ``logits  # [b, V]`` -> ``ids  # [b]`` and the processed scores;
  ``pick_contrastive(rows, expert, amateur, contrast, vocab)`` the same from contrastive decoding's scores of two
  models' logits (fused into one kernel on the fused sampler).

:class:`ProcessorSampler` applies transformers' logits processors (any list, per row view) and keeps the processed
scores for ``output_scores``; :class:`FusedSampler` hands raw logits to the fused kernels of
:mod:`decoding.kernels`, which apply temperature / top-k / top-p on the fly. Random numbers are drawn with
``torch.rand`` on the logits' device, in the same order on both: drafts, then acceptance tests, then the
recovered or bonus token.
"""

from __future__ import annotations

import torch

from .kernels import ops as kernels
from .kernels.reference import unsamplable, unsamplable_error
from .processing import LogitsProcessing
from .readout import Readout
from .sequences import Sequences
from .vocab import to_vocab


def make_sampler(processing: LogitsProcessing, sequences: Sequences, do_sample: bool, keep_scores: bool,
                 device: torch.device, verification: str = "token", cascade=None):
    """The fused sampler when the processors are only temperature / top-k / top-p (none at all when greedy, whose
    argmax they could only perturb through rounding ties), the processed scores are not kept for the output,
    verification is token-wise against the target's law (the kernels implement that rule only) and
    :func:`decoding.kernels.ops.fused_route` says so (kernels available, or the torch reference forced); else the
    processors' sampler."""
    warpers = processing.warpers
    fused = warpers is not None and not keep_scores and kernels.fused_route(device)
    token_rule = verification == "token" and cascade is None
    if fused and token_rule and (do_sample or warpers == (1.0, 0, 1.0)):
        return FusedSampler(*warpers, do_sample=do_sample, readout=sequences.readout)
    return ProcessorSampler(processing, sequences, do_sample, verification, cascade)


def _uniforms(like: torch.Tensor, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, device=like.device)


def _check_later(readout: Readout, scores: torch.Tensor) -> None:
    """Ask ``readout`` whether some row of ``scores  # [..., V]`` cannot be sampled; ``ValueError`` when it is read
    (with the step's other asks: checking costs no host read of its own)."""
    bad = unsamplable(scores)
    rows = bad.numel()

    def raise_if_bad(value):
        if value[0]:
            raise unsamplable_error(value[0], rows)
    readout.ask(bad.sum(), then=raise_if_bad)


def _plain_step(picked: tuple) -> tuple:
    """``verify``'s result for a step without drafts, from ``pick``'s ``(ids  # [b], scores  # [b, V] | None)``:
    the target's own token (what verifying zero drafts emits, drawn from the same law), none accepted."""
    ids, scores = picked
    return ids[:, None], torch.zeros_like(ids), None if scores is None else scores[:, None]


class ProcessorSampler:
    """transformers' logits processors, then argmax or an inverse-CDF sample of the softmax."""

    def __init__(self, processing: LogitsProcessing, sequences: Sequences, do_sample: bool,
                 verification: str = "token", cascade=None):
        self.processing, self.sequences, self.do_sample = processing, sequences, do_sample
        # Whether processing reads the rows' tokens (their views): drafts must then be written before they are scored.
        self.reads_tokens = not processing.score_only
        self.rule = kernels.verify_block if verification == "block" else kernels.verify_sampling
        # A cascade (decoding.cascade.Cascade) verifies against a mixture of both laws: it needs the draft's law
        # when greedy too.
        self.cascade = cascade

    def _probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        _check_later(self.sequences.readout, scores)
        return kernels.probabilities(scores, check=False)

    def _scores(self, rows: torch.Tensor, logits: torch.Tensor, offset: int) -> torch.Tensor:
        """Processed ``# [b, n, V]`` scores of ``logits  # [b, n, V]``; position ``i`` sees view ``offset + i``."""
        return self.processing(self.sequences, rows, logits, offset)

    def draft(self, rows, logits, offset):
        if not (self.do_sample or self.cascade or self.processing.processors):  # the argmax of the raw logits
            return kernels.greedy(logits), None
        scores = self._scores(rows, logits[:, None], offset)[:, 0]  # [b, V]
        if not self.do_sample:
            return kernels.greedy(scores), (self._probabilities(scores) if self.cascade else None)
        q = self._probabilities(scores)
        return kernels.sample(q, _uniforms(q, q.shape[0])), q

    def verify(self, rows, logits, draft_ids, draft_probs):
        if draft_ids.shape[1] == 0 and self.cascade is None:
            return _plain_step(self.pick(rows, logits[:, 0]))
        scores = self._scores(rows, logits, 0)  # [b, g+1, V]
        (b, g), vocab = draft_ids.shape, scores.shape[-1]
        if draft_probs is None:  # g == 0
            draft_probs = scores.new_zeros(b, 0, vocab)
        if self.cascade is not None:  # the law to verify against: the rule's mixture of both
            probs = self.cascade.law(self._probabilities(scores), draft_probs, draft_ids)
            if not self.do_sample:
                return (*kernels.verify_greedy(probs, draft_ids), scores)
        elif not self.do_sample:
            return (*kernels.verify_greedy(scores, draft_ids), scores)
        else:
            probs = self._probabilities(scores)
        accept_u, sample_u = _uniforms(scores, b, g), _uniforms(scores, b)
        return (*self.rule(probs, draft_probs, draft_ids, accept_u, sample_u), scores)

    def pick(self, rows, logits):
        scores = self._scores(rows, logits[:, None], 0)[:, 0]  # [b, V]
        if not self.do_sample:
            return kernels.greedy(scores), scores
        return kernels.sample(self._probabilities(scores), _uniforms(scores, scores.shape[0])), scores

    def pick_contrastive(self, rows, expert, amateur, contrast, vocab):
        """``expert``, ``amateur  # [b, shared]`` raw logits over the ids both models have; ``vocab`` ids in all."""
        return self.pick(rows, to_vocab(contrast.scores(expert, amateur), vocab))


class FusedSampler:
    """Raw logits into the fused kernels, processed there by (temperature, top_k, top_p); nothing processed is
    materialised, so there are no scores to return."""

    reads_tokens = False  # temperature, top-k and top-p read scores only

    def __init__(self, temperature: float, top_k: int, top_p: float, *, do_sample: bool,
                 readout: Readout | None = None):
        self.temperature, self.top_k, self.top_p, self.do_sample = temperature, top_k, top_p, do_sample
        self.readout = readout if readout is not None else Readout()

    def _processing(self) -> dict:
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p}

    def draft(self, rows, logits, offset):
        if not self.do_sample:
            return kernels.greedy(logits), None
        _check_later(self.readout, logits)
        return kernels.sample_logits(logits, _uniforms(logits, logits.shape[0]), **self._processing())

    def verify(self, rows, logits, draft_ids, draft_probs):
        if draft_ids.shape[1] == 0:
            return _plain_step(self.pick(rows, logits[:, 0]))
        if not self.do_sample:
            return (*kernels.verify(logits, draft_ids), None)
        _check_later(self.readout, logits)
        (b, g), vocab = draft_ids.shape, logits.shape[-1]
        if draft_probs is None:  # g == 0
            draft_probs = logits.new_zeros(b, 0, vocab, dtype=torch.float32)
        uniforms = torch.cat([_uniforms(logits, b, g), _uniforms(logits, b)[:, None]], dim=1)  # [b, g+1]
        return (*kernels.verify(logits, draft_ids, draft_probs, uniforms, **self._processing()), None)

    def pick(self, rows, logits):
        if not self.do_sample:
            return kernels.greedy(logits), None
        _check_later(self.readout, logits)
        ids, _ = kernels.sample_logits(logits, _uniforms(logits, logits.shape[0]), return_probs=False,
                                       **self._processing())
        return ids, None

    def pick_contrastive(self, rows, expert, amateur, contrast, vocab):
        uniforms = None
        if self.do_sample:
            _check_later(self.readout, expert)
            _check_later(self.readout, amateur)
            uniforms = _uniforms(expert, expert.shape[0])
        return kernels.contrastive_choose(expert, amateur, uniforms, **contrast.settings(), **self._processing()), None
